"""FindJobs and GetJob against the size of the journal's history.

Builds a real journal (`Journal.open`, `JobStore.add_jobs` in batches) of JOBS jobs on 10 topics,
each with three properties (`n` an int, `group` one of 100 strings, `kind` one of 7 strings), most
of them finished (80% SUCCEEDED, 10% ERROR, 10% left QUEUED), then times the node's own FindJobs path
(`JobStore.find_jobs` with a `JobQuery`: one page of 100 and the total count over all pages) and
GetJob (`JobStore.get_job`), the median of REPEATS runs each, and prints the query plans.

    benchmarks/run-queries [--jobs 1000000] [--repeats 9] [--keep PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node.instance import now_us
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import JobQuery, NewJobRecord
from node.model.job import JobState
from node.templates import Condition, Operator, Template

LOCAL = "origin-instance"
INSERT_BATCH = 10_000
TOPICS = 10
GROUPS = 100
HISTORY = tuple(s for s in JobState if s.is_finished)


def _topic(i: int) -> str:
    return f"bench/t{(i // 7) % TOPICS}"  # not aligned with the groups: every topic has every group


def _records(start: int, count: int) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(
            str(uuid.uuid4()),
            _topic(i),
            json.dumps({"n": i, "group": f"g{i % GROUPS}", "kind": f"k{i % 7}"}, separators=(",", ":")),
            "main",
            LOCAL,
            None,
            3,
            created,
            None,
        )
        for i in range(start, start + count)
    ]


async def fill(journal: Journal, jobs: JobStore, count: int) -> float:
    """Add `count` jobs, then finish most of them; returns the insert rate (jobs/s)."""
    began = time.perf_counter()
    for start in range(0, count, INSERT_BATCH):
        await jobs.add_jobs(_records(start, min(INSERT_BATCH, count - start)))
    rate = count / (time.perf_counter() - began)
    finished = now_us()
    await journal.write(
        lambda conn: conn.execute(
            f"UPDATE jobs SET state = CASE WHEN seq % 10 = 1 THEN {JobState.ERROR:d} "
            f"ELSE {JobState.SUCCEEDED:d} END, finished_us = ? WHERE seq % 10 != 0",
            (finished,),
        )
    )
    return rate


def _equal(name: str, value: object) -> Condition:
    return Condition.create(name, Operator.EQUAL, value)


def queries() -> dict[str, JobQuery]:
    """The FindJobs queries timed, by name (limit 100, oldest first unless named newest)."""
    group = Template((_equal("group", "g7"),))
    both = Template((_equal("group", "g7"), _equal("kind", "k3")))
    return {
        "topic + template (history)": JobQuery(HISTORY, topic="bench/t3", templates=(group,)),
        "topic + template (all states)": JobQuery(tuple(JobState), topic="bench/t3", templates=(group,)),
        "template alone (history)": JobQuery(HISTORY, templates=(group,)),
        "template, 2 conditions": JobQuery(HISTORY, templates=(both,)),
        "template, newest first": JobQuery(HISTORY, templates=(group,), newest_first=True),
        "template, range n < 5000": JobQuery(
            tuple(JobState), templates=(Template((Condition.create("n", Operator.LESS, 5000),)),)
        ),
        "state SUCCEEDED": JobQuery((JobState.SUCCEEDED,)),
        "topic + state QUEUED": JobQuery((JobState.QUEUED,), topic="bench/t3"),
    }


def _table_bytes(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """Bytes of the jobs table and of the property index (if this schema has one), by dbstat."""
    rows = conn.execute(
        "SELECT name, sum(pgsize) FROM dbstat WHERE name IN ('jobs', 'job_properties') GROUP BY name"
    ).fetchall()
    return [(row[0], int(row[1])) for row in rows]


async def _median_ms(call: Callable[[], Awaitable[Any]], repeats: int) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        began = time.perf_counter()
        result = await call()
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times), result


async def measure(path: Path, count: int, repeats: int) -> None:
    """Fill a journal at `path` (unless it holds jobs already) and print the timings."""
    began = time.perf_counter()
    journal = Journal.open(path, readers=1)  # one reader: the trace below sees every statement
    print(f"opened (and migrated if needed) in {time.perf_counter() - began:.2f} s")
    try:
        jobs = JobStore(journal)
        have = await journal.read(lambda c: c.execute("SELECT count(*) FROM jobs").fetchone()[0])
        if have == 0:
            rate = await fill(journal, jobs, count)
            print(f"filled {count:,} jobs at {rate:,.0f} jobs/s (add_jobs, batches of {INSERT_BATCH:,})")
        else:
            print(f"journal {path} holds {have:,} jobs already")
        sizes = await journal.read(_table_bytes)
        per_job = max(have or count, 1)
        print(
            "on disk: "
            + ", ".join(
                f"{name} {size / 1e6:,.1f} MB ({size / per_job:,.1f} bytes per job)" for name, size in sizes
            )
        )
        statements: list[str] = []
        print(f"\nmedian of {repeats} (ms), page of 100 with the total count:")
        for name, query in queries().items():
            ms, page = await _median_ms(lambda q=query: jobs.find_jobs(q), repeats)  # type: ignore[misc]
            print(f"  {name:32s} {ms:9.2f} ms   total {page.total_count:,}, page {len(page.jobs)}")
        first = (await jobs.find_jobs(JobQuery(HISTORY, limit=100))).jobs
        job_id = first[50].id
        ms, _ = await _median_ms(lambda: jobs.get_job(job_id), max(repeats, 50))
        print(f"  {'GetJob':32s} {ms:9.3f} ms")
        ms, _ = await _median_ms(lambda: jobs.get_job(job_id, include_log=True, include_payloads=True), 50)
        print(f"  {'GetJob with log and payloads':32s} {ms:9.3f} ms")

        await journal.read(lambda c: c.set_trace_callback(statements.append))
        for query in queries().values():
            await jobs.find_jobs(query)
        await journal.read(lambda c: c.set_trace_callback(None))
        print("\nplans:")
        for statement in dict.fromkeys(s for s in statements if "FROM" in s):
            print("  " + " ".join(statement.split())[:300])
            steps = await journal.read(lambda c, s=statement: c.execute(f"EXPLAIN QUERY PLAN {s}").fetchall())  # type: ignore[misc]
            for step in steps:
                print("      " + step[3])
    finally:
        journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--keep", type=Path, help="journal file to reuse (filled when it is new)")
    args = parser.parse_args()
    if args.keep:
        asyncio.run(measure(args.keep, args.jobs, args.repeats))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(Path(tmp) / "journal.db", args.jobs, args.repeats))


if __name__ == "__main__":
    main()
