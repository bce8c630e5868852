"""What the journal's periodic and per-job work costs against the size of its backlog, in process
on real journal files, an empty journal against one holding BACKLOG QUEUED jobs nobody consumes
(no target), in the same run.

    benchmarks/run-backlog [--backlog 1000000] [--rounds 20] [--measure placement,wal,claims]

placement  one `hand_back` and one `assign` round of the origin's offloader (both journal
           writes, once a second: what they cost is time the single writer cannot spend on
           AddJob or claims), medians of --rounds
wal        WAL frames (pages) one commit of 1,000 new jobs writes (the WAL emptied before
           each of 20 commits, their mean): the new jobs carry `bench_jobs.bench_job`'s properties (`n` cycling from
           0 to 15,999, `group`), on another topic than the backlog's, whose jobs carry the same
           property values or (`apart`) values that sort after them
claims     one round-robin claim of 15 with --rr-waiting jobs waiting in its queue (3 topics),
           medians of --rounds
counts     the waiting and running jobs by queue and topic (GetStatistics, ListQueues, the
           metrics' breakdown): `unfinished_counts` against a GROUP BY over the jobs, medians
           of 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from node.instance import now_us
from node.journal.counts import unfinished_counts
from node.journal.ids import JobIdGenerator
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.transfer.store import TransferStore

LOCAL = "origin-instance"
INSERT_BATCH = 10_000
COMMIT_JOBS = 1_000
COMMITS = 20
PROPERTY_VALUES = 16_000
"""`n` cycles through as many values as `bench_jobs.add_requests` sends (16 requests of 1,000)."""
APART = 10**9
WAL_FRAME_BYTES = 4096 + 24  # the journal's page size and the frame header
WAL_HEADER_BYTES = 32
_ids = JobIdGenerator()  # time-ordered, as the node's: new ids go to the right edge of their index


def _records(
    count: int,
    topic: Callable[[int], str],
    *,
    first: int = 0,
    offset: int = 0,
    target: str | None = None,
    queue: str = "main",
) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(
            _ids.next_id(),
            topic(i),
            json.dumps({"n": offset + (first + i) % PROPERTY_VALUES, "group": f"g{i % 100}"}),
            queue,
            LOCAL,
            target,
            3,
            created,
            None,
        )
        for i in range(count)
    ]


async def _fill(jobs: JobStore, count: int, offset: int = 0) -> None:
    for start in range(0, count, INSERT_BATCH):
        size = min(INSERT_BATCH, count - start)
        await jobs.add_jobs(_records(size, lambda i: f"backlog/t{i % 20}", first=start, offset=offset))


async def _placement_ms(store: TransferStore, rounds: int) -> tuple[float, float]:
    hand_back: list[float] = []
    assign: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        await store.hand_back(now_us())
        hand_back.append((time.perf_counter() - began) * 1e3)
        began = time.perf_counter()
        await store.assign(lambda _topic, _queue: None, now_us())  # nobody consumes the backlog
        assign.append((time.perf_counter() - began) * 1e3)
    return statistics.median(hand_back), statistics.median(assign)


async def placement(directory: Path, backlog: int, rounds: int) -> tuple[float, float]:
    """Median milliseconds of one hand_back and one assign round with `backlog` jobs waiting."""
    journal = Journal.open(directory / "journal.db")
    try:
        jobs = JobStore(journal)
        await _fill(jobs, backlog)
        return await _placement_ms(TransferStore(journal, jobs, LOCAL), rounds)
    finally:
        journal.close()


async def wal_frames(directory: Path, backlog: int, offset: int) -> float:
    """WAL frames per commit of COMMIT_JOBS new jobs beside `backlog` jobs (their `n` + `offset`)."""
    path = directory / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        await _fill(jobs, backlog, offset)
        frames = 0
        with contextlib.closing(sqlite3.connect(path)) as side:
            for commit in range(COMMITS):
                # An empty WAL before each commit (the writer is idle between them): the
                # commit's frames are then all the WAL holds (a checkpoint never shrinks it).
                busy, _, _ = side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    raise RuntimeError("the WAL could not be emptied before a commit")
                first = commit * COMMIT_JOBS
                await jobs.add_jobs(
                    _records(COMMIT_JOBS, lambda _i: "bench/lifecycle", first=first, target=LOCAL)
                )
                frames += _frames_in_wal(path)
        return frames / COMMITS
    finally:
        journal.close()


async def round_robin_claim_ms(directory: Path, waiting: int, rounds: int) -> float:
    """Median milliseconds of one round-robin claim of 15 with `waiting` jobs in its queue."""
    journal = Journal.open(directory / "journal.db")
    try:
        jobs = JobStore(journal)
        for start in range(0, waiting, INSERT_BATCH):
            size = min(INSERT_BATCH, waiting - start)
            await jobs.add_jobs(_records(size, lambda i: f"rr/t{i % 3}", target=LOCAL, queue="rr"))
        times: list[float] = []
        last_topic = ""
        for _ in range(rounds):
            began = time.perf_counter()
            started, _due = await jobs.claim_round_robin(LOCAL, "rr", now_us(), 15, last_topic)
            times.append((time.perf_counter() - began) * 1e3)
            last_topic = started[-1].topic
        return statistics.median(times)
    finally:
        journal.close()


async def counts_ms(directory: Path, backlog: int) -> tuple[float, float]:
    """Median milliseconds of `unfinished_counts` and of a GROUP BY over the jobs (same result)."""
    path = directory / "journal.db"
    journal = Journal.open(path)
    try:
        await _fill(JobStore(journal), backlog)
    finally:
        journal.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return _median_ms(lambda: unfinished_counts(conn)), _median_ms(
            lambda: conn.execute(GROUP_BY_JOBS).fetchall()
        )


GROUP_BY_JOBS = (
    "SELECT queue, topic, state, count(*) FROM jobs WHERE state IN (1, 2) GROUP BY queue, topic, state"
)


def _median_ms(action: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def _frames_in_wal(path: Path) -> int:
    return (os.path.getsize(f"{path}-wal") - WAL_HEADER_BYTES) // WAL_FRAME_BYTES


def _in(tmp: str, name: str) -> Path:
    directory = Path(tmp) / name
    directory.mkdir()
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--rr-waiting", default="1000,10000,100000", help="jobs waiting in the round-robin queue"
    )
    parser.add_argument("--measure", default="placement,wal,claims,counts")
    args = parser.parse_args()
    measures = set(args.measure.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if "placement" in measures:
            empty = asyncio.run(placement(_in(tmp, "placement-empty"), 0, args.rounds))
            deep = asyncio.run(placement(_in(tmp, "placement-deep"), args.backlog, args.rounds))
            print(
                f"placement round (median of {args.rounds}), empty journal vs {args.backlog:,} unassigned QUEUED jobs"
            )
            print(f"  hand_back: {empty[0]:8.3f} ms  vs {deep[0]:8.3f} ms")
            print(f"  assign:    {empty[1]:8.3f} ms  vs {deep[1]:8.3f} ms")
        if "wal" in measures:
            print(f"WAL frames per commit of {COMMIT_JOBS:,} new jobs ({COMMITS} commits)")
            for name, backlog, offset in (
                ("empty journal", 0, 0),
                (f"{args.backlog:,} backlog, same property values", args.backlog, 0),
                (f"{args.backlog:,} backlog, values apart", args.backlog, APART),
            ):
                frames = asyncio.run(wal_frames(_in(tmp, f"wal-{backlog}-{offset}"), backlog, offset))
                print(f"  {name}: {frames:,.0f}")
        if "claims" in measures:
            print(f"round-robin claim of 15 (median of {args.rounds})")
            for waiting in (int(n) for n in args.rr_waiting.split(",")):
                ms = asyncio.run(round_robin_claim_ms(_in(tmp, f"rr-{waiting}"), waiting, args.rounds))
                print(f"  {waiting:,} waiting: {ms:8.3f} ms")
        if "counts" in measures:
            ours, grouped = asyncio.run(counts_ms(_in(tmp, "counts"), args.backlog))
            print(f"unfinished jobs by queue and topic, {args.backlog:,} QUEUED (median of 5)")
            print(f"  unfinished_counts: {ours:8.1f} ms  vs a GROUP BY over the jobs: {grouped:8.1f} ms")


if __name__ == "__main__":
    main()
