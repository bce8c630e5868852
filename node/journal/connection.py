"""Opening SQLite connections with the journal's pragmas."""

from __future__ import annotations

import sqlite3
from enum import Enum
from pathlib import Path

from node.errors import JournalError
from node.journal.payloads import register_checksum

_CACHE_KIB = 16 * 1024  # page cache per connection; jobs are never held in Python memory


class Durability(Enum):
    """When a commit reaches the disk.

    NORMAL: WAL with synchronous=NORMAL; a commit survives a crash of any process (kill -9),
    the last commits may be lost on power failure. FULL: fsync on every commit; survives power
    failure, costs throughput.
    """

    NORMAL = "normal"
    FULL = "full"


def open_connection(path: Path, durability: Durability, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with WAL and our pragmas."""
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row  # rows are read by column name
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {durability.name}")
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA foreign_keys = OFF")
        register_checksum(conn)  # the v4 migration and `jobmesh check` compute checksums in SQL
        return conn
    except sqlite3.Error as e:
        hint = ""
        if isinstance(e, sqlite3.DatabaseError) and "not a database" in str(e):
            hint = "; it is damaged: restore it from a backup, or move it aside with `jobmesh run --reset-journal`"
        raise JournalError(f"cannot open journal {path}: {e}{hint}") from e
