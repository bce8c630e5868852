"""One SubmitJobs stream shared by the threads of a client (see JobService.SubmitJobs).

A unary AddJob per job costs a whole call's round trip and setup; a long-lived stream costs one
message each way. `Submitter.add` blocks its thread until the node answered that job, so it
behaves like AddJob (committed on return, the same errors), while many threads share the stream
and their jobs share the node's group commits. A broken stream fails the jobs it was carrying
(their outcome is unknown, as for a unary call that failed) and the next `add` opens a new one.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
from jobmesh.v1 import jobs_pb2

from node.errors import JobmeshError

METHOD = "/jobmesh.v1.JobService/SubmitJobs"


class SubmitError(JobmeshError):
    """The node refused a job, or the stream failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{METHOD}: {code.name}: {message}")
        self.code = code
        self.details = message


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_END = object()


class _Stream:
    """One open SubmitJobs call: a request queue its iterator drains, a reader resolving futures."""

    def __init__(self, open_call: Callable[[Iterator[Any]], Any]) -> None:
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.waiting: dict[int, Future[jobs_pb2.SubmitJobsResponse]] = {}
        self.lock = threading.Lock()
        self.broken: SubmitError | None = None
        self.call = open_call(self._iterate())
        self.reader = threading.Thread(target=self._read, name="jobmesh-submit", daemon=True)
        self.reader.start()

    def _iterate(self) -> Iterator[Any]:
        while (request := self.requests.get()) is not _END:
            yield request

    def send(self, request: jobs_pb2.SubmitJobsRequest) -> Future[jobs_pb2.SubmitJobsResponse]:
        future: Future[jobs_pb2.SubmitJobsResponse] = Future()
        with self.lock:
            if self.broken is not None:
                raise self.broken
            self.waiting[request.request_id] = future
        self.requests.put(request)
        return future

    def _read(self) -> None:
        try:
            for response in self.call:
                with self.lock:
                    future = self.waiting.pop(response.request_id, None)
                if future is not None:
                    future.set_result(response)
            error = SubmitError(grpc.StatusCode.UNAVAILABLE, "the node ended the stream")
        except grpc.RpcError as e:
            error = SubmitError(e.code(), e.details() or "")
        with self.lock:
            self.broken = error
            waiting, self.waiting = self.waiting, {}
        self.requests.put(_END)  # release gRPC's thread that drains the request iterator
        for future in waiting.values():
            future.set_exception(error)

    def close(self) -> None:
        self.requests.put(_END)  # half-close: the node answers what it has, then ends the call
        self.reader.join(5)
        if self.reader.is_alive():
            self.call.cancel()
            self.reader.join(5)


class Submitter:
    """Adds jobs over a shared SubmitJobs stream, opened on first use and after a failure."""

    def __init__(self, open_call: Callable[[Iterator[Any]], Any], timeout_s: float) -> None:
        self._open_call = open_call
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stream: _Stream | None = None

    def add(self, job: jobs_pb2.NewJob) -> jobs_pb2.SubmitJobsResponse:
        """Add one job; returns the node's answer once committed. Raises SubmitError."""
        request = jobs_pb2.SubmitJobsRequest(job=job, request_id=next(self._ids))
        future = self._current().send(request)
        try:
            response = future.result(self._timeout_s)
        except FutureTimeout:
            raise SubmitError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self._timeout_s:g}s"
            ) from None
        if response.HasField("error"):
            code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
            raise SubmitError(code, response.error.message)
        return response

    def _current(self) -> _Stream:
        with self._lock:
            stream = self._stream
            if stream is None or stream.broken is not None:
                stream = self._stream = _Stream(self._open_call)
            return stream

    def close(self) -> None:
        """End the stream after the answers still due."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
