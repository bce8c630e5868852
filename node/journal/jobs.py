"""Job storage: adding jobs and reading them, and which of them this node runs.

`JobStore` is the one object the engine uses; its parts live in one module per concept:
rows and records (`records`), claims by the queue runners (`claims`), attempts and crash
recovery (`attempts`), user controls and purge (`controls`). Each write runs inside the
writer's group commit; the events and statistics it records (`recorder`) and what the
journal hook adds (`hooks`) commit with it or not at all.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from node.errors import JobmeshError, JobNotFound
from node.journal.attempts import Attempts
from node.journal.claims import Claims
from node.journal.controls import Controls
from node.journal.counts import unfinished_counts
from node.journal.payloads import read_payload, store_input_payloads
from node.journal.property_index import index_jobs_after, top_seq
from node.journal.records import (
    COLUMNS,
    PAYLOAD_INPUT,
    PAYLOAD_OUTPUT,
    QUEUED,
    AddedJob,
    JobPage,
    JobQuery,
    NewJobRecord,
    distinct_values,
    pattern_sql,
    row_to_job,
    state_list,
)
from node.model.events import EventType
from node.model.job import Job, JobState, LogLine
from node.templates import templates_to_seq_sql, templates_to_sql, unsearched_sql
from node.topics import TopicPattern

ASSIGN_WINDOW = 50_000
"""Job seqs one write of `assign_unassigned` looks at (see there)."""


class JobStore(Claims, Attempts, Controls):
    """The jobs of one node in its journal."""

    # --- adding ----------------------------------------------------------------------------

    def insert(self, conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> list[AddedJob]:
        """Insert jobs inside a running write operation (see `add_jobs`)."""
        recorder = self._recorder
        added: list[AddedJob] = []
        fresh: list[NewJobRecord] = []
        top = top_seq(conn)
        by_key: dict[str, str] = {}
        for r in records:
            if r.dedup_key:
                existing = by_key.get(r.dedup_key)
                if existing is None:
                    row = conn.execute("SELECT id FROM jobs WHERE dedup_key = ?", (r.dedup_key,)).fetchone()
                    existing = row["id"] if row else None
                if existing is not None:
                    added.append(AddedJob(existing, True, 0))
                    continue
                by_key[r.dedup_key] = r.id
            fresh.append(r)
            seq = recorder.event(EventType.ADDED, r.created_us, r.id, r.topic, r.queue, JobState.QUEUED, 0)
            added.append(AddedJob(r.id, False, seq))
        conn.executemany(
            "INSERT INTO jobs (id, topic, properties, state, queue, origin, target, max_retries, created_us, "
            f"due_us, payload_size, dedup_key, retry_delay_us, timeout_us) "
            f"VALUES (?, ?, ?, {QUEUED}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        if any(r.properties_json for r in fresh):
            index_jobs_after(conn, top)
        with_payload = [r for r in fresh if r.payload]
        if with_payload:
            store_input_payloads(conn, [(r.id, r.payload) for r in with_payload if r.payload])
        if fresh:
            self._hook.jobs_added(conn, fresh)
        return added

    async def add_jobs(self, records: Sequence[NewJobRecord]) -> list[AddedJob]:
        """Insert jobs atomically (all or none); a dedup key that exists returns that job instead."""
        return await self.journal.write(lambda conn: self.insert(conn, records))

    async def add_jobs_each(self, records: Sequence[NewJobRecord]) -> list[AddedJob | Exception]:
        """`add_jobs` for jobs that stand each on its own: one operation, but a job that fails it
        refuses only itself (the others are then added again, one operation each)."""
        if not records:
            return []
        try:
            return list(await self.add_jobs(records))
        except JobmeshError as e:  # the journal failed (a full disk, a shutdown): all alike
            return [e] * len(records)
        except Exception as e:
            if len(records) == 1:
                return [e]
        # One job's row failed the operation, which stored nothing. Each job again in an operation
        # of its own, queued together: they share group commits, whose savepoints keep one job's
        # failure its own.
        again = await asyncio.gather(*(self.add_jobs([r]) for r in records), return_exceptions=True)
        outcomes: list[AddedJob | Exception] = []
        for outcome in again:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # a cancellation is no job's failure
            outcomes.append(outcome if isinstance(outcome, Exception) else outcome[0])
        return outcomes

    # --- reading ---------------------------------------------------------------------------

    async def get_job(
        self,
        job_id: str,
        *,
        include_payloads: bool = False,
        include_log: bool = False,
        inline_limit: int | None = None,
    ) -> Job:
        """The job with `job_id`, or JobNotFound; with `include_payloads`, those of its payloads
        that are at most `inline_limit` bytes (None: all) are read with it, the others not."""

        def fits(size: int) -> bool:
            return inline_limit is None or size <= inline_limit

        def select(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} on this node")
            job = row_to_job(row)
            if include_payloads:
                integrity = self.journal.integrity
                job = replace(
                    job,
                    payload=read_payload(conn, integrity, job_id, job.seq, PAYLOAD_INPUT) or b""
                    if fits(job.payload_size)
                    else None,
                    output_payload=read_payload(conn, integrity, job_id, job.seq, PAYLOAD_OUTPUT) or b""
                    if fits(job.output_payload_size)
                    else None,
                )
            if include_log:
                lines = conn.execute(
                    "SELECT time_us, message FROM job_log WHERE job_seq = ? ORDER BY line", (job.seq,)
                ).fetchall()
                job = replace(job, log=tuple(LogLine(line["time_us"], line["message"]) for line in lines))
            return job

        return await self.journal.read(select)

    async def get_payload(self, job_id: str, kind: int = PAYLOAD_INPUT) -> bytes | None:
        """The verified payload of `kind` of a job (None if it has none), or PayloadDamaged."""
        row = await self.journal.read(
            lambda c: c.execute(
                "SELECT data, crc32 FROM payloads JOIN jobs ON jobs.seq = payloads.job_seq "
                "WHERE jobs.id = ? AND kind = ?",
                (job_id, kind),
            ).fetchone()
        )
        if row is None:
            return None
        return self.journal.integrity.verify(job_id, kind, bytes(row["data"]), row["crc32"])

    async def find_jobs(self, query: JobQuery) -> JobPage:
        """One page of jobs matching `query`, with the total count over all pages."""
        if query.by_id:
            return await self._find_by_id(query)
        page_sql, page_params, count_sql, count_params = find_statements(query)

        def select(conn: sqlite3.Connection) -> JobPage:
            rows = conn.execute(page_sql, page_params).fetchall()
            total = conn.execute(count_sql, count_params).fetchone()[0]
            more = len(rows) > query.limit
            jobs = [row_to_job(r) for r in rows[: query.limit]]
            return JobPage(jobs, int(total), jobs[-1].seq if more and jobs else None)

        return await self.journal.read(select)

    async def _find_by_id(self, query: JobQuery) -> JobPage:
        """A page in id order, with the count per origin (this node's part of a topology page)."""
        where = [f"state IN {state_list(query.states)}"]
        params: list[Any] = []
        if query.topic:
            where.append("topic = ?")
            params.append(query.topic)
        template_sql, template_params = templates_to_sql(query.templates)
        where.append(template_sql)
        params += template_params
        base_where = " AND ".join(where)
        page_where, page_params = base_where, list(params)
        if query.after_id is not None:
            page_where += " AND id < ?" if query.newest_first else " AND id > ?"
            page_params.append(query.after_id)
        order = "DESC" if query.newest_first else "ASC"

        def select(conn: sqlite3.Connection) -> JobPage:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE {page_where} ORDER BY id {order} LIMIT ?",
                [*page_params, query.limit + 1],
            ).fetchall()
            more = len(rows) > query.limit
            jobs = [row_to_job(r) for r in rows[: query.limit]]
            by_origin = {
                r["origin"]: int(r["n"])
                for r in conn.execute(
                    f"SELECT origin, count(*) AS n FROM jobs WHERE {base_where} GROUP BY origin", params
                )
            }
            return JobPage(jobs, sum(by_origin.values()), jobs[-1].seq if more and jobs else None, by_origin)

        return await self.journal.read(select)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = await self.journal.read(
            lambda c: c.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetchall()
        )
        return {JobState(r["state"]): r["n"] for r in rows}

    async def live_counts(self) -> list[tuple[str, str, JobState, int]]:
        """(queue, topic, state, count) of QUEUED and ACTIVE jobs."""
        return await self.journal.read(unfinished_counts)

    # --- which jobs run here -------------------------------------------------------------

    async def assign_unassigned(
        self,
        target: str,
        patterns: Sequence[TopicPattern],
        disabled: Sequence[TopicPattern] = (),
        exclusive: Sequence[TopicPattern] = (),
        after_each: Callable[[], None] | None = None,
    ) -> int:
        """Assign QUEUED jobs without a target whose topic matches `patterns` to `target`
        (`after_each()` is called after each bounded step).

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

        def update(conn: sqlite3.Connection, low: int) -> int:
            window = (low, low + ASSIGN_WINDOW)
            conn.execute(
                f"UPDATE jobs SET target = NULL WHERE seq > ? AND seq <= ? AND state = {QUEUED} AND target = ? "
                f"AND NOT {predicate}",
                [*window, target, *params],
            )
            return conn.execute(
                f"UPDATE jobs SET target = ? WHERE seq > ? AND seq <= ? AND state = {QUEUED} AND target IS NULL "
                f"AND {predicate}",
                [target, *window, *params],
            ).rowcount

        # One write per window of job seqs: a journal of millions of jobs is reassigned in bounded
        # steps, with AddJob and claims served between them (not one write holding the writer).
        last = await self.journal.read(lambda conn: conn.execute("SELECT max(seq) FROM jobs").fetchone()[0])
        assigned = 0
        for low in range(0, last or 0, ASSIGN_WINDOW):
            assigned += await self.journal.write(functools.partial(update, low=low))
            if after_each is not None:
                after_each()
        return assigned

    async def reassign_queues(self, queue_for_topic: Callable[[str], str]) -> int:
        """Move QUEUED jobs to the queue `queue_for_topic(topic)` names; returns how many moved."""

        def update(conn: sqlite3.Connection) -> int:
            topics = queued_topics(conn)
            moved = 0
            for topic in topics:
                queue = queue_for_topic(topic)
                moved += conn.execute(
                    f"UPDATE jobs SET queue = ? WHERE state = {QUEUED} AND topic = ? AND queue != ?",
                    (queue, topic, queue),
                ).rowcount
            return moved

        return await self.journal.write(update)


def queued_topics(conn: sqlite3.Connection) -> list[str]:
    """The distinct topics of QUEUED jobs: a skip scan of jobs_topic, two seeks per topic in the
    journal, whatever the number of jobs (SELECT DISTINCT would visit every QUEUED job)."""
    return [
        topic
        for topic in distinct_values(conn, "topic")
        if conn.execute(
            f"SELECT 1 FROM jobs WHERE topic = ? AND state = {QUEUED} LIMIT 1", (topic,)
        ).fetchone()
    ]


def find_statements(query: JobQuery) -> tuple[str, list[Any], str, list[Any]]:
    """The SELECT of one page of `query` (limit + 1 rows) and the SELECT of its total count, each
    with its parameters.

    With property templates, both start from the seqs the property index `job_properties` gives
    (a search of its primary key per template) and read only those jobs by seq, so their cost is
    the number of jobs the index gives, not the size of the journal; the template conditions the
    index did not search are checked on those rows (`unsearched_sql`), so a template means
    exactly what it meant before the index.
    """
    where = [f"state IN {state_list(query.states)}"]
    params: list[Any] = []
    if query.topic:
        where.append("topic = ?")
        params.append(query.topic)
    order = "DESC" if query.newest_first else "ASC"
    everything = templates_to_seq_sql(query.templates, topic=query.topic)
    if everything is None:
        template_sql, template_params = templates_to_sql(query.templates)
        where.append(template_sql)
        params += template_params
        base_where = " AND ".join(where)
        page_where, page_params = base_where, list(params)
        if query.after_seq is not None:
            page_where += " AND seq < ?" if query.newest_first else " AND seq > ?"
            page_params.append(query.after_seq)
        return (
            f"SELECT {COLUMNS} FROM jobs WHERE {page_where} ORDER BY seq {order} LIMIT ?",
            [*page_params, query.limit + 1],
            f"SELECT count(*) FROM jobs WHERE {base_where}",
            params,
        )
    rest_sql, rest_params = unsearched_sql(query.templates)
    where.append(rest_sql)
    params += rest_params
    base_where = " AND ".join(where)
    bound = None
    if query.after_seq is not None:
        bound = ("job_seq < ?" if query.newest_first else "job_seq > ?", query.after_seq)
    page_seqs = templates_to_seq_sql(query.templates, bound, query.topic)
    assert page_seqs is not None
    # CROSS JOIN: SQLite keeps the seqs as the outer loop (never a scan of jobs checking each row).
    # The page: the seqs sorted first, in a co-routine (LIMIT -1 keeps SQLite from flattening it,
    # which would sort after reading every match), then read in that order until limit + 1 rows
    # pass; an outer ORDER BY would sort all the joined rows again (SQLite does not see that they
    # come in order), so the nested loop's order is the page's (pinned by tests/test_find_plans.py).
    page_sql = (
        f"SELECT {COLUMNS} FROM ({page_seqs[0]} ORDER BY job_seq {order} LIMIT -1) AS m "
        f"CROSS JOIN jobs ON jobs.seq = m.job_seq WHERE {base_where} LIMIT ?"
    )
    count_sql, count_params = f"SELECT count(*) FROM ({everything[0]}) AS m", list(everything[1])
    if set(query.states) != set(JobState) or rest_sql != "1":  # else the index alone counts
        count_sql += f" CROSS JOIN jobs ON jobs.seq = m.job_seq WHERE {base_where}"
        count_params += params
    return page_sql, [*page_seqs[1], *params, query.limit + 1], count_sql, count_params
