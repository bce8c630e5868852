"""Event retention costs what it deletes: a purge with nothing to delete does the same work over
300 events as over 3,000 (it used to scan the whole table for max(seq) on every round, a second
per million events on the single writer), and a large purge goes in transactions of at most one
batch, so other writes get the writer in between. On a real journal file, counted by SQLite's
own instruction counter on the writer's connection."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from node.instance import now_us
from node.journal.events import EventStore
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord


def jobs(count: int) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(str(uuid.uuid4()), "nobody/consumes", None, "main", "me", None, 3, created, None)
        for _ in range(count)
    ]


class WriterProbe:
    """Counts the SQLite instructions and the transactions the writer's connection runs."""

    def __init__(self) -> None:
        self.instructions = 0
        self.deletes: list[str] = []

    def _tick(self) -> int:
        self.instructions += 1
        return 0  # go on

    def install(self, conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(self._tick, 1)
        conn.set_trace_callback(lambda s: self.deletes.append(s) if s.startswith("DELETE") else None)

    @staticmethod
    def remove(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(None, 1)
        conn.set_trace_callback(None)


async def purge_work(
    journal: Journal, events: EventStore, max_count: int, batch: int, max_age_before_us: int | None = None
) -> tuple[int, WriterProbe]:
    """What `events.purge` deleted, and what it cost the writer."""
    probe = WriterProbe()
    await journal.write(probe.install)
    try:
        deleted = await events.purge(max_age_before_us, max_count, batch=batch)
    finally:
        await journal.write(WriterProbe.remove)
    return deleted, probe


def seqs(path: Path) -> tuple[int, int, int, str | None]:
    """The lowest and highest event seq, the events' count, and the remembered floor."""
    with sqlite3.connect(path) as conn:
        low, high, count = conn.execute("SELECT min(seq), max(seq), count(*) FROM job_events").fetchone()
        floor = conn.execute("SELECT value FROM meta WHERE key = 'events_seq_floor'").fetchone()
    return low, high, count, floor[0] if floor else None


@contextlib.contextmanager
def journal_in(tmp_path: Path) -> Iterator[tuple[Path, Journal, JobStore, EventStore]]:
    """A real journal file with its job and event stores, closed after the block."""
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        yield path, journal, JobStore(journal), EventStore(journal)
    finally:
        journal.close()


async def test_a_purge_with_nothing_to_delete_costs_the_same_at_any_size(tmp_path: Path) -> None:
    with journal_in(tmp_path) as (_path, journal, store, events):
        await store.add_jobs(jobs(300))
        small = await purge_work(journal, events, 100_000, 1000)
        await store.add_jobs(jobs(2700))
        large = await purge_work(journal, events, 100_000, 1000)
    assert small[0] == large[0] == 0
    # 2,700 more events: the same work (a scan would be 10x).
    assert large[1].instructions <= small[1].instructions * 1.2, (
        small[1].instructions,
        large[1].instructions,
    )


async def test_a_large_purge_goes_in_batches_and_keeps_the_newest(tmp_path: Path) -> None:
    with journal_in(tmp_path) as (path, journal, store, events):
        await store.add_jobs(jobs(2500))
        before = seqs(path)
        deleted, probe = await purge_work(journal, events, 300, 1000)
        after = seqs(path)
        again, _ = await purge_work(journal, events, 300, 1000)
    assert before == (1, 2500, 2500, None)
    assert deleted == 2200
    assert len(probe.deletes) == 3  # 1,000 + 1,000 + 200: one transaction each
    assert after == (2201, 2500, 300, "2500")
    assert again == 0


async def test_an_age_purge_goes_in_batches_and_stops_at_the_first_young_event(tmp_path: Path) -> None:
    with journal_in(tmp_path) as (path, journal, store, events):
        await store.add_jobs(jobs(2500))
        cutoff = now_us()
        await store.add_jobs(jobs(10))
        deleted, probe = await purge_work(journal, events, 0, 1000, max_age_before_us=cutoff)
        after = seqs(path)
        nothing, _ = await purge_work(journal, events, 0, 1000)  # no limit: nothing goes
    assert deleted == 2500
    assert len(probe.deletes) == 3
    assert after == (2501, 2510, 10, "2510")
    assert nothing == 0
