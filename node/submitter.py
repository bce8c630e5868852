"""One SubmitJobs stream shared by the threads of a client (see JobService.SubmitJobs).

A unary AddJob per job costs a whole call's round trip and setup; a long-lived stream costs one
message each way. `Submitter.add` blocks its thread until the node answered that job, so it
behaves like AddJob (committed on return, the same errors), while many threads share the stream
and their jobs share the node's group commits. At most MESSAGES_IN_FLIGHT messages wait for
their answers; the jobs that queue meanwhile (many threads adding at once) go together in the
next one (`more`): one message's cost each way instead of one per job. A broken stream fails
the jobs it was carrying (their outcome is unknown, as for a unary call that failed) and the
next `add` opens a new one.
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


PACK_JOBS = 1024
"""Most jobs in one message, `job` and `more` together (the node's limit, in jobs.proto)."""
PACK_BYTES = 1 << 20
"""Jobs join a message while it stays under this many bytes (a node accepts 4 MiB or more)."""
MESSAGES_IN_FLIGHT = 2
"""Messages sent and not yet answered, at most: the jobs that queue meanwhile go together in the
next one. A node's cost is mostly per message; one more in flight keeps the node busy while the
next message fills. 32 producer threads: 7,802 jobs/s at 13 jobs per message, 3,794 at 2.8
without the limit (docs/benchmarks.md). One producer's jobs go at once, as before."""

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_END = object()

Answer = jobs_pb2.SubmitJobsResponse | jobs_pb2.SubmitJobsAnswer
"""The node's answer to one job."""


class _Stream:
    """One open SubmitJobs call: a queue of one-job requests its iterator packs into messages, a
    reader resolving futures."""

    def __init__(self, open_call: Callable[[Iterator[Any]], Any]) -> None:
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.waiting: dict[int, Future[Answer]] = {}
        self.lock = threading.Lock()
        self.broken: SubmitError | None = None
        # One token per message that may be unanswered (a queue: cheaper than a Semaphore).
        self.room: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(MESSAGES_IN_FLIGHT):
            self.room.put(None)
        self.call = open_call(self._iterate())
        self.reader = threading.Thread(target=self._read, name="jobmesh-submit", daemon=True)
        self.reader.start()

    def _iterate(self) -> Iterator[jobs_pb2.SubmitJobsRequest]:
        """Messages for gRPC's sending thread: each job waiting when one is due goes along."""
        carried: Any = None  # what did not fit into the last message
        while True:
            first, carried = (carried if carried is not None else self.requests.get()), None
            if first is _END:
                return
            self.room.get()  # the jobs that queue meanwhile go along in this message
            request = first  # built by its producer's thread, off this one's path
            size = -1  # the message's bytes, counted once a second job may join
            while not self.requests.empty() and len(request.more) < PACK_JOBS - 1:
                waiting = self.requests.get_nowait()  # only this thread takes: it is there
                if size < 0:
                    size = request.ByteSize()
                if waiting is _END or size + waiting.job.ByteSize() > PACK_BYTES:
                    carried = waiting
                    break
                request.more.add(job=waiting.job, request_id=waiting.request_id)
                size += waiting.job.ByteSize()
            yield request

    def send(self, request_id: int, job: jobs_pb2.NewJob) -> Future[Answer]:
        future: Future[Answer] = Future()
        with self.lock:
            if self.broken is not None:
                raise self.broken
            self.waiting[request_id] = future
        self.requests.put(jobs_pb2.SubmitJobsRequest(job=job, request_id=request_id))
        return future

    def _read(self) -> None:
        try:
            for response in self.call:
                self.room.put(None)
                answers: list[Answer] = [response, *response.more] if response.more else [response]
                with self.lock:
                    futures = [self.waiting.pop(a.request_id, None) for a in answers]
                for future, answer in zip(futures, answers, strict=True):
                    if future is not None:
                        future.set_result(answer)
            error = SubmitError(grpc.StatusCode.UNAVAILABLE, "the node ended the stream")
        except grpc.RpcError as e:
            error = SubmitError(e.code(), e.details() or "")
        with self.lock:
            self.broken = error
            waiting, self.waiting = self.waiting, {}
        self.requests.put(_END)  # release gRPC's thread that drains the request iterator
        for _ in range(MESSAGES_IN_FLIGHT):
            self.room.put(None)  # also if it waits for room
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

    def add(self, job: jobs_pb2.NewJob) -> Answer:
        """Add one job; returns the node's answer once committed. Raises SubmitError."""
        future = self._current().send(next(self._ids), job)
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
