"""FindJobs with property templates costs what matches, not the journal's size: on a real journal
of thousands of jobs, the page and the total count of a topic + template query and of a
template-only query search the property index (`job_properties`, schema v7) and read jobs by seq,
never scanning `jobs`; and the index holds exactly the properties of the jobs whatever wrote them
(insert, set_property, purge). Figures: docs/benchmarks.md (benchmarks/run-queries)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from node.instance import now_us
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.property_index import property_rows
from node.journal.records import JobQuery, NewJobRecord, delete_jobs
from node.model.job import JobState
from node.templates import Condition, Operator, Template

LOCAL = "origin-instance"
JOBS = 3_000


def records(count: int) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(
            str(uuid.uuid4()),
            f"plans/t{i % 5}",
            json.dumps(
                {
                    "group": f"g{i % 50}",
                    "n": i,
                    "ratio": i / 7,
                    "flag": i % 2 == 0,
                    "tags": ["a", i % 3],
                    "at": {"$t": 1_700_000_000_000_000 + i},
                    "blob": {"$b": "AAE="},
                },
                separators=(",", ":"),
            ),
            "main",
            LOCAL,
            None,
            3,
            created,
            None,
        )
        for i in range(count)
    ]


def plan(path: Path, statement: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]


def equal(name: str, value: object) -> Template:
    return Template((Condition.create(name, Operator.EQUAL, value),))


async def test_template_queries_search_the_property_index_never_scan_jobs(tmp_path: Path) -> None:
    # Given a real journal of thousands of jobs with typed properties, mostly finished
    path = tmp_path / "journal.db"
    journal = Journal.open(path, readers=1)  # one reader: the trace sees every statement
    try:
        jobs = JobStore(journal)
        await jobs.add_jobs(records(JOBS))
        await journal.write(
            lambda c: c.execute(f"UPDATE jobs SET state = {JobState.SUCCEEDED:d} WHERE seq % 4 != 0")
        )
        history = tuple(s for s in JobState if s.is_finished)
        both = Template(
            (Condition.create("group", Operator.EQUAL, "g7"), Condition.create("n", Operator.LESS, 2000))
        )
        queries = [
            JobQuery(history, topic="plans/t2", templates=(equal("group", "g7"),)),
            JobQuery(tuple(JobState), templates=(equal("group", "g7"),), newest_first=True),
            JobQuery(history, templates=(both,), after_seq=100),
            JobQuery(tuple(JobState), templates=(equal("flag", True), equal("tags", ["a", 1]))),
            JobQuery(
                tuple(JobState),
                topic="plans/t1",
                templates=(
                    Template((Condition.create("at", Operator.GREATER, datetime(2023, 11, 14, tzinfo=UTC)),)),
                ),
            ),
        ]
        statements: list[str] = []
        await journal.read(lambda c: c.set_trace_callback(statements.append))
        # When the queries run through the node's own FindJobs path
        pages = [await jobs.find_jobs(q) for q in queries]
        await journal.read(lambda c: c.set_trace_callback(None))
    finally:
        journal.close()

    # Then the counts are right (over all pages) ...
    def history_job(i: int) -> bool:
        return (i + 1) % 4 != 0  # seq = i + 1

    expected = [
        sum(1 for i in range(JOBS) if history_job(i) and i % 5 == 2 and i % 50 == 7),
        sum(1 for i in range(JOBS) if i % 50 == 7),
        sum(1 for i in range(JOBS) if history_job(i) and i % 50 == 7 and i < 2000),
        sum(1 for i in range(JOBS) if i % 2 == 0 or i % 3 == 1),
        sum(1 for i in range(JOBS) if i % 5 == 1),
    ]
    assert [p.total_count for p in pages] == expected
    # ... and every page and count starts from the property index and reads jobs only by seq
    finds = [s for s in statements if "FROM" in s and ("jobs" in s or "job_properties" in s)]
    assert len(finds) == 2 * len(queries)
    for statement in finds:
        steps = plan(path, statement)
        assert not [s for s in steps if s.startswith("SCAN jobs")], (statement, steps)
        assert any("job_properties USING PRIMARY KEY" in s for s in steps), (statement, steps)
        if "JOIN jobs" in statement:  # a count over all states needs only the index
            assert any("jobs USING INTEGER PRIMARY KEY" in s for s in steps), (statement, steps)


def index_rows(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The index as stored, and as computed afresh from every job's JSON."""
    with sqlite3.connect(path) as conn:
        stored = conn.execute(
            "SELECT name, kind, value, topic, job_seq FROM job_properties ORDER BY 1, 2, 3, 4, 5"
        )
        fresh = conn.execute(
            f"SELECT * FROM ({property_rows('jobs.properties', 'jobs.seq', 'jobs.topic', 'jobs, ')}) ORDER BY 1, 2, 3, 4, 5"
        )
        return stored.fetchall(), fresh.fetchall()


async def test_the_property_index_follows_every_write_of_properties(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        added = await jobs.add_jobs(records(200))
        await jobs.add_jobs(
            [NewJobRecord(str(uuid.uuid4()), "plans/none", None, "main", LOCAL, None, 3, 1, None)]
        )
        stored, fresh = index_rows(path)
        assert stored == fresh
        assert len(stored) == 200 * 7

        # a running consumer sets a property (a new one, and one that changes type)
        first = await jobs.get_job(added[0].id)
        await journal.write(
            lambda c: c.execute(
                f"UPDATE jobs SET state = {JobState.ACTIVE:d}, attempt = 1 WHERE seq = ?", (first.seq,)
            )
        )
        jobs.set_property(added[0].id, 1, "extra", 5, 4096)
        jobs.set_property(added[0].id, 1, "group", 3.5, 4096)
        await journal.write(lambda c: None)  # the writer runs in order: both are committed
        found = await jobs.find_jobs(JobQuery(tuple(JobState), templates=(equal("group", 3.5),)))
        assert [j.id for j in found.jobs] == [added[0].id]
        assert (
            await jobs.find_jobs(JobQuery(tuple(JobState), templates=(equal("group", "g0"),)))
        ).total_count == 3

        # purge: the jobs and their index rows go together
        seqs = [(await jobs.get_job(a.id)).seq for a in added[:50]]
        await journal.write(lambda c: delete_jobs(c, seqs))
        stored, fresh = index_rows(path)
        assert stored == fresh
        assert len(stored) == 150 * 7
    finally:
        journal.close()


async def test_template_pages_come_in_seq_order_both_ways(tmp_path: Path) -> None:
    # The page reads the index's seqs in order and stops after limit + 1 matches: walking every
    # page, oldest or newest first, gives each match once, in order, without or with a topic.
    journal = Journal.open(tmp_path / "journal.db")
    try:
        jobs = JobStore(journal)
        await jobs.add_jobs(records(JOBS))
        await journal.write(
            lambda c: c.execute(f"UPDATE jobs SET state = {JobState.SUCCEEDED:d} WHERE seq % 3 = 0")
        )
        for topic, newest_first in [(None, False), (None, True), ("plans/t2", False), ("plans/t2", True)]:
            seen: list[int] = []
            after: int | None = None
            while True:
                page = await jobs.find_jobs(
                    JobQuery(
                        (JobState.QUEUED,),
                        topic=topic,
                        templates=(equal("group", "g7"), equal("group", "g12")),
                        limit=7,
                        after_seq=after,
                        newest_first=newest_first,
                    )
                )
                seen += [j.seq for j in page.jobs]
                if page.next_after_seq is None:
                    break
                after = page.next_after_seq
            wanted = [
                i + 1
                for i in range(JOBS)
                if i % 50 in (7, 12) and (i + 1) % 3 != 0 and (topic is None or i % 5 == 2)
            ]
            assert seen == (wanted[::-1] if newest_first else wanted), (topic, newest_first)
            assert page.total_count == len(wanted)
    finally:
        journal.close()
