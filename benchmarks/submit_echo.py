"""The transport's own limit for SubmitJobs: a grpc.aio server that answers every
SubmitJobsRequest at once with its request_ids (no journal, no checks), in a process of its own.

`benchmarks/bench_enqueue.py` drives it with the client's own `Submitter` (the code behind
`JobmeshClient.add_job`), so the gap between this echo and the node is the node's work alone:

    python -m benchmarks.submit_echo PORT [MODE]  # serve until killed (what EchoServer runs)

MODE `hop` answers each request after a round trip to a thread of its own, as the node's
journal writer does (`loop.run_in_executor` on a one-thread pool); `commit` makes that thread
commit one 100-byte row in SQLite first (WAL, synchronous=NORMAL, as the journal's default).
They show what the writer's thread and a one-row commit cost on this machine by themselves.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from jobmesh.v1 import jobs_pb2

from node.submitter import METHOD, Submitter

START_TIMEOUT_S = 20.0


def _one_row_commit(path: str) -> Callable[[], None]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, value TEXT)")

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO rows (value) VALUES (?)", ("x" * 100,))
        conn.execute("COMMIT")

    return commit


async def _serve(port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1)
    work: Callable[[], None] | None = None
    if mode == "hop":
        work = lambda: None  # noqa: E731
    elif mode == "commit":
        work = _one_row_commit(tempfile.mktemp(suffix=".db"))

    async def answer(
        requests: AsyncIterator[jobs_pb2.SubmitJobsRequest], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.SubmitJobsResponse]:
        async for request in requests:
            if work is not None:
                await loop.run_in_executor(thread, work)
            response = jobs_pb2.SubmitJobsResponse(request_id=request.request_id)
            for item in request.more:
                response.more.add(request_id=item.request_id)
            yield response

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

    def __init__(self, mode: str = "") -> None:
        self.mode = mode
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self.submitter: Submitter | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def __enter__(self) -> EchoServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.submit_echo", str(self.port), self.mode]
        )
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
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""))
