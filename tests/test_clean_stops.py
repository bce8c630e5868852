"""SIGTERM ends a node within its grace, with open streams of every kind, and logs no traceback."""

from __future__ import annotations

import threading
import time

import grpc
from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from tests.support.job_calls import add_job
from tests.support.launcher import NodeFactory
from tests.support.watching import watch
from tests.support.worker_stream import WorkerStream

STOPS = 20
GRACE_S = 2.0  # the test preset's server.shutdown_grace_s


class TopologyWatcher:
    """A WatchTopology stream read by a thread; remembers how it ended."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.call = topology_pb2_grpc.TopologyServiceStub(channel).WatchTopology(
            topology_pb2.WatchTopologyRequest()
        )
        self.error: grpc.RpcError | None = None
        self.first_event = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                self.first_event.set()
        except grpc.RpcError as e:
            self.error = e

    def ended_with(self, timeout: float) -> grpc.RpcError | None:
        self._thread.join(timeout)
        return self.error


def test_sigterm_ends_a_node_with_open_watch_worker_and_peer_streams_cleanly_every_time(
    nodes: NodeFactory,
) -> None:
    # Given an origin whose topic only a peer consumes (a transfer stream) and a seeded peer
    origin = nodes.start("origin")
    peer = nodes.start(
        "peer", ["stops/remote=consumers:succeed"], {"discovery.seeds": f"127.0.0.1:{origin.info['port']}"}
    )
    for run in range(STOPS):
        # With a job watch, a topology watch, a remote worker and offloaded jobs in flight
        # (on a channel of their own: terminate() closes the node's test channel first)
        streams = origin.client_transport().create_sync_channel(str(origin.info["address"]))
        jobs = watch(streams, after_seq=-1)
        topology = TopologyWatcher(streams)
        worker = WorkerStream.connect(streams, "stops/local/**")
        add_job(origin.stub, "stops/remote")
        jobs.next_response()  # both watches are open on the node
        assert topology.first_event.wait(5)

        # When the node is told to stop
        started = time.monotonic()
        code = origin.terminate()
        took = time.monotonic() - started

        # Then it exits 0 within its grace, and the watches end saying why
        assert code == 0, f"stop {run}: exit {code}\n{origin.log_text()}"
        assert took < GRACE_S + 1.0, f"stop {run} took {took:.2f}s"
        jobs.error_code(5)  # waits for the job watch to end
        for error in (jobs.error, topology.ended_with(5)):
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "the node is shutting down" in error.details()
        assert worker.ended.wait(5)
        jobs.close()
        streams.close()
        origin.start()

    log = origin.log_text()
    assert "Traceback" not in log
    assert "Exception not handled" not in log
    assert "Traceback" not in peer.log_text()
