"""What the `job_events_job` index (schema v8) costs on the insert path, and what it saves a reader.

In process, on real journals (`Journal.open`, the writer's group commits, the recorder's
`executemany`), each run on a fresh journal already holding PREFILL lifecycle events, the
variants alternating (none: schema v7; all: every event indexed; v8: every event but PROGRESS):

- lifecycle: EVENTS events ADDED, STARTED, FINISHED of UUIDv7 jobs (a job starts LAG jobs after
  it was added and ends LAG later), in commits of BATCH;
- progress: EVENTS PROGRESS events of ACTIVE jobs running side by side, in commits of BATCH;
- add: JOBS jobs added with `JobStore.add_jobs` in batches of 1,000 (each records its ADDED
  event): the whole AddJobs journal path;
- the read: one job's newest page of history (`EventStore.job_history`) with the v8 index, and
  the same statement without it (a walk over every event);
- the migration: CREATE INDEX over the PREFILL events of an existing journal.

Each run is timed in process CPU seconds (the writer thread included), not wall time: on a
machine others load, CPU time is what the index costs; read the medians of the ratios.

    .venv/bin/python -m benchmarks.bench_event_index [--runs 5] [--prefill 300000] [--events 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from node.instance import now_us
from node.journal.events import EventStore
from node.journal.ids import JobIdGenerator
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.model.events import EventType
from node.model.job import JobState

ACTIVE = 1_000
BATCH = 200
ADD_BATCH = 1_000
LAG = 2_000
"""Lifecycle scenario: a job starts LAG jobs after it was added and ends LAG jobs later."""
INDEXES = {
    "none": "",
    "all": "CREATE INDEX job_events_job ON job_events (job_id)",
    "v8": f"CREATE INDEX job_events_job ON job_events (job_id) WHERE type != {EventType.PROGRESS:d}",
}
"""The variants compared: no index (schema v7), every event indexed, every event but PROGRESS
(schema v8)."""
IDS = JobIdGenerator()


async def _open(path: Path, variant: str) -> Journal:
    """A fresh journal with the variant's index on job_events (the schema's dropped first)."""

    def set_index(conn: sqlite3.Connection) -> None:
        conn.execute("DROP INDEX IF EXISTS job_events_job")
        if INDEXES[variant]:
            conn.execute(INDEXES[variant])

    journal = Journal.open(path)
    await journal.write(set_index)
    return journal


def _event(journal: Journal, kind: EventType, job_id: str, now: int, done: int = 0) -> None:
    state = JobState.QUEUED if kind == EventType.ADDED else JobState.ACTIVE
    if kind == EventType.FINISHED:
        state = JobState.SUCCEEDED
    journal.recorder.event(kind, now, job_id, "bench/t", "main", int(state), 0, "", (100, done, None))


async def _lifecycle(journal: Journal, count: int) -> None:
    """`count` events of the lifecycle ADDED, STARTED, FINISHED (UUIDv7 ids, as the node's),
    in commits of BATCH: the commit adding job n starts job n - LAG and ends job n - 2 LAG."""
    ids: list[str] = []
    now = now_us()

    def batch() -> None:
        for _ in range(BATCH // 3):
            ids.append(IDS.next_id())
            _event(journal, EventType.ADDED, ids[-1], now)
            if len(ids) > LAG:
                _event(journal, EventType.STARTED, ids[-LAG - 1], now)
            if len(ids) > 2 * LAG:
                _event(journal, EventType.FINISHED, ids[-2 * LAG - 1], now)

    while len(ids) * 3 < count:
        await journal.write(lambda _c: batch())


async def _progress(journal: Journal, count: int) -> None:
    """`count` PROGRESS events in commits of BATCH, round robin over ACTIVE running jobs."""
    active = IDS.next_ids(ACTIVE)
    now = now_us()

    def batch(first: int) -> None:
        for i in range(first, first + BATCH):
            _event(journal, EventType.PROGRESS, active[i % ACTIVE], now, i)

    for first in range(0, count, BATCH):

        def write(_conn: sqlite3.Connection, first: int = first) -> None:
            batch(first)

        await journal.write(write)


async def _add(journal: Journal, count: int) -> None:
    """`count` jobs added with `JobStore.add_jobs` in batches (each records its ADDED event)."""
    store = JobStore(journal)
    created = now_us()
    for _ in range(count // ADD_BATCH):
        records = [
            NewJobRecord(job_id, "bench/t", '{"n":1}', "main", "me", None, 3, created, None)
            for job_id in IDS.next_ids(ADD_BATCH)
        ]
        await store.add_jobs(records)


SCENARIOS = {"lifecycle": _lifecycle, "progress": _progress, "add": _add}


async def _run(root: Path, variant: str, scenario: str, prefill: int, count: int) -> float:
    """CPU seconds of `scenario` (`count` events, or jobs for add) on a journal of `prefill`
    lifecycle events."""
    journal = await _open(root / f"{scenario}-{variant}-{time.monotonic_ns()}.db", variant)
    try:
        await _lifecycle(journal, prefill)
        started = time.process_time()
        await SCENARIOS[scenario](journal, count)
        return time.process_time() - started
    finally:
        journal.close()


async def _read_and_migrate(root: Path, prefill: int, repeats: int) -> dict[str, float]:
    """One job's newest page of history with and without the index; CREATE INDEX's time."""
    journal = await _open(root / "read.db", "none")
    try:
        await _lifecycle(journal, prefill)
        row = await journal.read(
            lambda c: c.execute("SELECT job_id FROM job_events WHERE seq = ?", (prefill // 2,)).fetchone()
        )
        store = EventStore(journal)
        started = time.perf_counter()
        await journal.write(lambda c: c.execute(INDEXES["v8"]))
        migrate_s = time.perf_counter() - started

        async def timed() -> tuple[float, list[object]]:
            times: list[float] = []
            page: list[object] = []
            for _ in range(repeats):
                t = time.perf_counter()
                page = list(await store.job_history(row["job_id"]))
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000, page

        with_ms, page = await timed()
        await journal.write(lambda c: c.execute("DROP INDEX job_events_job"))
        without_ms, again = await timed()
        assert page, "the job has a history"
        assert again == page, "the same history either way"
        return {"migrate_s": migrate_s, "read_with_ms": with_ms, "read_without_ms": without_ms}
    finally:
        journal.close()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=300_000, help="lifecycle events already there")
    parser.add_argument("--events", type=int, default=60_000, help="events per lifecycle/progress run")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per add run")
    parser.add_argument("--variants", default="none,all,v8")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for scenario in SCENARIOS:
            count = args.jobs if scenario == "add" else args.events
            rates: dict[str, list[float]] = {v: [] for v in variants}
            for run in range(args.runs):
                order = variants if run % 2 == 0 else variants[::-1]  # alternate who goes first
                for variant in order:
                    rates[variant].append(count / await _run(root, variant, scenario, args.prefill, count))
            base = rates[variants[0]]
            for variant in variants:
                ratios = [r / b for r, b in zip(rates[variant], base, strict=True)]
                print(
                    f"{scenario:9} {variant:5} median {statistics.median(rates[variant]):>9,.0f}/CPU-s "
                    f"ratio to {variants[0]} {statistics.median(ratios):.3f} "
                    f"(runs {', '.join(f'{r:,.0f}' for r in rates[variant])})",
                    flush=True,
                )
        figures = await _read_and_migrate(root, args.prefill, 9)
        print(
            f"one job's newest page over {args.prefill:,} events: {figures['read_with_ms']:.2f} ms with the "
            f"index, {figures['read_without_ms']:.1f} ms without; CREATE INDEX {figures['migrate_s']:.2f} s"
        )


if __name__ == "__main__":
    asyncio.run(main())
