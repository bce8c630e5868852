"""The transport's own limit for SubmitJobs: a grpc.aio server that answers every
SubmitJobsRequest at once with its request_id (no journal, no checks), in a process of its own.

`benchmarks/bench_enqueue.py` drives it with the client's own `Submitter` (the code behind
`JobmeshClient.add_job`), so the gap between this echo and the node is the node's work alone:

    python -m benchmarks.submit_echo PORT        # serve until killed (what EchoServer runs)
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from types import TracebackType

import grpc
from jobmesh.v1 import jobs_pb2

from node.submitter import METHOD, Submitter

START_TIMEOUT_S = 20.0


async def _serve(port: int) -> None:
    async def answer(
        requests: AsyncIterator[jobs_pb2.SubmitJobsRequest], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.SubmitJobsResponse]:
        async for request in requests:
            yield jobs_pb2.SubmitJobsResponse(request_id=request.request_id)

    service, method = METHOD.strip("/").split("/")
    handler = grpc.stream_stream_rpc_method_handler(
        answer,
        request_deserializer=jobs_pb2.SubmitJobsRequest.FromString,
        response_serializer=jobs_pb2.SubmitJobsResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoServer:
    """The echo in a child process, and a Submitter on a plaintext channel to it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self.submitter: Submitter | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def __enter__(self) -> EchoServer:
        self._process = subprocess.Popen([sys.executable, "-m", "benchmarks.submit_echo", str(self.port)])
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self._channel).result(START_TIMEOUT_S)
        stream = self._channel.stream_stream(
            METHOD,
            request_serializer=jobs_pb2.SubmitJobsRequest.SerializeToString,
            response_deserializer=jobs_pb2.SubmitJobsResponse.FromString,
        )
        self.submitter = Submitter(lambda requests: stream(requests, wait_for_ready=True), 30.0)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self.submitter is not None:
            self.submitter.close()
        if self._channel is not None:
            self._channel.close()
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)

    def add(self, job: jobs_pb2.NewJob) -> None:
        """One round trip of a job, as `JobmeshClient.add` makes it."""
        assert self.submitter is not None, "not started"
        self.submitter.add(job)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
