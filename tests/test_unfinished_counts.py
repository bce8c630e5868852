"""The counts of waiting and running jobs by queue and topic (GetStatistics, ListQueues, the
metrics' breakdown) equal a GROUP BY over the jobs themselves, and count the waiting ones from
the entries of one index in its own order: no job row is read for them and nothing is sorted
(the GROUP BY over the jobs read every row: 1.1 s at 1,000,000 queued). On a real journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from node.instance import now_us
from node.journal import counts
from node.journal.connection import Durability, open_connection
from node.journal.counts import unfinished_counts
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.journal.schema import migrate
from node.model.job import JobState
from tests.support.journal_work import queued_records

LOCAL = "local-instance"


def queued(count: int, topic: str, queue: str, target: str | None, origin: str = LOCAL) -> list[NewJobRecord]:
    return queued_records([topic] * count, origin=origin, target=target, queue=queue)


def by_rows(conn: sqlite3.Connection) -> list[tuple[str, str, JobState, int]]:
    rows = conn.execute(
        "SELECT queue, topic, state, count(*) FROM jobs WHERE state IN (1, 2) GROUP BY queue, topic, state"
    )
    return sorted((queue, topic, JobState(state), n) for queue, topic, state, n in rows)


async def test_the_counts_are_those_of_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        store = JobStore(journal)
        await store.add_jobs(queued(5, "a/x", "main", LOCAL))
        await store.add_jobs(queued(3, "a/x", "main", None))  # the same topic, unassigned
        await store.add_jobs(queued(2, "a/x", "main", "peer-a"))  # and offloaded
        await store.add_jobs(queued(4, "b/y", "other", LOCAL, origin="origin-b"))
        await store.add_jobs(queued(6, "c/z", "main", LOCAL))
        started, _ = await store.claim(LOCAL, "main", now_us(), 3)  # ACTIVE now
        dropped = queued(2, "c/z", "main", LOCAL)
        await store.add_jobs(dropped)
        for job in dropped:  # finished: not counted
            await store.remove(job.id, now_us())
    finally:
        journal.close()

    with sqlite3.connect(path) as conn:
        expected = by_rows(conn)
        got = sorted(unfinished_counts(conn))
    assert len(started) == 3
    assert got == expected
    assert {(q, t, s) for q, t, s, _ in got} >= {
        ("main", "a/x", JobState.QUEUED),
        ("other", "b/y", JobState.QUEUED),
    }


def test_waiting_jobs_are_counted_from_the_index_alone(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "journal.db", Durability.NORMAL)
    try:
        migrate(conn)
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {counts._QUEUED}")]
        program = conn.execute(f"EXPLAIN {counts._QUEUED}").fetchall()
    finally:
        conn.close()
    assert plan == ["SCAN jobs USING INDEX jobs_ready_topic"]  # in the index's order: no TEMP B-TREE
    # (addr, opcode, p1, p2, p3, p4, ...): an index cursor opens with its key info as p4.
    index_cursor = next(r[2] for r in program if r[1] == "OpenRead" and str(r[5]).startswith("k("))
    columns = [r for r in program if r[1] == "Column"]
    assert columns
    assert all(r[2] == index_cursor for r in columns)  # every value read comes from the index
