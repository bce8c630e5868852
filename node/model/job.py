"""Job values: states, the job record, and the results a consumer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum

from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2

from node.properties import Properties, decode_properties, fill_proto_properties, micros_to_datetime


class JobState(IntEnum):
    """Lifecycle states (Sling's); values equal the proto `JobState` numbers."""

    QUEUED = 1
    ACTIVE = 2
    SUCCEEDED = 3
    STOPPED = 4
    GIVEN_UP = 5
    ERROR = 6
    DROPPED = 7

    @property
    def is_finished(self) -> bool:
        """True for history states (the job will not run again unless retried by a user)."""
        return self not in (JobState.QUEUED, JobState.ACTIVE)


HISTORY_STATES = tuple(s for s in JobState if s.is_finished)


def _timestamp(micros: int | None) -> Timestamp | None:
    if micros is None:
        return None
    seconds, remainder = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=remainder * 1000)


@dataclass(frozen=True)
class Job:
    """A job as the journal records it. Times are microseconds since the epoch (UTC)."""

    id: str
    topic: str
    properties_json: str | None = field(repr=False)
    state: JobState
    queue: str
    origin_instance: str
    target_instance: str | None
    retry_count: int
    max_retries: int
    claim: int
    """How many times the job was claimed (started), this claim included: fences the results
    and reports of earlier claims. Internal; the API's attempt number is `attempt`."""
    created_us: int
    due_us: int
    started_us: int | None
    finished_us: int | None
    result_message: str
    payload_size: int
    output_payload_size: int
    stop_requested: bool
    dedup_key: str | None = None
    retry_delay_us: int | None = None
    timeout_us: int | None = None
    progress_total: int | None = None
    progress_done: int | None = None
    eta_us: int | None = None
    log_count: int = 0
    payload: bytes | None = field(default=None, repr=False)
    output_payload: bytes | None = field(default=None, repr=False)
    log: tuple[LogLine, ...] | None = field(default=None, repr=False)
    seq: int = field(default=0, repr=False, compare=False)
    """The journal's internal row number (0 when unknown); not part of the public API."""

    @property
    def attempt(self) -> int:
        """The attempt's number, as the API and remote workers see it: retry_count + 1 (1 for the
        first; an attempt that ended without spending a retry is numbered again)."""
        return self.retry_count + 1

    @property
    def properties(self) -> Properties:
        """The job's properties as Python values (decoded on each access)."""
        return decode_properties(self.properties_json)

    @property
    def created_time(self) -> datetime:
        """When the job was added."""
        return micros_to_datetime(self.created_us)

    def to_proto(self) -> jobs_pb2.Job:
        """The public proto form (payload bytes only if loaded)."""
        proto = jobs_pb2.Job(
            id=self.id,
            topic=self.topic,
            state=jobs_pb2.JobState.ValueType(int(self.state)),
            queue=self.queue,
            origin_instance=self.origin_instance,
            target_instance=self.target_instance or "",
            retry_count=self.retry_count,
            max_retries=self.max_retries,
            created_time=_timestamp(self.created_us),
            started_time=_timestamp(self.started_us),
            finished_time=_timestamp(self.finished_us),
            result_message=self.result_message,
            payload_size=self.payload_size,
            output_payload_size=self.output_payload_size,
            stop_requested=self.stop_requested and self.state is JobState.ACTIVE,
        )
        if self.state is JobState.QUEUED and self.due_us > self.created_us:
            proto.not_before_time.FromMicroseconds(self.due_us)
        if self.dedup_key:
            proto.dedup_key = self.dedup_key
        if self.timeout_us:
            proto.timeout.FromMicroseconds(self.timeout_us)
        if self.progress_total is not None or self.progress_done is not None:
            proto.progress.total_steps = self.progress_total or 0
            proto.progress.completed_steps = self.progress_done or 0
            if self.eta_us is not None:
                proto.progress.eta.FromMicroseconds(self.eta_us)
        proto.log_line_count = self.log_count
        if self.log is not None:
            for line in self.log:
                entry = proto.log.add(message=line.message)
                entry.time.FromMicroseconds(line.time_us)
        if self.payload is not None:
            proto.payload = self.payload
        if self.output_payload is not None:
            proto.output_payload = self.output_payload
        fill_proto_properties(proto.properties, self.properties_json)
        return proto


@dataclass(frozen=True)
class LogLine:
    """One line a consumer logged on a job."""

    time_us: int
    message: str


class Outcome(IntEnum):
    """What a consumer reports for one attempt."""

    SUCCEEDED = 1
    FAILED = 2  # retried while retries last, then GIVEN_UP
    CANCELLED = 3  # never retried: ERROR


@dataclass(frozen=True)
class JobResult:
    """The result of one attempt. Build it with `succeeded`, `failed` or `cancelled`."""

    outcome: Outcome
    message: str = ""
    retry_delay_s: float | None = None
    output: bytes | None = field(default=None, repr=False)

    @classmethod
    def succeeded(cls, message: str = "", output: bytes | None = None) -> JobResult:
        """The job is done; `output` is an optional output payload."""
        return cls(Outcome.SUCCEEDED, message, None, output)

    @classmethod
    def failed(cls, message: str = "", retry_delay_s: float | None = None) -> JobResult:
        """This attempt failed; retry after `retry_delay_s` (default: the queue's delay)."""
        return cls(Outcome.FAILED, message, retry_delay_s)

    @classmethod
    def cancelled(cls, message: str = "") -> JobResult:
        """The job cannot succeed; do not retry it (it ends in ERROR)."""
        return cls(Outcome.CANCELLED, message)
