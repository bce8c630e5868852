"""gRPC servicers: the API of node.jobs, node.discovery and node.transfer (channels: node.transport)."""
