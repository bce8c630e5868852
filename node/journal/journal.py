"""The SQLite journal: the durable record of every job on this node.

Writes go through one `JournalWriter` (group commit); reads run on a small pool of
read-only connections in threads (WAL lets them run beside the writer), so nothing here
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from node.errors import FailedPrecondition, InvalidArgument, JobNotFound, Unavailable
from node.jobs.lifecycle import after_attempt
from node.jobs.model import HISTORY_STATES, Job, JobState, Outcome
from node.journal.connection import Durability, open_connection
from node.journal.schema import migrate
from node.journal.writer import JournalWriter
from node.templates import Template, templates_to_sql
from node.topics import TopicPattern

T = TypeVar("T")

PAYLOAD_INPUT = 1
PAYLOAD_OUTPUT = 2

_COLUMNS = (
    "seq, id, topic, properties, state, queue, origin, target, retry_count, max_retries, attempt, "
    "created_us, due_us, started_us, finished_us, result_message, payload_size, output_size, stop_requested"
)


def _row_to_job(row: Sequence[Any]) -> Job:
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

    def as_committed(self) -> Job:
        """The job exactly as `Journal.add_jobs` inserts this record (QUEUED; no payload bytes)."""
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
        )


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
    """What a consumer reported for one attempt of a job."""

    job_id: str
    attempt: int
    outcome: Outcome
    message: str
    retry_delay_us: int
    output: bytes | None = None


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


class Journal:
    """Durable job storage of one node. Open with `Journal.open`, close with `close`."""

    def __init__(self, path: Path, durability: Durability, writer: JournalWriter, readers: int) -> None:
        self.path = path
        self.durability = durability
        self._writer = writer
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="journal-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: Path, durability: Durability = Durability.NORMAL, readers: int = 2) -> Journal:
        """Open (creating and migrating as needed) the journal at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_connection(path, durability)
        migrate(conn)
        writer = JournalWriter(conn)
        writer.start()
        return cls(path, durability, writer, readers)

    def close(self) -> None:
        """Finish pending writes and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()

    @property
    def commit_count(self) -> int:
        """Transactions committed so far (for statistics and benchmarks)."""
        return self._writer.commits

    # --- plumbing --------------------------------------------------------------------------

    async def write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` in the next group commit."""
        return await self._writer.submit(operation)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` on a reader connection in the reader pool."""
        if self._closed:
            raise Unavailable("the journal is closed (the node is shutting down)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_with_connection, operation)

    def _read_with_connection(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self.path, self.durability, readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return operation(conn)

    # --- metadata --------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        """A value from the node's metadata table."""
        row = await self.read(lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value."""
        await self.write(
            lambda c: c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # --- adding and reading jobs -------------------------------------------------------------

    async def add_jobs(self, records: Sequence[NewJobRecord]) -> None:
        """Insert jobs atomically (all or none); returns after the commit."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO jobs (id, topic, properties, state, queue, origin, target, max_retries, "
                "created_us, due_us, payload_size) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
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
                    )
                    for r in records
                ],
            )
            with_payload = [r for r in records if r.payload]
            if with_payload:
                conn.executemany(
                    "INSERT INTO payloads (job_seq, kind, data) SELECT seq, ?, ? FROM jobs WHERE id = ?",
                    [(PAYLOAD_INPUT, r.payload, r.id) for r in with_payload],
                )

        await self.write(insert)

    async def get_job(self, job_id: str, *, include_payloads: bool = False) -> Job:
        """The job with `job_id`, or JobNotFound."""

        def select(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} on this node")
            job = _row_to_job(row)
            if include_payloads:
                payloads = dict(conn.execute("SELECT kind, data FROM payloads WHERE job_seq = ?", (row[0],)))
                job = _with_payloads(job, payloads.get(PAYLOAD_INPUT), payloads.get(PAYLOAD_OUTPUT))
            return job

        return await self.read(select)

    async def get_payload(self, job_id: str) -> bytes | None:
        """The input payload of a job (None if it has none)."""
        row = await self.read(
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
                f"SELECT {_COLUMNS} FROM jobs WHERE {page_where} ORDER BY seq {order} LIMIT ?",
                [*page_params, query.limit + 1],
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM jobs WHERE {base_where}", params).fetchone()[0]
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            token = encode_page_token(rows[-1][0]) if more and rows else ""
            return JobPage([_row_to_job(r) for r in rows], int(total), token)

        return await self.read(select)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = await self.read(
            lambda c: c.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        )
        return {JobState(state): count for state, count in rows}

    # --- running jobs ---------------------------------------------------------------------------

    async def claim(self, target: str, queue: str, now_us: int, limit: int) -> list[Job]:
        """Move up to `limit` due QUEUED jobs of `queue` assigned to `target` to ACTIVE."""

        def update(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"UPDATE jobs SET state = 2, attempt = attempt + 1, started_us = ?, target = ? "
                f"WHERE seq IN (SELECT seq FROM jobs WHERE state = 1 AND target = ? AND queue = ? "
                f"AND due_us <= ? ORDER BY due_us, seq LIMIT ?) RETURNING {_COLUMNS}",
                (now_us, target, target, queue, now_us, limit),
            ).fetchall()
            rows.sort(key=lambda r: (r[12], r[0]))
            return [_row_to_job(r) for r in rows]

        return await self.write(update)

    async def next_due_us(self, target: str, queue: str) -> int | None:
        """When the earliest QUEUED job of `queue` assigned to `target` is due (None if none)."""
        row = await self.read(
            lambda c: c.execute(
                "SELECT min(due_us) FROM jobs WHERE state = 1 AND target = ? AND queue = ?", (target, queue)
            ).fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    async def end_attempts(self, reports: Sequence[AttemptReport], now_us: int) -> list[Job | None]:
        """Apply consumer results; a report for an attempt that is no longer current gives None."""

        def apply(conn: sqlite3.Connection) -> list[Job | None]:
            return [self._end_attempt(conn, report, now_us) for report in reports]

        return await self.write(apply)

    @staticmethod
    def _end_attempt(conn: sqlite3.Connection, report: AttemptReport, now_us: int) -> Job | None:
        row = conn.execute(
            "SELECT seq, retry_count, max_retries, stop_requested FROM jobs "
            "WHERE id = ? AND state = 2 AND attempt = ?",
            (report.job_id, report.attempt),
        ).fetchone()
        if row is None:  # stopped, removed or re-queued meanwhile: this attempt is stale
            return None
        seq, retry_count, max_retries, stop_requested = row
        transition = after_attempt(
            report.outcome,
            retry_count=retry_count,
            max_retries=max_retries,
            stop_requested=bool(stop_requested),
        )
        if transition.state is JobState.QUEUED:
            updated = conn.execute(
                f"UPDATE jobs SET state = 1, retry_count = ?, due_us = ?, result_message = ? "
                f"WHERE seq = ? RETURNING {_COLUMNS}",
                (transition.retry_count, now_us + report.retry_delay_us, report.message, seq),
            ).fetchone()
        else:
            output_size = len(report.output) if report.output else 0
            updated = conn.execute(
                f"UPDATE jobs SET state = ?, retry_count = ?, finished_us = ?, result_message = ?, output_size = ? "
                f"WHERE seq = ? RETURNING {_COLUMNS}",
                (int(transition.state), transition.retry_count, now_us, report.message, output_size, seq),
            ).fetchone()
            if report.output:
                conn.execute(
                    "INSERT OR REPLACE INTO payloads (job_seq, kind, data) VALUES (?, ?, ?)",
                    (seq, PAYLOAD_OUTPUT, report.output),
                )
        return _row_to_job(updated)

    async def requeue_active(self, job_ids: Sequence[tuple[str, int]]) -> int:
        """Put ACTIVE attempts back to QUEUED unchanged (graceful shutdown); returns how many."""

        def update(conn: sqlite3.Connection) -> int:
            count = 0
            for job_id, attempt in job_ids:
                count += conn.execute(
                    "UPDATE jobs SET state = 1 WHERE id = ? AND state = 2 AND attempt = ?", (job_id, attempt)
                ).rowcount
            return count

        return await self.write(update)

    async def recover_after_crash(self, target: str, now_us: int) -> tuple[int, int, int]:
        """Handle jobs left ACTIVE by a crash: re-queue them with retry count + 1.

        A job whose stop was requested becomes STOPPED; one that has used up its retries
        (it may be what crashed the node) becomes GIVEN_UP. Returns (requeued, stopped, given_up).
        """

        def update(conn: sqlite3.Connection) -> tuple[int, int, int]:
            message = "the node stopped while the job was running"
            stopped = conn.execute(
                "UPDATE jobs SET state = 4, finished_us = ?, result_message = ? "
                "WHERE state = 2 AND target = ? AND stop_requested = 1",
                (now_us, message, target),
            ).rowcount
            given_up = conn.execute(
                "UPDATE jobs SET state = 5, retry_count = retry_count + 1, finished_us = ?, result_message = ? "
                "WHERE state = 2 AND target = ? AND max_retries >= 0 AND retry_count + 1 > max_retries",
                (now_us, message + "; no retries left", target),
            ).rowcount
            requeued = conn.execute(
                "UPDATE jobs SET state = 1, retry_count = retry_count + 1, due_us = ?, result_message = ? "
                "WHERE state = 2 AND target = ?",
                (now_us, message, target),
            ).rowcount
            return requeued, stopped, given_up

        return await self.write(update)

    async def assign_unassigned(self, target: str, patterns: Sequence[TopicPattern]) -> int:
        """Assign QUEUED jobs without a target whose topic matches `patterns` to `target`.

        QUEUED jobs assigned to `target` whose topic no longer matches (their consumer is gone,
        e.g. after a restart with other consumers) are unassigned again: they wait for a
        consumer instead of failing their retries away. Returns how many were assigned.
        """
        predicate, params = pattern_sql(patterns)

        def update(conn: sqlite3.Connection) -> int:
            conn.execute(
                f"UPDATE jobs SET target = NULL WHERE state = 1 AND target = ? AND NOT {predicate}",
                [target, *params],
            )
            return conn.execute(
                f"UPDATE jobs SET target = ? WHERE state = 1 AND target IS NULL AND {predicate}",
                [target, *params],
            ).rowcount

        return await self.write(update)

    # --- user operations ----------------------------------------------------------------------

    async def stop(self, job_id: str, now_us: int) -> Job:
        """QUEUED -> STOPPED; ACTIVE -> stop requested; finished -> FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = self._require(conn, job_id)
            if job.state is JobState.QUEUED:
                sql = "UPDATE jobs SET state = 4, finished_us = ?, result_message = 'stopped by a user' WHERE id = ?"
                conn.execute(sql, (now_us, job_id))
            elif job.state is JobState.ACTIVE:
                conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise FailedPrecondition(
                    f"job {job_id} is already finished ({job.state.name}); nothing to stop"
                )
            return self._require(conn, job_id)

        return await self.write(update)

    async def remove(self, job_id: str, now_us: int) -> Job | None:
        """QUEUED/ACTIVE -> DROPPED (returns the job); a history entry is deleted (returns None)."""

        def update(conn: sqlite3.Connection) -> Job | None:
            job = self._require(conn, job_id)
            if job.state.is_finished:
                conn.execute(
                    "DELETE FROM payloads WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?)", (job_id,)
                )
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                return None
            conn.execute(
                "UPDATE jobs SET state = 7, finished_us = ?, result_message = 'removed by a user' WHERE id = ?",
                (now_us, job_id),
            )
            return self._require(conn, job_id)

        return await self.write(update)

    async def retry(self, job_id: str, target: str | None, now_us: int) -> Job:
        """A finished job -> QUEUED with retry count 0; otherwise FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = self._require(conn, job_id)
            if not job.state.is_finished:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state.name}, not finished; only history can be retried"
                )
            conn.execute(
                "UPDATE jobs SET state = 1, retry_count = 0, due_us = ?, target = ?, started_us = NULL, "
                "finished_us = NULL, result_message = '', stop_requested = 0, output_size = 0 WHERE id = ?",
                (now_us, target, job_id),
            )
            conn.execute(
                "DELETE FROM payloads WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?) AND kind = ?",
                (job_id, PAYLOAD_OUTPUT),
            )
            return self._require(conn, job_id)

        return await self.write(update)

    @staticmethod
    def _require(conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r} on this node")
        return _row_to_job(row)


def _with_payloads(job: Job, payload: bytes | None, output: bytes | None) -> Job:
    from dataclasses import replace

    return replace(job, payload=payload or b"", output_payload=output or b"")


ALL_STATES = tuple(JobState)
HISTORY = HISTORY_STATES
