"""The origin's once-a-second placement round (hand back, assign) costs what changed, not the
backlog: every statement it runs on a journal with waiting jobs nobody consumes is an index
search, never a scan of the jobs (a full 1,000,000-job backlog used to cost ~65% of an idle
node's writer). Checked by the query plans of the statements the round really runs, on a real
journal file; the figures are in docs/benchmarks.md (benchmarks/run-backlog)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from node.instance import now_us
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.transfer.store import TransferStore

LOCAL = "origin-instance"


def waiting(count: int, origin: str, topic: str) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(str(uuid.uuid4()), topic, None, "main", origin, None, 3, created, None)
        for _ in range(count)
    ]


def plan(path: Path, statement: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]


async def test_a_placement_round_searches_indexes_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, LOCAL)
        await jobs.add_jobs(waiting(500, LOCAL, "nobody/consumes"))
        await jobs.add_jobs(waiting(500, LOCAL, "remote/consumes"))
        await jobs.add_jobs(waiting(3, "another-origin", "nobody/here"))  # to be handed back
        statements: list[str] = []
        await journal.write(lambda conn: conn.set_trace_callback(statements.append))

        handed_back = await store.hand_back(now_us())
        moved = await store.assign(
            lambda topic, _queue: "peer" if topic.startswith("remote/") else None, now_us()
        )
        await journal.write(lambda conn: conn.set_trace_callback(None))
    finally:
        journal.close()

    assert (handed_back, moved) == (3, 500)
    round_statements = [s for s in statements if "FROM jobs" in s or "UPDATE jobs" in s]
    assert round_statements
    for statement in round_statements:
        steps = plan(path, statement)
        assert not [s for s in steps if s.startswith("SCAN jobs") or "jobs_state" in s], (statement, steps)
