"""gRPC servicers and the one place servers and channels are created."""
