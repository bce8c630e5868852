"""Rows and values of the job stores: the job row by name, the records written and read, page
tokens, topic-pattern predicates, and the job states as SQL literals.

States are written into SQL from `JobState` (f-strings, not bound parameters) so that SQLite can
use the partial indexes whose WHERE names a state literal (see schema.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from node.journal.payloads import PAYLOAD_INPUT, PAYLOAD_OUTPUT
from node.journal.property_index import unindex_jobs
from node.model.job import Job, JobState, Outcome
from node.model.queues import QueueConfig
from node.templates import Template
from node.topics import TopicPattern

__all__ = ["PAYLOAD_INPUT", "PAYLOAD_OUTPUT"]  # re-exported: the stores name the kinds from here

if TYPE_CHECKING:
    from node.journal.hooks import JournalHook
    from node.journal.journal import Journal


QUEUED = f"{JobState.QUEUED:d}"
ACTIVE = f"{JobState.ACTIVE:d}"
SUCCEEDED = f"{JobState.SUCCEEDED:d}"
STOPPED = f"{JobState.STOPPED:d}"
DROPPED = f"{JobState.DROPPED:d}"
UNFINISHED = f"({QUEUED}, {ACTIVE})"
"""SQL list of the states of jobs that will still run."""
FINISHED = "(" + ", ".join(f"{s:d}" for s in JobState if s.is_finished) + ")"
"""SQL list of the history states."""


def state_list(states: Sequence[JobState]) -> str:
    """An SQL list of `states` (for `state IN ...`)."""
    return "(" + ", ".join(f"{JobState(s):d}" for s in states) + ")"


class JobRow(NamedTuple):
    """A row of `jobs` selected with COLUMNS, read by name."""

    seq: int
    id: str
    topic: str
    properties: str | None
    state: int
    queue: str
    origin: str
    target: str | None
    retry_count: int
    max_retries: int
    attempt: int
    created_us: int
    due_us: int
    started_us: int | None
    finished_us: int | None
    result_message: str
    payload_size: int
    output_size: int
    stop_requested: int
    dedup_key: str | None
    retry_delay_us: int | None
    timeout_us: int | None
    progress_total: int | None
    progress_done: int | None
    eta_us: int | None
    log_count: int


COLUMNS = ", ".join(JobRow._fields)
"""The columns of a JobRow, in order, for SELECT and RETURNING."""


def row_to_job(row: Sequence[Any]) -> Job:
    """A Job from a row selected with COLUMNS."""
    r = JobRow._make(row)
    return Job(
        id=r.id,
        topic=r.topic,
        properties_json=r.properties,
        state=JobState(r.state),
        queue=r.queue,
        origin_instance=r.origin,
        target_instance=r.target,
        retry_count=r.retry_count,
        max_retries=r.max_retries,
        claim=r.attempt,
        created_us=r.created_us,
        due_us=r.due_us,
        started_us=r.started_us,
        finished_us=r.finished_us,
        result_message=r.result_message,
        payload_size=r.payload_size,
        output_payload_size=r.output_size,
        stop_requested=bool(r.stop_requested),
        dedup_key=r.dedup_key,
        retry_delay_us=r.retry_delay_us,
        timeout_us=r.timeout_us,
        progress_total=r.progress_total,
        progress_done=r.progress_done,
        eta_us=r.eta_us,
        log_count=r.log_count,
        seq=r.seq,
    )


class JobRef(Protocol):
    """What an event about a job names (a Job, or a row selected with these columns)."""

    @property
    def id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def retry_count(self) -> int: ...


def select_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    """The job with `job_id`, read in the caller's transaction, or None."""
    row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else row_to_job(row)


@dataclass(frozen=True)
class NewJobRecord:
    """A validated job ready to insert."""

    id: str
    topic: str
    properties_json: str | None
    queue: str
    origin: str
    target: str | None
    max_retries: int
    created_us: int
    payload: bytes | None
    dedup_key: str | None = None
    retry_delay_us: int | None = None
    timeout_us: int | None = None

    def as_committed(self) -> Job:
        """The job exactly as `JobStore.add_jobs` inserts this record (QUEUED; no payload bytes)."""
        return Job(
            id=self.id,
            topic=self.topic,
            properties_json=self.properties_json,
            state=JobState.QUEUED,
            queue=self.queue,
            origin_instance=self.origin,
            target_instance=self.target,
            retry_count=0,
            max_retries=self.max_retries,
            claim=0,
            created_us=self.created_us,
            due_us=self.created_us,
            started_us=None,
            finished_us=None,
            result_message="",
            payload_size=len(self.payload) if self.payload else 0,
            output_payload_size=0,
            stop_requested=False,
            dedup_key=self.dedup_key,
            retry_delay_us=self.retry_delay_us,
            timeout_us=self.timeout_us,
        )


@dataclass(frozen=True)
class AddedJob:
    """The outcome of adding one job: its id, and whether an existing job was returned."""

    id: str
    deduplicated: bool
    event_seq: int


@dataclass(frozen=True)
class JobQuery:
    """A FindJobs query: states, topic, templates, and a page."""

    states: tuple[JobState, ...]
    topic: str | None = None
    templates: tuple[Template, ...] = ()
    limit: int = 100
    after_seq: int | None = None
    newest_first: bool = False
    by_id: bool = False
    """Order by job id (creation order across instances, for topology pages) instead of by seq."""
    after_id: str | None = None
    """With `by_id`: only jobs whose id sorts after this one (before it with `newest_first`)."""


@dataclass(frozen=True)
class JobPage:
    """One page of a query's results."""

    jobs: list[Job]
    total_count: int
    next_after_seq: int | None
    """The seq the next page continues after (the service makes it a page token); None: the last page."""
    total_by_origin: dict[str, int] | None = None
    """With `by_id`: how many jobs match, per origin instance."""


@dataclass(frozen=True)
class AttemptReport:
    """What a consumer reported for one attempt of a job, and the queue policy to apply."""

    job_id: str
    attempt: int  # the claim it ends (Job.claim): fences stale results
    outcome: Outcome
    message: str
    queue: QueueConfig
    retry_delay_s: float | None = None
    output: bytes | None = None
    seq: int = 0
    """The job's row (from the claim); 0: look it up by id."""


def pattern_sql(patterns: Sequence[TopicPattern]) -> tuple[str, list[str]]:
    """A SQL predicate on `topic` matching any of `patterns` (FALSE when there are none)."""
    if not patterns:
        return "0", []
    parts, params = [], []
    for pattern in patterns:
        prefix = f"{pattern.base}/" if pattern.base else ""
        if pattern.kind == "exact":
            parts.append("topic = ?")
            params.append(pattern.base)
        elif pattern.kind == "descendants":
            parts.append("topic GLOB ?")
            params.append(prefix + "*")
        else:
            parts.append("(topic GLOB ? AND topic NOT GLOB ?)")
            params += [prefix + "*", prefix + "*/*"]
    return "(" + " OR ".join(parts) + ")", params


def delete_jobs(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delete jobs with their payloads and log lines."""
    rows = [(seq,) for seq in seqs]
    unindex_jobs(conn, seqs)
    conn.executemany("DELETE FROM payloads WHERE job_seq = ?", rows)
    conn.executemany("DELETE FROM job_log WHERE job_seq = ?", rows)
    conn.executemany("DELETE FROM jobs WHERE seq = ?", rows)


class JobStorePart:
    """What every part of the job store (queries, claims, attempts, controls) works with."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._recorder = journal.recorder

    @property
    def _hook(self) -> JournalHook:
        """The hook registered on the journal (offloading), called inside each change."""
        return self.journal.hook


def distinct_values(
    conn: sqlite3.Connection, column: str, source: str = "jobs", where: str = "1", params: Sequence[Any] = ()
) -> Iterator[str]:
    """The distinct values of `column` among the rows of `source` matching `where`, ascending: a
    skip scan, one index seek per value where an index leads with `column` after the equalities
    of `where` (SELECT DISTINCT would visit every row; a row-value `>` every row of a value)."""
    value = ""
    while True:
        found = conn.execute(
            f"SELECT min({column}) FROM {source} WHERE {where} AND {column} > ?", (*params, value)
        ).fetchone()[0]
        if found is None:
            return
        value = found
        yield value
