"""The transfer outbox: the one place outbox rows are written, and the journal hook that writes
them in the transaction of the change they announce.

A row names a job, not a copy of it: its frame is built from the job's row when it is sent
(`frames.py`), so a report always carries the newest state. Rows are deleted once the peer
acknowledged them (`Outbox.drop`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum

from node.journal.journal import Journal
from node.journal.records import ACTIVE, QUEUED, UNFINISHED, NewJobRecord
from node.model.events import EventType

log = logging.getLogger(__name__)

# Job events that change what the origin of an offloaded job sees: a report for each.
_REPORTED_EVENTS = f"{EventType.STARTED:d} AND {EventType.STOPPED:d}"


class OutboxKind(IntEnum):
    """What an outbox row asks its peer to do (outbox.kind)."""

    JOB = 1
    """Origin -> target: run this job (again, under a new epoch after a reassignment)."""
    REPORT = 2
    """Target -> origin: the job's current state (its events, its result, or that it was handed back)."""
    STOP = 3
    """Origin -> target: a user stopped the job at its origin."""
    REMOVE = 4
    """Origin -> target: a user removed the job at its origin."""


class Outbox:
    """This node's outbox, and its journal hook (node.journal.hooks.JournalHook).

    Create it on the node's loop and register it (`register`) before any queue runner starts.
    The hook methods run on the journal's writer thread inside the transaction (see hooks.py);
    listeners (`add_listener`) are called on the loop after each commit that enqueued rows.
    """

    def __init__(self, journal: Journal, local_id: str) -> None:
        self.journal = journal
        self.local_id = local_id
        self._loop = asyncio.get_running_loop()
        self._listeners: list[Callable[[], None]] = []
        self._enqueued = False  # writer thread: rows added since the last commit
        self._has_foreign_jobs: bool | None = None
        """Writer thread: whether a job of another origin may still change here (None: not yet
        looked up). Until one exists the per-commit report query is skipped, so a node that only
        runs its own jobs pays nothing for offloading."""

    def register(self) -> None:
        """Become the journal's hook: from the next write on, every change enqueues what it must."""
        self.journal.register_hook(self)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` on the loop after each commit that enqueued rows (quick, must not raise)."""
        self._listeners.append(listener)

    # --- enqueueing (writer thread, inside a transaction) ---

    def enqueue(
        self, conn: sqlite3.Connection, kind: OutboxKind, items: Iterable[tuple[str, str, int]]
    ) -> None:
        """Queue (peer, job id, epoch) items of `kind`, in the caller's transaction."""
        rows = [(peer, int(kind), job_id, epoch) for peer, job_id, epoch in items]
        if rows:
            conn.executemany("INSERT INTO outbox (peer, kind, job_id, epoch) VALUES (?, ?, ?, ?)", rows)
            self._enqueued = True

    def discard_jobs(self, conn: sqlite3.Connection, peer: str) -> None:
        """Forget the jobs queued for `peer` (they are reassigned under a new epoch)."""
        conn.execute(f"DELETE FROM outbox WHERE peer = ? AND kind = {OutboxKind.JOB:d}", (peer,))

    def foreign_job_added(self) -> None:
        """A job of another origin now exists here (writer thread): report its changes."""
        self._has_foreign_jobs = True

    # --- JournalHook (writer thread, inside the transaction) ---

    def jobs_added(self, conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> None:
        """Queue each job added for a remote target; note jobs that came from other origins."""
        local = self.local_id
        self.enqueue(
            conn, OutboxKind.JOB, ((r.target, r.id, 0) for r in records if r.target not in (None, local))
        )
        if any(r.origin != local for r in records):
            self._has_foreign_jobs = True

    def job_cancelled(self, conn: sqlite3.Connection, job_id: str, *, removed: bool) -> None:
        """Forward a user's stop or remove of a job this node offloaded to its target."""
        row = conn.execute(
            "SELECT target, epoch FROM jobs WHERE id = ? AND origin = ? AND target IS NOT NULL AND target != ?",
            (job_id, self.local_id, self.local_id),
        ).fetchone()
        if row is not None:
            kind = OutboxKind.REMOVE if removed else OutboxKind.STOP
            self.enqueue(conn, kind, [(row["target"], job_id, row["epoch"])])

    def events_recorded(self, conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
        """Queue a report to the origin of every job of another origin that changed."""
        if self._has_foreign_jobs is None:
            self._has_foreign_jobs = has_foreign_jobs(conn, self.local_id)
        if not self._has_foreign_jobs:
            return
        inserted = conn.execute(
            "INSERT INTO outbox (peer, kind, job_id, epoch, progress) "
            f"SELECT j.origin, {OutboxKind.REPORT:d}, j.id, j.epoch, e.type = {EventType.PROGRESS:d} "
            "FROM job_events e JOIN jobs j ON j.id = e.job_id "
            f"WHERE e.seq BETWEEN ? AND ? AND e.type BETWEEN {_REPORTED_EVENTS} AND j.origin != ? ORDER BY e.seq",
            (first_seq, last_seq, self.local_id),
        ).rowcount
        if inserted:
            self._enqueued = True

    def keeps_finished(self, conn: sqlite3.Connection, job_seq: int) -> bool:
        """A job of another origin stays until its report is sent (its row makes the report)."""
        row = conn.execute("SELECT origin FROM jobs WHERE seq = ?", (job_seq,)).fetchone()
        return row is not None and row["origin"] != self.local_id

    def committed(self) -> None:
        """Wake the listeners (on the loop) when the commit enqueued rows."""
        if self._enqueued:
            self._enqueued = False
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("outbox listener failed")

    # --- reading and acknowledging (on the loop) ---

    async def peers(self) -> list[str]:
        """Instance ids this node has undelivered outbox items for."""
        rows = await self.journal.read(lambda c: c.execute("SELECT DISTINCT peer FROM outbox").fetchall())
        return [r["peer"] for r in rows]

    async def pending(self) -> int:
        """Undelivered outbox items, all peers."""
        row = await self.journal.read(lambda c: c.execute("SELECT count(*) AS n FROM outbox").fetchone())
        return int(row["n"])

    async def drop(self, peer: str, upto_seq: int) -> None:
        """Forget the items for `peer` the peer acknowledged."""
        await self.journal.write(
            lambda c: c.execute("DELETE FROM outbox WHERE peer = ? AND seq <= ?", (peer, upto_seq)).rowcount
        )


FOREIGN_QUEUED_HERE = f"state = {QUEUED} AND origin != target AND target = ?1"
"""Jobs of other origins QUEUED for this node (?1: its instance id). Matches the partial index
jobs_foreign_queued (schema v9) term for term, so SQLite may use it."""

# A job of another origin here is QUEUED for this node, QUEUED without a target (to be handed
# back), or ACTIVE here: one index search each, so this node's own backlog is never visited
# (a probe of every unfinished job checked each of them: 0.2 s at 1,000,000, on the writer).
_FOREIGN_PROBES = (
    f"SELECT 1 FROM jobs INDEXED BY jobs_foreign_queued WHERE {FOREIGN_QUEUED_HERE} LIMIT 1",
    f"SELECT 1 FROM jobs INDEXED BY jobs_unassigned WHERE state = {QUEUED} AND target IS NULL AND origin < ?1 LIMIT 1",
    f"SELECT 1 FROM jobs INDEXED BY jobs_unassigned WHERE state = {QUEUED} AND target IS NULL AND origin > ?1 LIMIT 1",
    f"SELECT 1 FROM jobs INDEXED BY jobs_remote WHERE state IN {UNFINISHED} AND target = ?1 AND state = {ACTIVE} "
    "AND origin != ?1 LIMIT 1",
)


def has_foreign_jobs(conn: sqlite3.Connection, local_id: str) -> bool:
    """Whether a job of another origin is unfinished in this journal."""
    return any(conn.execute(probe, (local_id,)).fetchone() is not None for probe in _FOREIGN_PROBES)
