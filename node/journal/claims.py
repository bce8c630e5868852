"""Claims: the queue runners' three strategies for starting QUEUED jobs (QUEUED -> ACTIVE).

Every claim runs in one write operation that moves the rows to ACTIVE, records their STARTED
events and waiting-time statistics, and says when the next remaining job is due, so a runner
needs no second read per claim.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.journal.records import ACTIVE, COLUMNS, QUEUED, JobRow, JobStorePart, row_to_job
from node.model.events import EventType
from node.model.job import Job, JobState

Claimed = tuple[list[Job], int | None]
"""Started jobs, and when the next remaining job is due (None: none, or `limit` were taken)."""

Admit = Callable[[str, int], bool]
"""`admit(topic, payload_bytes)`: may the claim start one more job of this topic and input size
(a consumer slot, and room for its payload, is free)?
A job it refuses stays QUEUED; the runner claims again when capacity changes."""


@dataclass(frozen=True)
class Hold:
    """Jobs of other origins a claim leaves QUEUED for now: a target starts a job of another
    origin only while its lease on that origin holds (node/transfer/lease.py). Normally empty:
    then the claims' queries are unchanged and cost nothing more."""

    origins: frozenset[str] = frozenset()
    """Origins whose jobs wait (their lease lapsed; they are being asked)."""
    local_id: str | None = None
    """Set: every job of another origin waits (the leases are not known yet, at start)."""

    def sql(self) -> tuple[str, tuple[str, ...]]:
        """A condition to AND to a claim's WHERE, and its parameters."""
        if self.local_id is not None:
            return " AND origin = ?", (self.local_id,)
        if self.origins:
            return f" AND origin NOT IN ({', '.join('?' * len(self.origins))})", tuple(sorted(self.origins))
        return "", ()


NO_HOLD = Hold()

_SCAN_ROWS = 1000
"""How many due rows past the first `limit` a claim with an `admit` looks at for admitted ones."""

# jobs.attempt counts claims: it fences the results of earlier claims (a stale attempt, even
# one with the same number after a user's retry). The API's attempt number is retry_count + 1
# (`Job.attempt`): a claim that found no consumer, or a graceful stop's re-queue, spends none.
_START = (
    f"UPDATE jobs SET state = {ACTIVE}, attempt = attempt + 1, started_us = ?, progress_total = NULL, "
    "progress_done = NULL, eta_us = NULL"
)


class Claims(JobStorePart):
    """Starting jobs, one method per queue type."""

    async def claim(
        self,
        target: str,
        queue: str,
        now_us: int,
        limit: int,
        admit: Admit | None = None,
        hold: Hold = NO_HOLD,
    ) -> Claimed:
        """Start up to `limit` due QUEUED jobs of `queue` assigned to `target`, earliest due first
        (only those `admit` admits, if given; none that `hold` holds)."""
        held, held_args = hold.sql()

        def update(conn: sqlite3.Connection) -> Claimed:
            if admit is not None:
                rows = conn.execute(
                    f"SELECT seq, topic, payload_size FROM jobs WHERE state = {QUEUED} AND target = ? "
                    f"AND queue = ? AND due_us <= ?{held} ORDER BY due_us, seq LIMIT ?",
                    (target, queue, now_us, *held_args, limit + _SCAN_ROWS),
                ).fetchall()
                seqs, refused = _admitted(rows, admit, limit)
                jobs = self._start_rows(conn, seqs, target, now_us)
                after = now_us if refused else None
                return jobs, self._next_due(conn, jobs, limit, target, queue, after, hold)
            rows = conn.execute(
                f"{_START} WHERE seq IN (SELECT seq FROM jobs WHERE state = {QUEUED} AND target = ? "
                f"AND queue = ? AND due_us <= ?{held} ORDER BY due_us, seq LIMIT ?) RETURNING {COLUMNS}",
                (now_us, target, queue, now_us, *held_args, limit),
            ).fetchall()
            started = [JobRow._make(r) for r in rows]
            started.sort(key=lambda r: (r.due_us, r.seq))  # RETURNING has no order: due, then seq
            jobs = self._started(started, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue, hold=hold)

        return await self.journal.write(update)

    async def claim_ordered(
        self, target: str, queue: str, now_us: int, admit: Admit | None = None, hold: Hold = NO_HOLD
    ) -> Claimed:
        """Start the oldest QUEUED job of an ordered queue if it is due.

        Returns (started jobs, due time of a head that is not due yet). A failed job keeps its
        place at the head, so it blocks the queue until its retry delay has passed. A held job
        (`hold`) is skipped: the head is the oldest job not held.
        """
        held, held_args = hold.sql()

        def update(conn: sqlite3.Connection) -> Claimed:
            head = conn.execute(
                f"SELECT seq, due_us, topic, payload_size FROM jobs WHERE state = {QUEUED} AND target = ? "
                f"AND queue = ?{held} "
                "ORDER BY seq LIMIT 1",
                (target, queue, *held_args),
            ).fetchone()
            if head is None:
                return [], None
            if head["due_us"] > now_us:
                return [], int(head["due_us"])
            if admit is not None and not admit(head["topic"], head["payload_size"]):
                return [], None  # its consumer has no free slot: claimed again when one frees
            return self._start_rows(conn, [head["seq"]], target, now_us), None

        return await self.journal.write(update)

    async def claim_round_robin(
        self,
        target: str,
        queue: str,
        now_us: int,
        limit: int,
        last_topic: str,
        admit: Admit | None = None,
        hold: Hold = NO_HOLD,
    ) -> Claimed:
        """Start up to `limit` due jobs, one topic after another, starting after `last_topic`
        (only those `admit` admits, if given; none that `hold` holds)."""
        wanted = limit if admit is None else limit + _SCAN_ROWS

        def update(conn: sqlite3.Connection) -> Claimed:
            rows = _round_robin_rows(conn, target, queue, now_us, wanted, last_topic, hold)
            if admit is None:
                seqs, refused = [r["seq"] for r in rows], False
            else:
                seqs, refused = _admitted(rows, admit, limit)
            jobs = self._start_rows(conn, seqs, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue, now_us if refused else None, hold)

        return await self.journal.write(update)

    def _start_rows(
        self, conn: sqlite3.Connection, seqs: Sequence[int], target: str, now_us: int
    ) -> list[Job]:
        """Start the jobs at rows `seqs`, in that order."""
        if not seqs:
            return []
        rows = conn.execute(
            f"{_START}, target = ? WHERE seq IN ({', '.join('?' * len(seqs))}) RETURNING {COLUMNS}",
            (now_us, target, *seqs),
        ).fetchall()
        order = {seq: index for index, seq in enumerate(seqs)}
        started = sorted((JobRow._make(r) for r in rows), key=lambda r: order[r.seq])
        return self._started(started, target, now_us)

    def _started(self, rows: list[JobRow], target: str, now_us: int) -> list[Job]:
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
        conn: sqlite3.Connection,
        jobs: list[Job],
        limit: int,
        target: str,
        queue: str,
        after_us: int | None = None,
        hold: Hold = NO_HOLD,
    ) -> int | None:
        """When the earliest QUEUED job left is due; only looked up when the claim took fewer than
        `limit` (otherwise the runner claims again at once), in the claim's own transaction.
        `after_us`: jobs due by then were refused for want of a consumer slot; only later ones
        count (the refused ones are claimed again when capacity changes). Held jobs do not count
        either: the lease wakes the runners when it lifts a hold."""
        if len(jobs) == limit:
            return None
        held, held_args = hold.sql()
        row = conn.execute(
            f"SELECT min(due_us) AS due FROM jobs WHERE state = {QUEUED} AND target = ? AND queue = ? "
            f"AND due_us > ?{held}",
            (target, queue, -1 if after_us is None else after_us, *held_args),
        ).fetchone()
        return None if row["due"] is None else int(row["due"])


def _round_robin_rows(
    conn: sqlite3.Connection, target: str, queue: str, now_us: int, wanted: int, last_topic: str, hold: Hold
) -> list[sqlite3.Row]:
    """Up to `wanted` due rows of `queue` in round-robin order: each topic's first job (earliest
    due, then oldest), topics in name order starting after `last_topic`, then each one's second...

    One skip over `jobs_ready_topic` finds the topics waiting, and each topic gives at most
    `wanted` rows (no row past a topic's `wanted`-th can be among the first `wanted`): the work
    is the topics' and the claim's, not the queue's backlog (ranking every due job of the queue
    cost 138-211 ms a claim at 100,000 of them)."""
    held, held_args = hold.sql()
    turns: list[tuple[int, bool, str, sqlite3.Row]] = []
    topic = conn.execute(_FIRST_TOPIC, (target, queue)).fetchone()
    while topic is not None:
        name = topic["topic"]
        rows = conn.execute(
            f"SELECT seq, topic, payload_size FROM jobs INDEXED BY jobs_ready_topic WHERE state = {QUEUED} "
            f"AND target = ? AND queue = ? AND topic = ? AND due_us <= ?{held} ORDER BY due_us, seq LIMIT ?",
            (target, queue, name, now_us, *held_args, wanted),
        ).fetchall()
        turns.extend((turn, name <= last_topic, name, row) for turn, row in enumerate(rows))
        topic = conn.execute(_NEXT_TOPIC, (target, queue, name)).fetchone()
    turns.sort(key=lambda t: t[:3])
    return [row for *_, row in turns[:wanted]]


_FIRST_TOPIC = (
    f"SELECT topic FROM jobs INDEXED BY jobs_ready_topic WHERE state = {QUEUED} AND target = ? AND queue = ? "
    "ORDER BY topic LIMIT 1"
)
_NEXT_TOPIC = (
    f"SELECT topic FROM jobs INDEXED BY jobs_ready_topic WHERE state = {QUEUED} AND target = ? AND queue = ? "
    "AND topic > ? ORDER BY topic LIMIT 1"
)


def _admitted(rows: Sequence[sqlite3.Row], admit: Admit, limit: int) -> tuple[list[int], bool]:
    """The seqs of up to `limit` rows `admit` admits, in order, and whether it refused any."""
    seqs: list[int] = []
    refused = False
    for row in rows:
        if len(seqs) == limit:
            break
        if admit(row["topic"], row["payload_size"]):
            seqs.append(row["seq"])
        else:
            refused = True
    return seqs, refused
