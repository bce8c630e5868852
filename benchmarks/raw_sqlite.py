"""The ceiling the journal works under: insert -> claim -> succeed in plain SQLite, no node.

The same schema (every migration of node/journal/schema.py, indexes included) and the same
pragmas (`open_connection`: WAL, synchronous=NORMAL, the same cache), one connection, one
thread, no events, statistics, properties index or payloads: per batch of B jobs, one
transaction inserts them (the columns an AddJob writes), one claims them as a queue runner does
(`UPDATE ... WHERE seq IN (SELECT ... ORDER BY due_us, seq LIMIT B) RETURNING`), one ends them
SUCCEEDED. `benchmarks/run --scenarios lifecycle` runs it in the same run as the node and
states the node's rate as a share of it.

    .venv/bin/python -m benchmarks.raw_sqlite [--jobs 50000] [--batch 15]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from node.journal.connection import Durability, open_connection
from node.journal.schema import migrate

QUEUED, ACTIVE, SUCCEEDED = 1, 2, 3
LOCAL = "raw-instance"


def raw_rate(directory: Path, jobs: int, batch: int) -> float:
    """Jobs/s through insert, claim and succeed, `batch` jobs per transaction of each."""
    path = directory / f"raw-{uuid.uuid4().hex}.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    try:
        migrate(conn)
        properties = '{"n": 1}'
        began = time.perf_counter()
        done = 0
        while done < jobs:
            now = time.time_ns() // 1000
            rows = [
                (str(uuid.uuid4()), "bench/raw", properties, "main", LOCAL, LOCAL, 3, now, now)
                for _ in range(batch)
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO jobs (id, topic, properties, state, queue, origin, target, max_retries, "
                f"created_us, due_us) VALUES (?, ?, ?, {QUEUED}, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            claimed = conn.execute(
                f"UPDATE jobs SET state = {ACTIVE}, started_us = ?, attempt = attempt + 1 WHERE seq IN "
                f"(SELECT seq FROM jobs WHERE state = {QUEUED} AND target = ? AND queue = ? "
                "ORDER BY due_us, seq LIMIT ?) RETURNING seq",
                (now, LOCAL, "main", batch),
            ).fetchall()
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"UPDATE jobs SET state = {SUCCEEDED}, finished_us = ? WHERE seq = ?",
                [(now, row[0]) for row in claimed],
            )
            conn.execute("COMMIT")
            done += len(claimed)
        return done / (time.perf_counter() - began)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{raw_rate(Path(tmp), args.jobs, args.batch):,.0f} jobs/s (batches of {args.batch})")


if __name__ == "__main__":
    main()
