"""Claims: the queue runners' three strategies for starting QUEUED jobs (QUEUED -> ACTIVE).

Every claim runs in one write operation that moves the rows to ACTIVE, records their STARTED
events and waiting-time statistics, and says when the next remaining job is due, so a runner
needs no second read per claim.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from node.journal.records import ACTIVE, COLUMNS, QUEUED, JobRow, JobStorePart, row_to_job
from node.model.events import EventType
from node.model.job import Job, JobState

Claimed = tuple[list[Job], int | None]
"""Started jobs, and when the next remaining job is due (None: none, or `limit` were taken)."""

# An attempt's number is its retry count + 1 (the API's `attempt`): a claim that found no consumer
# (released) or a graceful stop's re-queue spends no retry, so the next claim reuses the number.
_START = (
    f"UPDATE jobs SET state = {ACTIVE}, attempt = retry_count + 1, started_us = ?, progress_total = NULL, "
    "progress_done = NULL, eta_us = NULL"
)


class Claims(JobStorePart):
    """Starting jobs, one method per queue type."""

    async def claim(self, target: str, queue: str, now_us: int, limit: int) -> Claimed:
        """Start up to `limit` due QUEUED jobs of `queue` assigned to `target`, earliest due first."""

        def update(conn: sqlite3.Connection) -> Claimed:
            rows = conn.execute(
                f"{_START} WHERE seq IN (SELECT seq FROM jobs WHERE state = {QUEUED} AND target = ? "
                f"AND queue = ? AND due_us <= ? ORDER BY due_us, seq LIMIT ?) RETURNING {COLUMNS}",
                (now_us, target, queue, now_us, limit),
            ).fetchall()
            started = [JobRow._make(r) for r in rows]
            started.sort(key=lambda r: (r.due_us, r.seq))  # RETURNING has no order: due, then seq
            jobs = self._started(started, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue)

        return await self.journal.write(update)

    async def claim_ordered(self, target: str, queue: str, now_us: int) -> Claimed:
        """Start the oldest QUEUED job of an ordered queue if it is due.

        Returns (started jobs, due time of a head that is not due yet). A failed job keeps its
        place at the head, so it blocks the queue until its retry delay has passed.
        """

        def update(conn: sqlite3.Connection) -> Claimed:
            head = conn.execute(
                f"SELECT seq, due_us FROM jobs WHERE state = {QUEUED} AND target = ? AND queue = ? "
                "ORDER BY seq LIMIT 1",
                (target, queue),
            ).fetchone()
            if head is None:
                return [], None
            if head["due_us"] > now_us:
                return [], int(head["due_us"])
            return self._start_rows(conn, [head["seq"]], target, now_us), None

        return await self.journal.write(update)

    async def claim_round_robin(
        self, target: str, queue: str, now_us: int, limit: int, last_topic: str
    ) -> Claimed:
        """Start up to `limit` due jobs, one topic after another, starting after `last_topic`."""

        def update(conn: sqlite3.Connection) -> Claimed:
            seqs = [
                r["seq"]
                for r in conn.execute(
                    "SELECT seq FROM (SELECT seq, topic, row_number() OVER (PARTITION BY topic ORDER BY due_us, seq) "
                    f"AS turn FROM jobs WHERE state = {QUEUED} AND target = ? AND queue = ? AND due_us <= ?) "
                    "ORDER BY turn, topic <= ?, topic LIMIT ?",
                    (target, queue, now_us, last_topic, limit),
                )
            ]
            jobs = self._start_rows(conn, seqs, target, now_us)
            return jobs, self._next_due(conn, jobs, limit, target, queue)

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
        conn: sqlite3.Connection, jobs: list[Job], limit: int, target: str, queue: str
    ) -> int | None:
        """When the earliest QUEUED job left is due; only looked up when the claim took fewer than
        `limit` (otherwise the runner claims again at once), in the claim's own transaction."""
        if len(jobs) == limit:
            return None
        row = conn.execute(
            f"SELECT min(due_us) AS due FROM jobs WHERE state = {QUEUED} AND target = ? AND queue = ?",
            (target, queue),
        ).fetchone()
        return None if row["due"] is None else int(row["due"])
