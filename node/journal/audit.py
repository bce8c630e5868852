"""The audit journal: admin actions and their callers, the newest `max_entries` kept.

Entries are written through the journal's one writer (group commit); each insert deletes the
entries that fell out of the window in the same transaction, so no commit leaves more than
`max_entries` in the table.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.journal.journal import Journal

MAX_TEXT_CHARS = 1000
"""Longer requests and messages are cut to this many characters."""


@dataclass(frozen=True)
class AuditEntry:
    """One admin action: who asked, what, and how it ended."""

    time_us: int
    caller: str
    action: str
    request: str
    status: str
    message: str = ""
    seq: int = 0
    """Position in the journal (0 before it is stored)."""


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


class AuditStore:
    """Audit rows of the journal."""

    def __init__(self, journal: Journal, max_entries: int) -> None:
        self.journal = journal
        self.max_entries = max_entries

    async def record(self, entry: AuditEntry) -> int:
        """Store one entry (dropping the oldest beyond `max_entries`); returns its seq."""

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO audit (time_us, caller, action, request, status, message) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.time_us,
                    _cut(entry.caller),
                    _cut(entry.action),
                    _cut(entry.request),
                    entry.status,
                    _cut(entry.message),
                ),
            )
            seq = int(cursor.lastrowid or 0)
            conn.execute("DELETE FROM audit WHERE seq <= ?", (seq - self.max_entries,))
            return seq

        return await self.journal.write(insert)

    async def page(self, before_seq: int | None, limit: int) -> tuple[list[AuditEntry], int]:
        """Up to `limit` entries older than `before_seq` (None: the newest), newest first, and
        how many entries are kept in all."""

        def query(conn: sqlite3.Connection) -> tuple[list[AuditEntry], int]:
            rows = conn.execute(
                "SELECT seq, time_us, caller, action, request, status, message FROM audit "
                "WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (2**63 - 1 if before_seq is None else before_seq, limit),
            ).fetchall()
            total = int(conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
            entries = [
                AuditEntry(
                    seq=row[0],
                    time_us=row[1],
                    caller=row[2],
                    action=row[3],
                    request=row[4],
                    status=row[5],
                    message=row[6],
                )
                for row in rows
            ]
            return entries, total

        return await self.journal.read(query)
