"""One job's event history costs its page, not the journal: schema v8 indexes `job_events` by
job id (every event but PROGRESS); `EventStore.job_history` pages a job's lifecycle events newest
first through that index (never a scan of every event), and the migration indexes the events of
an existing journal. Figures: docs/benchmarks.md ("A job's event history")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from node.instance import now_us
from node.journal.connection import Durability, open_connection
from node.journal.events import EventStore
from node.journal.ids import JobIdGenerator
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.journal.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from node.model.events import EventType
from node.model.job import JobState

HISTORY_QUERY = (
    "SELECT * FROM job_events WHERE job_id = 'x' AND type != 3 AND seq < 99 ORDER BY seq DESC LIMIT 51"
)
SEARCH = "SEARCH job_events USING INDEX job_events_job (job_id=? AND rowid<?)"


def plan(conn: sqlite3.Connection, statement: str, params: tuple[object, ...] = ()) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params)]


def test_migration_to_v8_indexes_the_events_an_existing_journal_holds(tmp_path: Path) -> None:
    # Given a journal of schema v7 with events of two jobs, PROGRESS (3) and others
    conn = open_connection(tmp_path / "old.sqlite", Durability.NORMAL)
    for version, script in enumerate(MIGRATIONS[:7], start=1):
        conn.executescript(script + f";INSERT OR REPLACE INTO meta VALUES ('schema_version', '{version}')")
    conn.executemany(
        "INSERT INTO job_events (seq, type, time_us, job_id, topic, queue, state, retry_count) "
        "VALUES (?, ?, 1, ?, 't', 'main', 2, 0)",
        [(seq, 3 if seq % 2 else 2, "x" if seq % 3 == 0 else "y") for seq in range(1, 301)],
    )
    # (where one job's newest events are a walk over every event, newest first)
    assert plan(conn, HISTORY_QUERY) == ["SEARCH job_events USING INTEGER PRIMARY KEY (rowid<?)"]

    # When it is migrated
    assert migrate(conn) == SCHEMA_VERSION >= 8

    # Then one job's history is a search of the new index, with every old event but PROGRESS in it
    steps = plan(conn, HISTORY_QUERY)
    assert steps == [SEARCH], steps
    rows = conn.execute(
        "SELECT seq FROM job_events INDEXED BY job_events_job WHERE job_id = 'x' AND type != 3"
    ).fetchall()
    assert [r[0] for r in rows] == list(range(6, 301, 6))
    conn.close()


def test_the_index_leaves_the_reports_query_of_the_outbox_on_its_seq_range(tmp_path: Path) -> None:
    """The outbox joins the events of each commit to their jobs by id: the new index must not
    turn that into a walk of the index (it reads the commit's seq range, then jobs by id)."""
    conn = open_connection(tmp_path / "new.sqlite", Durability.NORMAL)
    migrate(conn)
    steps = plan(
        conn,
        "SELECT j.origin FROM job_events e JOIN jobs j ON j.id = e.job_id "
        "WHERE e.seq BETWEEN ? AND ? AND e.type BETWEEN 2 AND 8 AND j.origin != ?",
        (1, 2, "me"),
    )
    assert steps[0].startswith("SEARCH e USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"), steps
    assert any("j USING INDEX sqlite_autoindex_jobs_1 (id=?)" in s for s in steps), steps
    conn.close()


async def test_a_jobs_history_pages_newest_first_through_the_index_without_progress(tmp_path: Path) -> None:
    # Given a real journal: 200 jobs added (an ADDED event each), then one of them failing and
    # starting again 65 times, with PROGRESS events in between, interleaved with another job's
    journal = Journal.open(tmp_path / "journal.sqlite", readers=1)  # one reader: the trace sees all
    try:
        ids = JobIdGenerator().next_ids(200)
        created = now_us()
        await JobStore(journal).add_jobs(
            [NewJobRecord(i, "h/t", None, "main", "me", None, 3, created, None) for i in ids]
        )
        mine, other = ids[17], ids[18]

        def attempt(n: int) -> None:
            for job_id in (mine, other):
                for kind, state in (
                    (EventType.STARTED, JobState.ACTIVE),
                    (EventType.PROGRESS, JobState.ACTIVE),
                    (EventType.FAILED, JobState.QUEUED),
                ):
                    journal.recorder.event(kind, now_us(), job_id, "h/t", "main", state, n, "", (9, 1, None))

        for n in range(65):

            def write(_conn: sqlite3.Connection, n: int = n) -> None:
                attempt(n)

            await journal.write(write)
        expected = await journal.read(
            lambda c: [
                r["seq"]
                for r in c.execute("SELECT seq FROM job_events WHERE job_id = ? AND type != 3", (mine,))
            ]
        )
        assert len(expected) == 131
        store = EventStore(journal)
        statements: list[str] = []
        await journal.read(lambda c: c.set_trace_callback(statements.append))

        # When the history is read page by page, each from below the last page's seq
        pages = [await store.job_history(mine, 0, 50)]
        while len(pages[-1]) == 50:
            pages.append(await store.job_history(mine, pages[-1][-1].seq, 50))
        await journal.read(lambda c: c.set_trace_callback(None))
    finally:
        journal.close()

    # Then every lifecycle event of the job comes once, newest first, in bounded pages
    assert [len(p) for p in pages] == [50, 50, 31]
    seen = [e.seq for p in pages for e in p]
    assert seen == sorted(expected, reverse=True)
    assert {e.job_id for p in pages for e in p} == {mine}
    assert EventType.PROGRESS not in {e.type for p in pages for e in p}
    assert (pages[0][0].type, pages[0][0].retry_count) == (EventType.FAILED, 64)
    assert pages[-1][-1].type == EventType.ADDED
    # ... and each page was a search of the index, never a scan of the events
    reads = [s for s in statements if "FROM job_events" in s]
    assert len(reads) == 3
    with sqlite3.connect(tmp_path / "journal.sqlite") as conn:
        for statement in reads:
            assert plan(conn, statement) == [SEARCH], statement


async def test_an_empty_or_unknown_history_is_an_empty_page(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite")
    try:
        store = EventStore(journal)
        assert await store.job_history("no-such-job") == []
        assert await store.job_history("no-such-job", 0, 0) == []
    finally:
        journal.close()
