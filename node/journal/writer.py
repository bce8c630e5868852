"""The journal's single writer: a thread that group-commits operations.

Callers on the event loop submit operations (functions of a connection). The writer takes
everything waiting, runs each operation in its own savepoint inside one transaction,
commits once, and only then answers each caller: with its result, or with the exception
its operation raised (which rolled back that operation alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from node.errors import JournalError, Unavailable

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]
log = logging.getLogger(__name__)

MAX_OPERATIONS_PER_COMMIT = 2_000
_STOP = object()


class _Pending:
    __slots__ = ("future", "loop", "operation")

    def __init__(
        self, operation: Operation[Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ):
        self.operation = operation
        self.loop = loop
        self.future = future


def _resolve(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled; the operation still committed
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class JournalWriter:
    """Runs write operations on one connection in a dedicated thread, with group commit."""

    def __init__(self, conn: sqlite3.Connection, name: str = "journal-writer") -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.commits = 0
        self.operations = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def submit(self, operation: Operation[T]) -> T:
        """Run `operation` in the next group commit and return its result after the commit."""
        if self._closed:
            raise Unavailable("the journal is closed (the node is shutting down)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(operation, loop, future))
        return await future

    def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= MAX_OPERATIONS_PER_COMMIT:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        conn = self._conn
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = pending.operation(conn)
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    results.append((False, e))
                else:
                    results.append((True, value))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.exception("journal commit failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = JournalError(f"journal commit failed: {e}")
            results = [(False, error)] * len(batch)
        self.commits += 1
        self.operations += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for pending, (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, ok, value))
        for loop, outcomes in by_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, outcomes)
