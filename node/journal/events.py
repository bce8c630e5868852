"""Reading and purging the journal's job events (they are written by `Recorder`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

from node.journal.journal import Journal
from node.journal.recorder import EVENT_COLUMNS, row_to_event
from node.model.events import EventFilter, EventType, JobEvent

READ_BATCH = 1000
HISTORY_PAGE = 50
"""Events of one job per page of its history."""
MAX_SEQ = 2**63 - 1
_PROGRESS = int(EventType.PROGRESS)
COALESCE_BELOW = 100
COALESCE_S = 0.005
PURGE_BATCH = 10_000
"""The most events one transaction of a purge deletes (see EventStore.purge)."""


@dataclass(frozen=True)
class EventBatch:
    """Events read in one go; `gap_until_seq` is set when older requested events were purged."""

    events: list[JobEvent]
    last_seq: int
    """Every event up to this seq that matches the filter is in this batch or an earlier one."""
    head_seq: int
    """The newest committed event when the batch was read (may be beyond `last_seq`)."""
    gap_until_seq: int = 0


class EventStore:
    """The job events of one node."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def oldest_seq(self) -> int:
        """The oldest retained event's seq (head + 1 when none is retained)."""
        row = await self.journal.read(
            lambda c: c.execute("SELECT min(seq) AS seq FROM job_events").fetchone()
        )
        return int(row["seq"]) if row and row["seq"] is not None else self.journal.head_seq + 1

    async def read_after(self, after_seq: int, limit: int = READ_BATCH) -> list[JobEvent]:
        """Committed events with seq > `after_seq`, oldest first."""

        def select(conn: sqlite3.Connection) -> list[JobEvent]:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM job_events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            return [row_to_event(r) for r in rows]

        return await self.journal.read(select)

    async def job_history(
        self, job_id: str, before_seq: int = 0, limit: int = HISTORY_PAGE
    ) -> list[JobEvent]:
        """The retained lifecycle events of one job (every type but PROGRESS), newest first: at
        most `limit`, those with seq below `before_seq` when it is positive (the next page
        starts below the last one's seq).

        Reads a range of the `job_events_job` index (schema v8): the cost is the page's, not
        the number of events in the journal. PROGRESS events are not indexed (a job may have a
        million): the job's row holds its current progress, WatchJobs streams them.
        """
        if limit <= 0:
            return []
        upper = before_seq if before_seq > 0 else MAX_SEQ

        def select(conn: sqlite3.Connection) -> list[JobEvent]:
            # `type != 3` repeats the index's condition: SQLite uses a partial index only then.
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND type != {_PROGRESS} AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (job_id, upper, limit),
            ).fetchall()
            return [row_to_event(r) for r in rows]

        return await self.journal.read(select)

    async def watch(self, after_seq: int, event_filter: EventFilter) -> AsyncIterator[EventBatch]:
        """History after `after_seq` (-1: from now), then live events, in batches; ends when closed.

        The journal is the source of truth: each batch is read from it after a commit
        notification, so nothing is missed or repeated however slowly the consumer reads,
        as long as retention keeps the events: a batch whose predecessors were purged before
        this stream read them says so in `gap_until_seq`.
        """
        journal = self.journal
        last = journal.head_seq if after_seq < 0 else after_seq
        gap = 0
        if 0 <= after_seq < journal.head_seq:
            # Events after `after_seq` existed; if the oldest retained one is later, some were
            # purged (when none is retained, oldest is head + 1: all of them were).
            oldest = await self.oldest_seq()
            if oldest > after_seq + 1:
                gap = oldest
                last = oldest - 1  # the stream resumes from the retained events
        first = True
        while not journal.closed:
            events = await self.read_after(last)
            if events:
                if events[0].seq > last + 1:
                    # Seqs have no holes but those retention makes: a reader this far behind
                    # lost the events in between, and must be told.
                    gap = events[0].seq
                last = events[-1].seq
                matching = [e for e in events if event_filter.matches(e)]
                if matching or first or gap:
                    yield EventBatch(matching, last, journal.head_seq, gap)
                    first, gap = False, 0
                if len(events) == READ_BATCH:
                    continue
            elif first:
                yield EventBatch([], last, journal.head_seq, gap)
                first, gap = False, 0
            await journal.wait_for_events(last)
            if len(events) < COALESCE_BELOW:
                # Under load, commits come every few ms with a handful of events each; waiting a
                # moment lets one read and one stream message carry many of them (each message
                # costs the node ~0.1-0.2 ms), at a bounded cost in latency.
                await asyncio.sleep(COALESCE_S)

    async def purge(self, max_age_before_us: int | None, max_count: int, batch: int = PURGE_BATCH) -> int:
        """Delete events older than the cutoff and beyond the newest `max_count` (0: no limit).

        At most `batch` events go per transaction, so a purge after a burst (a million jobs
        added within one purge interval) never holds the single writer for long."""

        def delete(conn: sqlite3.Connection) -> tuple[int, bool]:
            """(events deleted, whether the purge is complete)."""
            # `max(seq)` alone is one index seek; inside a FROM-subquery SQLite scanned the
            # whole table for it (a second per million events, on the writer).
            newest = conn.execute("SELECT max(seq) FROM job_events").fetchone()[0]
            if newest is None:
                return 0, True
            # Remember the newest seq first: if the purge empties the table, a restart must
            # not hand out these numbers again.
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('events_seq_floor', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(newest),),
            )
            oldest = conn.execute("SELECT min(seq) FROM job_events").fetchone()[0]
            window = oldest + batch  # one transaction deletes seqs below it at most: `batch` events
            bound = oldest  # seqs below `bound` go: none yet
            if max_count > 0:
                bound = max(bound, newest - max_count + 1)
            more = False  # old events may go on past the window
            if max_age_before_us is not None:
                # Events are appended in time order: the first one young enough bounds the purge,
                # found by scanning from the oldest, within the window (no time index to
                # maintain on every insert).
                young = conn.execute(
                    "SELECT seq FROM job_events WHERE seq < ? AND time_us >= ? ORDER BY seq LIMIT 1",
                    (window, max_age_before_us),
                ).fetchone()
                if young is not None:
                    bound = max(bound, young[0])
                elif window <= newest:
                    bound, more = max(bound, window), True
                else:
                    bound = newest + 1
            end = min(bound, window)
            deleted = conn.execute("DELETE FROM job_events WHERE seq < ?", (end,)).rowcount
            return int(deleted), end == bound and not more

        total = 0
        while True:
            deleted, complete = await self.journal.write(delete)
            total += deleted
            if complete:
                return total
