"""Job storage: every job operation on the journal, each one atomic and recorded as events.

Each write operation runs inside the writer's group commit; the events and statistics it
records (`journal.recorder`) commit with it or not at all.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from node.errors import FailedPrecondition, InvalidArgument, JobNotFound
from node.journal.journal import Journal
from node.model.events import EventType
from node.model.job import Job, JobState, LogLine, Outcome
from node.model.lifecycle import after_attempt
from node.model.queues import QueueConfig
from node.properties import value_to_json
from node.templates import Template, templates_to_sql
from node.topics import TopicPattern

PAYLOAD_INPUT = 1
PAYLOAD_OUTPUT = 2
OUTBOX_STOP = 3
"""Outbox kind: StopJob at the origin, for the target (1 job and 2 report: see node.transfer.store)."""
OUTBOX_REMOVE = 4
"""Outbox kind: RemoveJob at the origin, for the target."""

COLUMNS = (
    "seq, id, topic, properties, state, queue, origin, target, retry_count, max_retries, attempt, "
    "created_us, due_us, started_us, finished_us, result_message, payload_size, output_size, stop_requested, "
    "dedup_key, retry_delay_us, timeout_us, progress_total, progress_done, eta_us, log_count"
)
_EVENT_FOR_END = {
    JobState.SUCCEEDED: (EventType.FINISHED, "finished"),
    JobState.QUEUED: (EventType.FAILED, "failed"),
    JobState.GIVEN_UP: (EventType.CANCELLED, "cancelled"),
    JobState.ERROR: (EventType.CANCELLED, "cancelled"),
    JobState.STOPPED: (EventType.STOPPED, "cancelled"),
}


def row_to_job(row: Sequence[Any]) -> Job:
    """A Job from a row selected with COLUMNS."""
    return Job(
        id=row[1],
        topic=row[2],
        properties_json=row[3],
        state=JobState(row[4]),
        queue=row[5],
        origin_instance=row[6],
        target_instance=row[7],
        retry_count=row[8],
        max_retries=row[9],
        attempt=row[10],
        created_us=row[11],
        due_us=row[12],
        started_us=row[13],
        finished_us=row[14],
        result_message=row[15],
        payload_size=row[16],
        output_payload_size=row[17],
        stop_requested=bool(row[18]),
        dedup_key=row[19],
        retry_delay_us=row[20],
        timeout_us=row[21],
        progress_total=row[22],
        progress_done=row[23],
        eta_us=row[24],
        log_count=row[25],
        seq=row[0],
    )


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
    offload: bool = False
    """True if `target` is another instance: the insert queues the job in the transfer outbox."""

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
            attempt=0,
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


@dataclass(frozen=True)
class JobPage:
    """One page of a query's results."""

    jobs: list[Job]
    total_count: int
    next_page_token: str


@dataclass(frozen=True)
class AttemptReport:
    """What a consumer reported for one attempt of a job, and the queue policy to apply."""

    job_id: str
    attempt: int
    outcome: Outcome
    message: str
    queue: QueueConfig
    retry_delay_s: float | None = None
    output: bytes | None = None
    seq: int = 0
    """The job's row (from the claim); 0: look it up by id."""


def encode_page_token(seq: int) -> str:
    """The opaque token that continues a query after row `seq`."""
    return base64.urlsafe_b64encode(json.dumps({"after": seq}).encode()).decode()


def decode_page_token(token: str) -> int:
    """The row a token continues after, or InvalidArgument."""
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        # A row seq is a SQLite INTEGER: anything else would fail deep in the query.
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63:
            raise TypeError(after)
        return after
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"page_token {token!r} is malformed; pass a next_page_token unchanged") from e


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


def _delete_jobs(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    rows = [(seq,) for seq in seqs]
    conn.executemany("DELETE FROM payloads WHERE job_seq = ?", rows)
    conn.executemany("DELETE FROM job_log WHERE job_seq = ?", rows)
    conn.executemany("DELETE FROM jobs WHERE seq = ?", rows)


class JobStore:
    """The jobs of one node in its journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._recorder = journal.recorder

    # --- adding and reading ----------------------------------------------------------------

    def insert(self, conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> list[AddedJob]:
        """Insert jobs inside a running write operation (see `add_jobs`)."""
        recorder = self._recorder
        added: list[AddedJob] = []
        fresh: list[NewJobRecord] = []
        by_key: dict[str, str] = {}
        for r in records:
            if r.dedup_key:
                existing = by_key.get(r.dedup_key)
                if existing is None:
                    row = conn.execute("SELECT id FROM jobs WHERE dedup_key = ?", (r.dedup_key,)).fetchone()
                    existing = row[0] if row else None
                if existing is not None:
                    added.append(AddedJob(existing, True, 0))
                    continue
                by_key[r.dedup_key] = r.id
            fresh.append(r)
            seq = recorder.event(EventType.ADDED, r.created_us, r.id, r.topic, r.queue, JobState.QUEUED, 0)
            added.append(AddedJob(r.id, False, seq))
        conn.executemany(
            "INSERT INTO jobs (id, topic, properties, state, queue, origin, target, max_retries, created_us, "
            "due_us, payload_size, dedup_key, retry_delay_us, timeout_us) "
            "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.id,
                    r.topic,
                    r.properties_json,
                    r.queue,
                    r.origin,
                    r.target,
                    r.max_retries,
                    r.created_us,
                    r.created_us,
                    len(r.payload) if r.payload else 0,
                    r.dedup_key,
                    r.retry_delay_us,
                    r.timeout_us,
                )
                for r in fresh
            ],
        )
        offloaded = [(r.target, r.id) for r in fresh if r.offload and r.target is not None]
        if offloaded:
            conn.executemany("INSERT INTO outbox (peer, kind, job_id, epoch) VALUES (?, 1, ?, 0)", offloaded)
            self._recorder.outbox_writes += 1
        with_payload = [r for r in fresh if r.payload]
        if with_payload:
            conn.executemany(
                "INSERT INTO payloads (job_seq, kind, data) SELECT seq, ?, ? FROM jobs WHERE id = ?",
                [(PAYLOAD_INPUT, r.payload, r.id) for r in with_payload],
            )
        return added

    async def add_jobs(self, records: Sequence[NewJobRecord]) -> list[AddedJob]:
        """Insert jobs atomically (all or none); a dedup key that exists returns that job instead."""
        return await self.journal.write(lambda conn: self.insert(conn, records))

    async def get_job(self, job_id: str, *, include_payloads: bool = False, include_log: bool = False) -> Job:
        """The job with `job_id`, or JobNotFound."""

        def select(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} on this node")
            job = row_to_job(row)
            if include_payloads:
                payloads = dict(conn.execute("SELECT kind, data FROM payloads WHERE job_seq = ?", (row[0],)))
                job = replace(
                    job,
                    payload=payloads.get(PAYLOAD_INPUT, b""),
                    output_payload=payloads.get(PAYLOAD_OUTPUT, b""),
                )
            if include_log:
                lines = conn.execute(
                    "SELECT time_us, message FROM job_log WHERE job_seq = ? ORDER BY line", (row[0],)
                ).fetchall()
                job = replace(job, log=tuple(LogLine(t, m) for t, m in lines))
            return job

        return await self.journal.read(select)

    async def get_payload(self, job_id: str) -> bytes | None:
        """The input payload of a job (None if it has none)."""
        row = await self.journal.read(
            lambda c: c.execute(
                "SELECT data FROM payloads JOIN jobs ON jobs.seq = payloads.job_seq WHERE jobs.id = ? AND kind = ?",
                (job_id, PAYLOAD_INPUT),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def find_jobs(self, query: JobQuery) -> JobPage:
        """One page of jobs matching `query`, with the total count over all pages."""
        where = [f"state IN ({', '.join(str(int(s)) for s in query.states)})"]
        params: list[Any] = []
        if query.topic:
            where.append("topic = ?")
            params.append(query.topic)
        template_sql, template_params = templates_to_sql(query.templates)
        where.append(template_sql)
        params += template_params
        base_where = " AND ".join(where)
        page_where, page_params = base_where, list(params)
        if query.after_seq is not None:
            page_where += " AND seq < ?" if query.newest_first else " AND seq > ?"
            page_params.append(query.after_seq)
        order = "DESC" if query.newest_first else "ASC"

        def select(conn: sqlite3.Connection) -> JobPage:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE {page_where} ORDER BY seq {order} LIMIT ?",
                [*page_params, query.limit + 1],
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM jobs WHERE {base_where}", params).fetchone()[0]
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            token = encode_page_token(rows[-1][0]) if more and rows else ""
            return JobPage([row_to_job(r) for r in rows], int(total), token)

        return await self.journal.read(select)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = await self.journal.read(
            lambda c: c.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        )
        return {JobState(state): count for state, count in rows}

    async def live_counts(self) -> list[tuple[str, str, JobState, int]]:
        """(queue, topic, state, count) of QUEUED and ACTIVE jobs."""
        rows = await self.journal.read(
            lambda c: c.execute(
                "SELECT queue, topic, state, count(*) FROM jobs WHERE state IN (1, 2) GROUP BY queue, topic, state"
            ).fetchall()
        )
        return [(q, t, JobState(s), n) for q, t, s, n in rows]

    # --- running jobs ---------------------------------------------------------------------------

    def _start_rows(
        self, conn: sqlite3.Connection, seqs: Sequence[int], target: str, now_us: int
    ) -> list[Job]:
        if not seqs:
            return []
        rows = conn.execute(
            f"UPDATE jobs SET state = 2, attempt = attempt + 1, started_us = ?, target = ?, progress_total = NULL, "
            f"progress_done = NULL, eta_us = NULL WHERE seq IN ({', '.join('?' * len(seqs))}) RETURNING {COLUMNS}",
            (now_us, target, *seqs),
        ).fetchall()
        order = {seq: index for index, seq in enumerate(seqs)}
        rows.sort(key=lambda r: order[r[0]])
        return self._started(rows, target, now_us)

    def _started(self, rows: list[Any], target: str, now_us: int) -> list[Job]:
        """Jobs from rows just moved to ACTIVE, with their STARTED events and statistics."""
        jobs = [row_to_job(r) for r in rows]
        recorder = self._recorder
        for job in jobs:
            recorder.event(
                EventType.STARTED,
                now_us,
                job.id,
                job.topic,
                job.queue,
                JobState.ACTIVE,
                job.retry_count,
                target=target,
            )
            recorder.started(job.queue, job.topic, now_us - job.due_us, now_us)
        return jobs

    @staticmethod
    def _next_due(
        conn: sqlite3.Connection, jobs: list[Job], limit: int, target: str, queue: str
    ) -> int | None:
        """When the earliest QUEUED job left is due; only looked up when the claim took fewer than
        `limit` (otherwise the runner claims again at once), in the claim's own transaction."""
        if len(jobs) == limit:
            return None
        row = conn.execute(
            "SELECT min(due_us) FROM jobs WHERE state = 1 AND target = ? AND queue = ?", (target, queue)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    async def claim(self, target: str, queue: str, now_us: int, limit: int) -> tuple[list[Job], int | None]:
        """Start up to `limit` due QUEUED jobs of `queue` assigned to `target`, earliest due first.

        Returns (started jobs, when the next remaining job is due: None if none or if `limit` were taken).
        """

        def update(conn: sqlite3.Connection) -> tuple[list[Job], int | None]:
            rows = conn.execute(
                f"UPDATE jobs SET state = 2, attempt = attempt + 1, started_us = ?, progress_total = NULL, "
                f"progress_done = NULL, eta_us = NULL WHERE seq IN (SELECT seq FROM jobs WHERE state = 1 "
                f"AND target = ? AND queue = ? AND due_us <= ? ORDER BY due_us, seq LIMIT ?) RETURNING {COLUMNS}",
                (now_us, target, queue, now_us, limit),
            ).fetchall()
            rows.sort(key=lambda r: (r[12], r[0]))  # RETURNING has no order: due, then seq
            jobs = self._started(rows, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue)

        return await self.journal.write(update)

    async def claim_ordered(self, target: str, queue: str, now_us: int) -> tuple[list[Job], int | None]:
        """Start the oldest QUEUED job of an ordered queue if it is due.

        Returns (started jobs, due time of a head that is not due yet). A failed job keeps its
        place at the head, so it blocks the queue until its retry delay has passed.
        """

        def update(conn: sqlite3.Connection) -> tuple[list[Job], int | None]:
            head = conn.execute(
                "SELECT seq, due_us FROM jobs WHERE state = 1 AND target = ? AND queue = ? ORDER BY seq LIMIT 1",
                (target, queue),
            ).fetchone()
            if head is None:
                return [], None
            if head[1] > now_us:
                return [], int(head[1])
            return self._start_rows(conn, [head[0]], target, now_us), None

        return await self.journal.write(update)

    async def claim_round_robin(
        self, target: str, queue: str, now_us: int, limit: int, last_topic: str
    ) -> tuple[list[Job], int | None]:
        """Start up to `limit` due jobs, one topic after another, starting after `last_topic`
        (returns the same pair as `claim`)."""

        def update(conn: sqlite3.Connection) -> tuple[list[Job], int | None]:
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM (SELECT seq, topic, row_number() OVER (PARTITION BY topic ORDER BY due_us, seq) "
                    "AS turn FROM jobs WHERE state = 1 AND target = ? AND queue = ? AND due_us <= ?) "
                    "ORDER BY turn, topic <= ?, topic LIMIT ?",
                    (target, queue, now_us, last_topic, limit),
                )
            ]
            jobs = self._start_rows(conn, seqs, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue)

        return await self.journal.write(update)

    async def end_attempts(self, reports: Sequence[AttemptReport], now_us: int) -> list[bool]:
        """Apply consumer results in one operation; False for a report whose attempt is stale."""

        def apply(conn: sqlite3.Connection) -> list[bool]:
            return [self._end_attempt(conn, report, now_us) for report in reports]

        return await self.journal.write(apply)

    def _end_attempt(self, conn: sqlite3.Connection, report: AttemptReport, now_us: int) -> bool:
        output_size = len(report.output) if report.output else 0
        if report.outcome is Outcome.SUCCEEDED:
            # The common case in one statement: success does not depend on retries or stop requests.
            row = conn.execute(
                "UPDATE jobs SET state = 3, finished_us = ?, result_message = ?, output_size = ? WHERE "
                + ("seq = ?" if report.seq else "id = ?")
                + " AND state = 2 AND attempt = ? RETURNING seq, topic, queue, retry_count, target, started_us",
                (now_us, report.message, output_size, report.seq or report.job_id, report.attempt),
            ).fetchone()
            if row is None:  # stopped, removed or re-queued meanwhile: this attempt is stale
                return False
            seq, topic, queue, retry_count, target, started_us = row
            state = JobState.SUCCEEDED
        else:
            current = conn.execute(
                "SELECT seq, retry_count, max_retries, stop_requested, retry_delay_us, started_us, topic, queue, target "
                "FROM jobs WHERE id = ? AND state = 2 AND attempt = ?",
                (report.job_id, report.attempt),
            ).fetchone()
            if current is None:
                return False
            seq, retry_count, max_retries, stop_requested, job_delay_us, started_us, topic, queue, target = (
                current
            )
            transition = after_attempt(
                report.outcome,
                retry_count=retry_count,
                max_retries=max_retries,
                stop_requested=bool(stop_requested),
            )
            state, retry_count = transition.state, transition.retry_count
            if state is JobState.QUEUED:
                override_s = report.retry_delay_s
                if override_s is None and job_delay_us is not None:
                    override_s = job_delay_us / 1e6
                delay_us = report.queue.retry_delay_us(retry_count, override_s)
                conn.execute(
                    "UPDATE jobs SET state = 1, retry_count = ?, due_us = ?, result_message = ? WHERE seq = ?",
                    (retry_count, now_us + delay_us, report.message, seq),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET state = ?, retry_count = ?, finished_us = ?, result_message = ?, output_size = ? "
                    "WHERE seq = ?",
                    (int(state), retry_count, now_us, report.message, output_size, seq),
                )
        if report.output and state is not JobState.QUEUED:
            conn.execute(
                "INSERT OR REPLACE INTO payloads (job_seq, kind, data) VALUES (?, ?, ?)",
                (seq, PAYLOAD_OUTPUT, report.output),
            )
        kind, outcome = _EVENT_FOR_END[state]
        recorder = self._recorder
        recorder.event(
            kind, now_us, report.job_id, topic, queue, state, retry_count, report.message, target=target
        )
        recorder.ended(queue, topic, outcome, now_us - (started_us or now_us), now_us)
        if state is JobState.SUCCEEDED and not report.queue.keep_jobs and not self._offloaded_here(conn, seq):
            _delete_jobs(conn, [seq])
        return True

    def _offloaded_here(self, conn: sqlite3.Connection, seq: int) -> bool:
        """True if the job came from another origin: it must stay until its report is sent."""
        local = self._recorder.local_instance
        if local is None:
            return False
        row = conn.execute("SELECT origin FROM jobs WHERE seq = ?", (seq,)).fetchone()
        return row is not None and row[0] != local

    async def requeue_active(self, job_ids: Sequence[tuple[str, int]], now_us: int) -> int:
        """Put ACTIVE attempts back to QUEUED, retry count unchanged (graceful shutdown)."""
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> int:
            count = 0
            for job_id, attempt in job_ids:
                row = conn.execute(
                    "UPDATE jobs SET state = 1, due_us = ? WHERE id = ? AND state = 2 AND attempt = ? "
                    "RETURNING topic, queue, retry_count",
                    (now_us, job_id, attempt),
                ).fetchone()
                if row is not None:
                    count += 1
                    recorder.event(
                        EventType.FAILED,
                        now_us,
                        job_id,
                        row[0],
                        row[1],
                        JobState.QUEUED,
                        row[2],
                        "re-queued: the node shut down while the job ran",
                    )
            return count

        return await self.journal.write(update)

    async def release_active(self, job_id: str, attempt: int, now_us: int, message: str) -> bool:
        """Put an ACTIVE attempt back to QUEUED *unassigned*, retry count unchanged.

        For an attempt no consumer took (its consumer went away between claim and run): the
        job waits for a consumer instead of spending a retry. False if the attempt is stale or
        a stop was requested (end that attempt as failed instead: it becomes STOPPED).
        """
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                # result_message stays: it tells why the last attempt that ran ended.
                "UPDATE jobs SET state = 1, target = NULL, due_us = ? "
                "WHERE id = ? AND state = 2 AND attempt = ? AND stop_requested = 0 "
                "RETURNING topic, queue, retry_count",
                (now_us, job_id, attempt),
            ).fetchone()
            if row is None:
                return False
            recorder.event(EventType.FAILED, now_us, job_id, row[0], row[1], JobState.QUEUED, row[2], message)
            return True

        return await self.journal.write(update)

    async def recover_after_crash(self, target: str, now_us: int) -> tuple[int, int, int]:
        """Handle jobs left ACTIVE by a crash: re-queue them with retry count + 1.

        A job whose stop was requested becomes STOPPED; one that has used up its retries
        (it may be what crashed the node) becomes GIVEN_UP. Returns (requeued, stopped, given_up).
        """
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> tuple[int, int, int]:
            message = "the node stopped while the job was running"
            counts = []
            for sql, state, kind, outcome, text in (
                (
                    "UPDATE jobs SET state = 4, finished_us = ?, result_message = ? "
                    "WHERE state = 2 AND target = ? AND stop_requested = 1",
                    JobState.STOPPED,
                    EventType.STOPPED,
                    "cancelled",
                    message,
                ),
                (
                    "UPDATE jobs SET state = 5, retry_count = retry_count + 1, finished_us = ?, result_message = ? "
                    "WHERE state = 2 AND target = ? AND max_retries >= 0 AND retry_count + 1 > max_retries",
                    JobState.GIVEN_UP,
                    EventType.CANCELLED,
                    "cancelled",
                    message + "; no retries left",
                ),
                (
                    "UPDATE jobs SET state = 1, retry_count = retry_count + 1, due_us = ?, result_message = ? "
                    "WHERE state = 2 AND target = ?",
                    JobState.QUEUED,
                    EventType.FAILED,
                    "failed",
                    message,
                ),
            ):
                rows = conn.execute(
                    sql + " RETURNING id, topic, queue, retry_count", (now_us, text, target)
                ).fetchall()
                for job_id, topic, queue, retries in rows:
                    recorder.event(kind, now_us, job_id, topic, queue, state, retries, text, target=target)
                    # Counted like the failure its retry count records; its duration is unknown.
                    recorder.ended(queue, topic, outcome, None, now_us)
                counts.append(len(rows))
            stopped, given_up, requeued = counts
            return requeued, stopped, given_up

        return await self.journal.write(update)

    async def assign_unassigned(
        self,
        target: str,
        patterns: Sequence[TopicPattern],
        disabled: Sequence[TopicPattern] = (),
        exclusive: Sequence[TopicPattern] = (),
    ) -> int:
        """Assign QUEUED jobs without a target whose topic matches `patterns` to `target`.

        QUEUED jobs assigned to `target` whose topic no longer matches (their consumer is gone,
        e.g. after a restart with other consumers) are unassigned again: they wait for a
        consumer instead of failing their retries away. Returns how many were assigned.
        """
        predicate, params = pattern_sql(patterns)
        if disabled:  # topic consumption settings (DISABLED, EXCLUSIVE) narrow the consumers' patterns
            off, off_params = pattern_sql(disabled)
            predicate, params = f"({predicate} AND NOT {off})", [*params, *off_params]
        if exclusive:
            only, only_params = pattern_sql(exclusive)
            predicate, params = f"({predicate} AND {only})", [*params, *only_params]

        def update(conn: sqlite3.Connection) -> int:
            conn.execute(
                f"UPDATE jobs SET target = NULL WHERE state = 1 AND target = ? AND NOT {predicate}",
                [target, *params],
            )
            return conn.execute(
                f"UPDATE jobs SET target = ? WHERE state = 1 AND target IS NULL AND {predicate}",
                [target, *params],
            ).rowcount

        return await self.journal.write(update)

    async def reassign_queues(self, queue_for_topic: Any) -> int:
        """Move QUEUED jobs to the queue `queue_for_topic(topic)` names; returns how many moved."""

        def update(conn: sqlite3.Connection) -> int:
            topics = [r[0] for r in conn.execute("SELECT DISTINCT topic FROM jobs WHERE state = 1")]
            moved = 0
            for topic in topics:
                queue = queue_for_topic(topic)
                moved += conn.execute(
                    "UPDATE jobs SET queue = ? WHERE state = 1 AND topic = ? AND queue != ?",
                    (queue, topic, queue),
                ).rowcount
            return moved

        return await self.journal.write(update)

    # --- progress reported by running consumers (thread-safe, fire and forget) ---------------------

    def _progress_event(self, conn: sqlite3.Connection, job_id: str, now_us: int, message: str = "") -> None:
        row = conn.execute(
            "SELECT topic, queue, retry_count, progress_total, progress_done, eta_us, target FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        self._recorder.event(
            EventType.PROGRESS,
            now_us,
            job_id,
            row[0],
            row[1],
            JobState.ACTIVE,
            row[2],
            message,
            (row[3] or 0, row[4] or 0, row[5]),
            target=row[6],
        )

    def report_progress(
        self,
        job_id: str,
        attempt: int,
        now_us: int,
        *,
        total: int | None = None,
        increment: int = 0,
        eta_us: int | None = None,
    ) -> None:
        """Set the total steps (resets done), add done steps, or set the ETA of a running attempt.

        Without an explicit ETA, one is estimated from the time per step so far.
        """

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT progress_total, progress_done, started_us FROM jobs WHERE id = ? AND state = 2 AND attempt = ?",
                (job_id, attempt),
            ).fetchone()
            if row is None:
                return
            steps, done, started = row[0] or 0, row[1] or 0, row[2] or now_us
            if total is not None:
                steps, done = total, 0
            done = min(done + increment, steps) if steps else done + increment
            eta = eta_us
            if eta is None and steps and done:
                eta = started + (now_us - started) * steps // done
            conn.execute(
                "UPDATE jobs SET progress_total = ?, progress_done = ?, eta_us = coalesce(?, eta_us) WHERE id = ?",
                (steps, done, eta, job_id),
            )
            self._progress_event(conn, job_id, now_us)

        self.journal.submit_nowait(update)

    def append_log(self, job_id: str, attempt: int, now_us: int, message: str, max_lines: int) -> None:
        """Add a log line to a running attempt's job, keeping the newest `max_lines`."""

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "UPDATE jobs SET log_count = log_count + 1 WHERE id = ? AND state = 2 AND attempt = ? "
                "RETURNING seq, log_count",
                (job_id, attempt),
            ).fetchone()
            if row is None:
                return
            seq, count = row
            conn.execute(
                "INSERT INTO job_log (job_seq, line, time_us, message) VALUES (?, ?, ?, ?)",
                (seq, count, now_us, message),
            )
            conn.execute("DELETE FROM job_log WHERE job_seq = ? AND line <= ?", (seq, count - max_lines))
            self._progress_event(conn, job_id, now_us, message)

        self.journal.submit_nowait(update)

    def set_property(self, job_id: str, attempt: int, name: str, value: object, max_bytes: int) -> None:
        """Set one property of a running attempt's job."""
        encoded = json.dumps(value_to_json(value, f"property {name!r}"), separators=(",", ":"))
        path = '$."' + name + '"'

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET properties = json_set(coalesce(properties, '{}'), ?, json(?)) "
                "WHERE id = ? AND state = 2 AND attempt = ? "
                "AND length(json_set(coalesce(properties, '{}'), ?, json(?))) <= ?",
                (path, encoded, job_id, attempt, path, encoded, max_bytes),
            )

        self.journal.submit_nowait(update)

    # --- user operations ----------------------------------------------------------------------

    def _forward_control(self, conn: sqlite3.Connection, job_id: str, kind: int) -> None:
        """Offloading: queue a stop or remove request for the target of a job this node (its
        origin) offloaded, in the transaction that stopped or removed it here."""
        local = self._recorder.local_instance
        if local is None:
            return
        row = conn.execute(
            "SELECT target, epoch FROM jobs WHERE id = ? AND origin = ? AND target IS NOT NULL AND target != ?",
            (job_id, local, local),
        ).fetchone()
        if row is not None:
            conn.execute(
                "INSERT INTO outbox (peer, kind, job_id, epoch) VALUES (?, ?, ?, ?)",
                (row[0], kind, job_id, row[1]),
            )
            self._recorder.outbox_writes += 1

    async def stop(self, job_id: str, now_us: int) -> Job:
        """QUEUED -> STOPPED; ACTIVE -> stop requested; finished -> FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = self._require(conn, job_id)
            if job.state is JobState.QUEUED:
                conn.execute(
                    "UPDATE jobs SET state = 4, finished_us = ?, result_message = 'stopped by a user' WHERE id = ?",
                    (now_us, job_id),
                )
                self._recorder.event(
                    EventType.STOPPED,
                    now_us,
                    job.id,
                    job.topic,
                    job.queue,
                    JobState.STOPPED,
                    job.retry_count,
                    "stopped by a user",
                )
            elif job.state is JobState.ACTIVE:
                conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise FailedPrecondition(
                    f"job {job_id} is already finished ({job.state.name}); nothing to stop"
                )
            self._forward_control(conn, job_id, OUTBOX_STOP)
            return self._require(conn, job_id)

        return await self.journal.write(update)

    async def remove(self, job_id: str, now_us: int) -> Job | None:
        """QUEUED/ACTIVE -> DROPPED (returns the job); a history entry is deleted (returns None)."""

        def update(conn: sqlite3.Connection) -> Job | None:
            job = self._require(conn, job_id)
            if job.state.is_finished:
                seq = conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
                _delete_jobs(conn, [seq])
                self._recorder.event(
                    EventType.REMOVED,
                    now_us,
                    job.id,
                    job.topic,
                    job.queue,
                    job.state,
                    job.retry_count,
                    "deleted from history",
                )
                return None
            conn.execute(
                "UPDATE jobs SET state = 7, finished_us = ?, result_message = 'removed by a user' WHERE id = ?",
                (now_us, job_id),
            )
            self._recorder.event(
                EventType.REMOVED,
                now_us,
                job.id,
                job.topic,
                job.queue,
                JobState.DROPPED,
                job.retry_count,
                "removed by a user",
            )
            self._forward_control(conn, job_id, OUTBOX_REMOVE)
            return self._require(conn, job_id)

        return await self.journal.write(update)

    async def retry(self, job_id: str, target: str | None, queue: str, now_us: int) -> Job:
        """A finished job -> QUEUED with retry count 0; otherwise FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = self._require(conn, job_id)
            if not job.state.is_finished:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state.name}, not finished; only history can be retried"
                )
            conn.execute(
                "UPDATE jobs SET state = 1, retry_count = 0, due_us = ?, target = ?, queue = ?, started_us = NULL, "
                "finished_us = NULL, result_message = '', stop_requested = 0, output_size = 0, "
                "progress_total = NULL, progress_done = NULL, eta_us = NULL WHERE id = ?",
                (now_us, target, queue, job_id),
            )
            conn.execute(
                "DELETE FROM payloads WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?) AND kind = ?",
                (job_id, PAYLOAD_OUTPUT),
            )
            self._recorder.event(
                EventType.ADDED, now_us, job.id, job.topic, queue, JobState.QUEUED, 0, "retried by a user"
            )
            return self._require(conn, job_id)

        return await self.journal.write(update)

    async def clear_queue(self, queue: str, now_us: int) -> int:
        """Drop every QUEUED job of `queue`; returns how many."""
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "UPDATE jobs SET state = 7, finished_us = ?, result_message = 'removed: queue cleared' "
                "WHERE state = 1 AND queue = ? RETURNING id, topic, retry_count",
                (now_us, queue),
            ).fetchall()
            for job_id, topic, retries in rows:
                recorder.event(
                    EventType.REMOVED,
                    now_us,
                    job_id,
                    topic,
                    queue,
                    JobState.DROPPED,
                    retries,
                    "queue cleared",
                )
            return len(rows)

        return await self.journal.write(update)

    async def purge(
        self, states: Sequence[JobState], finished_before_us: int | None, keep_newest: int, batch: int = 5000
    ) -> int:
        """Delete finished jobs in `states` that finished before the cutoff, keeping the newest (by creation)."""
        if any(not s.is_finished for s in states):
            raise InvalidArgument(
                "only history states (SUCCEEDED, STOPPED, GIVEN_UP, ERROR, DROPPED) can be purged"
            )
        state_list = ", ".join(str(int(s)) for s in states)
        age = "AND finished_us < ?" if finished_before_us is not None else ""
        params: list[Any] = [finished_before_us] if finished_before_us is not None else []
        # "Newest" is by creation (seq), which the (state, seq) index walks backwards; the
        # oldest rows come first when only age counts, so each batch stops early.
        if keep_newest:
            select = (
                f"SELECT seq FROM jobs WHERE state IN ({state_list}) {age} ORDER BY seq DESC LIMIT ? OFFSET ?"
            )
            select_params = [*params, batch, keep_newest]
        else:
            select = f"SELECT seq FROM jobs WHERE state IN ({state_list}) {age} LIMIT ?"
            select_params = [*params, batch]

        def delete(conn: sqlite3.Connection) -> int:
            seqs = [r[0] for r in conn.execute(select, select_params)]
            _delete_jobs(conn, seqs)
            return len(seqs)

        total = 0
        while True:
            deleted = await self.journal.write(delete)
            total += deleted
            if deleted < batch:
                return total

    @staticmethod
    def _require(conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r} on this node")
        return row_to_job(row)
