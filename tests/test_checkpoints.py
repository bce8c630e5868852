"""WAL checkpoints run on their own thread, not inside the writer's commits (node/journal/checkpoints.py)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

from node.journal.checkpoints import Checkpointer, tune_writer
from node.journal.connection import Durability, open_connection
from node.journal.journal import Journal

BLOB = b"x" * (256 * 1024)
COMMITS = 40  # 10 MiB of WAL per round
ROW = b"x" * 3000  # most of a page: three frames or so per commit


def _commit(conn: sqlite3.Connection, checkpointer: Checkpointer, count: int, data: bytes = ROW) -> None:
    """`count` one-row commits into `blobs`, each reported to `checkpointer` as the writer does."""
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO blobs (data) VALUES (?)", (data,))
        conn.execute("COMMIT")
        checkpointer.committed(conn)


def _write_round(conn: sqlite3.Connection, checkpointer: Checkpointer) -> None:
    _commit(conn, checkpointer, COMMITS, BLOB)


def _wait_until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _wal_bytes(path: Path) -> int:
    return path.with_name(path.name + "-wal").stat().st_size


def test_the_writer_never_checkpoints_and_the_wal_restarts_after_a_background_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    tune_writer(conn)
    conn.execute("CREATE TABLE blobs (data BLOB)")
    checkpointer = Checkpointer(path, Durability.NORMAL, interval_s=0.005)

    _write_round(conn, checkpointer)
    after_one_round = _wal_bytes(path)
    _write_round(conn, checkpointer)
    # No checkpointer yet: the writer's commits alone never checkpoint, the WAL only grows.
    assert _wal_bytes(path) >= 2 * after_one_round * 0.95

    checkpointer.start()
    try:
        _wait_until(lambda: checkpointer.checkpoints >= 1)
        backfilled = checkpointer.checkpoints
        _write_round(conn, checkpointer)
        _wait_until(lambda: checkpointer.checkpoints > backfilled)
        _write_round(conn, checkpointer)
    finally:
        checkpointer.stop()
    # Each round after a checkpoint reuses the WAL from its start instead of growing it.
    assert _wal_bytes(path) <= 2 * after_one_round * 1.05
    rows = conn.execute("SELECT count(*) FROM blobs").fetchone()[0]
    assert rows == 4 * COMMITS
    conn.close()


def test_the_wal_restarts_under_commits_that_never_pause(tmp_path: Path) -> None:
    # A commit always landed between the thread's checkpoint and the next write, so the WAL
    # never restarted under steady load: it grew by every commit (335 MB after 5,000 one-job
    # commits of a node), and each commit cost more as its index grew.
    path = tmp_path / "journal.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    tune_writer(conn)
    conn.execute("CREATE TABLE blobs (data BLOB)")
    commits, restart_frames = 6000, 16
    checkpointer = Checkpointer(path, Durability.NORMAL, interval_s=0.001, restart_frames=restart_frames)
    checkpointer.start()
    largest = 0
    try:
        for _ in range(commits):
            _commit(conn, checkpointer, 1)
            largest = max(largest, _wal_bytes(path))
    finally:
        checkpointer.stop()
    # The frames until a checkpoint sees the threshold, and those until the writer's next commit
    # finishes it: a fraction of what the commits wrote (a frame or more each, 75 MB without
    # the restarts; 3 MB or less with them, measured).
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    assert checkpointer.restarts >= 5
    assert largest < commits * (page + 24) / 4, largest
    conn.close()


def _wal_frames(path: Path) -> int:
    """The WAL's frames, read on a connection of its own (not counted as the writer's checkpoint)."""
    probe = open_connection(path, Durability.NORMAL)
    try:
        return int(probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        probe.close()


def test_a_reader_holds_the_wal_back_and_it_restarts_once_the_reader_is_done(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    tune_writer(conn)
    conn.execute("CREATE TABLE blobs (data BLOB)")
    conn.execute("INSERT INTO blobs (data) VALUES (x'00')")
    reader = open_connection(path, Durability.NORMAL)
    checkpointer = Checkpointer(path, Durability.NORMAL, interval_s=0.001, restart_frames=16)
    writer_checkpoints: list[str] = []
    conn.set_trace_callback(lambda sql: writer_checkpoints.append(sql) if "wal_checkpoint" in sql else None)
    checkpointer.start()
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM blobs").fetchone()  # its snapshot pins the WAL
        passes = checkpointer.checkpoints
        _commit(conn, checkpointer, 1000)
        passes = checkpointer.checkpoints - passes
        assert _wal_frames(path) >= 1000  # no restart while the reader may need the frames
        # The writer tried once per thread pass that found the WAL large (and again only while
        # that pass ran), not at each of the 1,000 commits.
        assert len(writer_checkpoints) <= 2 * passes + 2 < 1000, (len(writer_checkpoints), passes)
        reader.execute("COMMIT")
        restarts = checkpointer.restarts
        _commit(conn, checkpointer, 1000)
        assert checkpointer.restarts > restarts
        _commit(conn, checkpointer, 5)
        assert _wal_frames(path) < 1000  # restarted from its beginning
    finally:
        checkpointer.stop()
    reader.close()
    conn.close()


def test_an_idle_checkpointer_runs_one_checkpoint_then_none_until_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    checkpointer = Checkpointer(path, Durability.NORMAL, interval_s=0.001)
    checkpointer.start()
    try:
        _wait_until(lambda: checkpointer.checkpoints == 1)
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            time.sleep(0.005)
        assert checkpointer.checkpoints == 1  # no commit, no checkpoint (and no wake-up)
        checkpointer.committed(conn)
        _wait_until(lambda: checkpointer.checkpoints == 2)
    finally:
        checkpointer.stop()
    conn.close()


async def test_a_journal_leaves_checkpoints_to_its_checkpointer(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite")
    try:
        autocheckpoint = await journal.write(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert autocheckpoint == 0
        await journal.set_meta("k", "v")
    finally:
        journal.close()
    # The last connection's close checkpointed everything and removed the WAL: nothing is lost.
    reopened = Journal.open(tmp_path / "journal.sqlite")
    try:
        assert await reopened.get_meta("k") == "v"
    finally:
        reopened.close()


def test_stop_returns_whenever_it_lands_in_the_checkpointers_round(tmp_path: Path) -> None:
    # A stop that landed between a round's wait and its clearing of the commit cue once left
    # the thread waiting for a commit that never came: a node hung at SIGTERM in Journal.close.
    path = tmp_path / "journal.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    rounds = random.Random(7)
    for _ in range(200):
        checkpointer = Checkpointer(path, Durability.NORMAL, interval_s=0.001)
        checkpointer.start()
        _wait_until(lambda c=checkpointer: c.checkpoints >= 1)
        checkpointer.committed(conn)
        time.sleep(rounds.uniform(0.0005, 0.0015))  # stop near the end of the round's interval
        stopper = threading.Thread(target=checkpointer.stop)
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive(), "Checkpointer.stop did not return"
    conn.close()
