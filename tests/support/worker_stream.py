"""A remote worker a test drives by hand: one WorkerService.Work stream over a real channel.

The test sends what a worker would send (`register`, `progress`, `result`, ...) and takes
what the node sends with a deadline (`expect("assignment")`). A reader thread moves the
node's messages into a queue, so waiting never blocks past the deadline.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
from jobmesh.v1 import workers_pb2, workers_pb2_grpc

from node.services.chunking import PayloadAssembler, crc32

from .protos import PropertyInput, prop
from .streams import StreamReader
from .waiting import DEFAULT_TIMEOUT_S


class WorkerStream:
    """One worker connection; `close()` half-closes it, `cancel()` breaks it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue[workers_pb2.WorkRequest | None] = queue.Queue()
        self.registered: workers_pb2.WorkerRegistered | None = None
        self._call = workers_pb2_grpc.WorkerServiceStub(channel).Work(self._request_iterator())
        # Once the node's side ends, end the request iterator too: grpc's thread reading it exits.
        self._reader = StreamReader(
            self._call, "worker-stream-reader", on_end=lambda: self._requests.put(None)
        )
        self.ended = self._reader.ended
        """Set once the stream ended (see `error`)."""

    @property
    def error(self) -> grpc.RpcError | None:
        """The status the stream failed with; None while it runs or if it ended with OK."""
        return self._reader.error

    @classmethod
    def connect(
        cls,
        channel: grpc.Channel,
        *topics: str,
        concurrency: int = 1,
        name: str = "test-worker",
        chunked_payloads: bool = False,
    ) -> WorkerStream:
        """Open a stream, register, and wait for the node's acknowledgement."""
        stream = cls(channel)
        stream.send(
            register=workers_pb2.WorkerRegistration(
                name=name, topics=list(topics), concurrency=concurrency, chunked_payloads=chunked_payloads
            )
        )
        stream.registered = stream.expect("registered")
        return stream

    def _request_iterator(self) -> Iterator[workers_pb2.WorkRequest]:
        while (message := self._requests.get()) is not None:
            yield message

    # --- sending ---

    def send(self, **kind: Any) -> None:
        """Send one WorkRequest with the given oneof field set (no field: an empty message)."""
        self._requests.put(workers_pb2.WorkRequest(**kind))

    def progress(self, job: workers_pb2.WorkAssignment, **fields: Any) -> None:
        """Report progress of an assigned job."""
        self.send(progress=workers_pb2.WorkProgress(job_id=job.job_id, attempt=job.attempt, **fields))

    def log(self, job: workers_pb2.WorkAssignment, message: str) -> None:
        """Log a line on an assigned job."""
        self.send(log=workers_pb2.WorkLogLine(job_id=job.job_id, attempt=job.attempt, message=message))

    def set_property(self, job: workers_pb2.WorkAssignment, name: str, value: PropertyInput) -> None:
        """Set a property of an assigned job."""
        self.send(
            property=workers_pb2.WorkProperty(
                job_id=job.job_id, attempt=job.attempt, name=name, value=prop(value)
            )
        )

    def result(
        self,
        job: workers_pb2.WorkAssignment,
        outcome: workers_pb2.WorkOutcome.ValueType = workers_pb2.WORK_OUTCOME_SUCCEEDED,
        message: str = "",
        **fields: Any,
    ) -> None:
        """Report the result of an assigned job."""
        self.send(
            result=workers_pb2.WorkResult(
                job_id=job.job_id, attempt=job.attempt, outcome=outcome, message=message, **fields
            )
        )

    def take(self, job_id: str) -> workers_pb2.WorkAssignment:
        """The next message, which must assign `job_id`."""
        assignment: workers_pb2.WorkAssignment = self.expect("assignment")
        assert assignment.job_id == job_id, f"expected job {job_id}, got {assignment}"
        return assignment

    def succeed(self, job_id: str) -> workers_pb2.WorkAssignment:
        """Take the assignment of `job_id` (the next message) and report it SUCCEEDED."""
        assignment = self.take(job_id)
        self.result(assignment)
        return assignment

    # --- receiving ---

    def receive(self, timeout: float = DEFAULT_TIMEOUT_S) -> workers_pb2.WorkResponse:
        """The next message from the node; fails if the stream ends or nothing comes in time."""
        message: workers_pb2.WorkResponse = self._reader.take(timeout, "message from the node")
        return message

    def expect(self, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """The next message, which must be of `kind` (registered, assignment, stop); its content."""
        message = self.receive(timeout)
        assert message.WhichOneof("kind") == kind, f"expected {kind}, got {message}"
        return getattr(message, kind)

    def expect_job(self, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[workers_pb2.WorkAssignment, bytes, int]:
        """The next assignment with its whole input payload (put together from the
        `payload_chunk` messages before it, each checked) and the largest message size seen."""
        pieces: PayloadAssembler | None = None
        largest = 0
        while True:
            message = self.receive(timeout)
            largest = max(largest, message.ByteSize())
            kind = message.WhichOneof("kind")
            if kind == "payload_chunk":
                chunk = message.payload_chunk
                if pieces is None:
                    pieces = PayloadAssembler(f"the payload of job {chunk.job_id}")
                pieces.add(chunk.offset, chunk.total_size, chunk.data, chunk.data_crc32)
                continue
            assert kind == "assignment", f"expected payload_chunk or assignment, got {kind}"
            assignment = message.assignment
            assert assignment.payload_chunked == (pieces is not None), assignment.payload_chunked
            payload = pieces.take(assignment.payload_crc32) if pieces else assignment.payload
            assert len(payload) == assignment.payload_size
            assert crc32(payload) == assignment.payload_crc32
            return assignment, payload, largest

    def assert_silent(self, within_s: float) -> None:
        """Nothing arrives from the node for `within_s` (for "never more than N" checks)."""
        message = self._reader.poll(within_s)
        assert message is None, f"expected no message, got {message}"

    def wait_error(self, timeout: float = DEFAULT_TIMEOUT_S) -> grpc.RpcError:
        """Wait for the stream to end with an error status; return it."""
        assert self.ended.wait(timeout), f"the stream did not end within {timeout:.1f}s"
        assert self.error is not None, "the stream ended with OK, not with an error"
        return self.error

    # --- ending ---

    def close(self) -> None:
        """Half-close: the worker has nothing more to say (the node ends the stream)."""
        self._requests.put(None)

    def cancel(self) -> None:
        """Break the stream, as a crashed worker would."""
        self._call.cancel()
        self._requests.put(None)
        self._reader.join(DEFAULT_TIMEOUT_S)
