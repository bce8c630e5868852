"""The periodic placement work of an origin against the size of its backlog.

An origin runs `hand_back` and `assign` once a second (node/transfer/offloader.py). Both are
journal writes, so whatever they cost is time the single writer cannot spend on AddJob or claims.
This measures one round of each on a real journal holding BACKLOG QUEUED jobs nobody consumes
(no target), against an empty journal, in the same run, and prints the query plans.

    benchmarks/run-backlog [--backlog 1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from node.instance import now_us
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.transfer.store import TransferStore

LOCAL = "origin-instance"
INSERT_BATCH = 10_000


def _records(count: int) -> list[NewJobRecord]:
    created = now_us()
    return [
        NewJobRecord(str(uuid.uuid4()), f"backlog/t{i % 20}", None, "main", LOCAL, None, 3, created, None)
        for i in range(count)
    ]


async def _fill(jobs: JobStore, count: int) -> None:
    for start in range(0, count, INSERT_BATCH):
        await jobs.add_jobs(_records(min(INSERT_BATCH, count - start)))


async def _round_ms(store: TransferStore, rounds: int) -> tuple[float, float]:
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


async def measure(directory: Path, backlog: int, rounds: int) -> tuple[float, float]:
    """Median milliseconds of one hand_back and one assign round with `backlog` jobs waiting."""
    journal = Journal.open(directory / "journal.db")
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, LOCAL)
        await _fill(jobs, backlog)
        return await _round_ms(store, rounds)
    finally:
        journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("empty", "backlog"):
            (Path(tmp) / name).mkdir()
        empty = asyncio.run(measure(Path(tmp) / "empty", 0, args.rounds))
        deep = asyncio.run(measure(Path(tmp) / "backlog", args.backlog, args.rounds))
    print(
        f"placement round (median of {args.rounds}), empty journal vs {args.backlog:,} unassigned QUEUED jobs"
    )
    print(f"  hand_back: {empty[0]:8.3f} ms  vs {deep[0]:8.3f} ms")
    print(f"  assign:    {empty[1]:8.3f} ms  vs {deep[1]:8.3f} ms")


if __name__ == "__main__":
    main()
