"""Storage faults: what a failed SQLite write means for the caller, and a log that does not flood.

A full disk is RESOURCE_EXHAUSTED ("free space in DIR"); read-only or failing storage is
UNAVAILABLE naming the path. Both are faults of the machine, not of the request: the caller
may retry, reads keep working, and writes resume by themselves once the fault clears (each
commit is a fresh transaction). Anything else is left to the caller's own handling.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from node.errors import JobmeshError, JournalFull, StorageUnavailable

log = logging.getLogger(__name__)

# Primary result codes (https://sqlite.org/rescode.html); extended codes carry them in the low byte.
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26


def storage_fault(error: BaseException, path: Path) -> JobmeshError | None:
    """The Jobmesh error for an SQLite error caused by the storage under `path`, or None."""
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(error, sqlite3.Error) or code is None:
        return None
    primary = code & 0xFF
    if primary == SQLITE_FULL:
        return JournalFull(
            f"the journal's disk is full; free space in {path.parent} (writes resume by themselves)"
        )
    if primary == SQLITE_READONLY:
        return StorageUnavailable(
            f"the journal {path} is read-only; make it writable again (reads still work)"
        )
    if primary in (SQLITE_IOERR, SQLITE_CANTOPEN):
        return StorageUnavailable(
            f"the journal {path} cannot be written ({error}); check the disk and the mount (reads may still work)"
        )
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StorageUnavailable(
            f"the journal {path} is damaged ({error}); stop the node and run `jobmesh check`"
        )
    return None


class FaultLog:
    """Logs the first failed commit of a fault, then only when writes work again (writer thread)."""

    def __init__(self) -> None:
        self._failed_commits = 0

    def failed(self, error: BaseException) -> None:
        """A commit failed."""
        if self._failed_commits == 0:
            log.error("journal writes are failing: %s", error)
        self._failed_commits += 1

    def committed(self) -> None:
        """A commit succeeded."""
        if self._failed_commits:
            log.warning("journal writes work again after %d failed commit(s)", self._failed_commits)
            self._failed_commits = 0
