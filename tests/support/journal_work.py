"""Jobs written straight into a real journal, and the work SQLite does for a statement, counted
by its own instruction counter: the suite's way to pin a query's cost against the size of the
journal without timing anything."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from node.instance import now_us
from node.journal.journal import Journal
from node.journal.records import NewJobRecord

T = TypeVar("T")


def queued_records(
    topics: Sequence[str], *, origin: str, target: str | None, queue: str = "main"
) -> list[NewJobRecord]:
    """One new QUEUED job per entry of `topics`, in that order (`target` None: unassigned)."""
    created = now_us()
    return [NewJobRecord(str(uuid.uuid4()), t, None, queue, origin, target, 3, created, None) for t in topics]


def _counter() -> tuple[Callable[[], int], Callable[[], int]]:
    executed = 0

    def tick() -> int:
        nonlocal executed
        executed += 1
        return 0  # go on

    return tick, lambda: executed


def read_instructions(path: Path, read: Callable[[sqlite3.Connection], T]) -> tuple[T, int]:
    """What `read` returns on its own connection to `path`, and the SQLite VM instructions it ran."""
    tick, executed = _counter()
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        conn.set_progress_handler(tick, 1)
        value = read(conn)
    return value, executed()


async def writer_instructions(journal: Journal, action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What `action` returns, and the SQLite VM instructions the journal's writer ran for it."""
    tick, executed = _counter()

    def install(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(tick, 1)

    await journal.write(install)
    try:
        result = await action()
    finally:
        await journal.write(lambda conn: conn.set_progress_handler(None, 1))
    return result, executed()
