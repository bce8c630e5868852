"""Job events: every state change and progress update, with a journal sequence number."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2

from node.model.job import JobState
from node.topics import TopicPattern


class EventType(IntEnum):
    """What happened to a job; values equal the proto `JobEventType` numbers."""

    ADDED = 1
    STARTED = 2
    PROGRESS = 3
    FINISHED = 4
    FAILED = 5
    CANCELLED = 6
    STOPPED = 7
    REMOVED = 8


@dataclass(frozen=True)
class JobEvent:
    """One committed event. `seq` increases strictly in commit order and is never reused."""

    seq: int
    type: EventType
    time_us: int
    job_id: str
    topic: str
    queue: str
    state: JobState
    retry_count: int
    message: str = ""
    progress_total: int = 0
    progress_done: int = 0
    eta_us: int | None = None
    target: str | None = None

    def to_proto(self) -> jobs_pb2.JobEvent:
        """The public proto form."""
        seconds, micros = divmod(self.time_us, 1_000_000)
        proto = jobs_pb2.JobEvent(
            seq=self.seq,
            type=self.type,  # type: ignore[arg-type]
            time=Timestamp(seconds=seconds, nanos=micros * 1000),
            job_id=self.job_id,
            topic=self.topic,
            queue=self.queue,
            state=self.state,  # type: ignore[arg-type]
            retry_count=self.retry_count,
            message=self.message,
            target_instance=self.target or "",
        )
        if self.type is EventType.PROGRESS:
            proto.progress.total_steps = self.progress_total
            proto.progress.completed_steps = self.progress_done
            if self.eta_us is not None:
                proto.progress.eta.FromMicroseconds(self.eta_us)
        return proto


@dataclass(frozen=True)
class EventFilter:
    """Which events a watcher wants; empty fields match everything."""

    topics: tuple[TopicPattern, ...] = ()
    job_ids: frozenset[str] = frozenset()
    types: frozenset[EventType] = frozenset()

    def matches(self, event: JobEvent) -> bool:
        """True when `event` passes every non-empty criterion."""
        if self.job_ids and event.job_id not in self.job_ids:
            return False
        if self.types and event.type not in self.types:
            return False
        return not self.topics or any(p.matches(event.topic) for p in self.topics)
