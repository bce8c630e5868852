"""Job events as a test sees them: a WatchJobs stream read by a thread, taken with deadlines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from .launcher import STOP_TIMEOUT_S
from .streams import StreamReader
from .waiting import DEFAULT_TIMEOUT_S, Deadline


class Watcher:
    """A WatchJobs stream read by a thread of its own, so tests can wait for events with a deadline.

    `close()` cancels the stream, like a client that goes away: responses received but not
    taken yet are dropped.
    """

    def __init__(self, channel: grpc.Channel, request: jobs_pb2.WatchJobsRequest) -> None:
        self.call = jobs_pb2_grpc.JobServiceStub(channel).WatchJobs(request)
        self.responses: list[jobs_pb2.WatchJobsResponse] = []
        self.events: list[jobs_pb2.JobEvent] = []
        self._reader = StreamReader(self.call, "watcher")

    @property
    def error(self) -> grpc.RpcError | None:
        """The status the stream failed with, if it did."""
        return self._reader.error

    def next_response(self, timeout: float = DEFAULT_TIMEOUT_S) -> jobs_pb2.WatchJobsResponse:
        """Take the next response (AssertionError at the deadline or if the stream ended)."""
        item = self._reader.take(timeout, "WatchJobs response")
        assert isinstance(item, jobs_pb2.WatchJobsResponse)
        self.responses.append(item)
        self.events.extend(item.events)
        return item

    def until(
        self,
        done: Callable[[list[jobs_pb2.JobEvent]], bool],
        timeout: float = DEFAULT_TIMEOUT_S,
        what: str = "events",
    ) -> list[jobs_pb2.JobEvent]:
        """Take responses until `done(all events taken so far)`; returns those events."""
        deadline = Deadline(timeout)
        while not done(self.events):
            left = deadline.left()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}; got {len(self.events)} events: "
                    f"{[(e.seq, e.type, e.topic) for e in self.events[-10:]]} (last 10)"
                )
            self.next_response(left)
        return self.events

    def error_code(self, timeout: float = DEFAULT_TIMEOUT_S) -> grpc.StatusCode:
        """Wait for the stream to fail; its status code."""
        self._reader.join(timeout)
        assert self.error is not None, "the stream did not fail"
        return self.error.code()

    def close(self) -> None:
        """Cancel the stream and stop reading."""
        self.call.cancel()
        self._reader.join(STOP_TIMEOUT_S)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watch(
    channel: grpc.Channel,
    after_seq: int = 0,
    topics: Sequence[str] = (),
    job_ids: Sequence[str] = (),
    types: Sequence[int] = (),
) -> Watcher:
    """Start watching job events."""
    request = jobs_pb2.WatchJobsRequest(after_seq=after_seq, topics=topics, job_ids=job_ids)
    request.types.extend(types)  # type: ignore[arg-type]
    return Watcher(channel, request)
