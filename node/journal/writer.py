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
from pathlib import Path
from typing import Any, Protocol, TypeVar

from node.errors import JournalError, Unavailable
from node.journal.faults import FaultLog, storage_fault

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]
log = logging.getLogger(__name__)

MAX_OPERATIONS_PER_COMMIT = 2_000
_STOP = object()


class _Pending:
    __slots__ = ("future", "loop", "operation")

    def __init__(
        self,
        operation: Operation[Any],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
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


class CommitHooks(Protocol):
    """Side effects that ride along with each group commit (see node/journal/recorder.py)."""

    def operation_started(self) -> None:
        """An operation is about to run in its savepoint."""

    def operation_failed(self) -> None:
        """The operation raised and was rolled back."""

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Last writes of the transaction."""

    def after_commit(self) -> None:
        """The transaction is durable."""

    def after_rollback(self) -> None:
        """The whole transaction failed."""


class JournalWriter:
    """Runs write operations on one connection in a dedicated thread, with group commit."""

    def __init__(self, conn: sqlite3.Connection, path: Path, name: str = "journal-writer") -> None:
        self._conn = conn
        self._path = path
        self._faults = FaultLog()
        self.hooks: CommitHooks | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.commits = 0
        self.operations = 0
        self.on_commit: Callable[[sqlite3.Connection], None] | None = None
        """Called on the writer's thread with its connection after each group commit, or its
        rollback, once the callers are answered (the WAL checkpointer's cue)."""

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    @property
    def queued(self) -> int:
        """Operations submitted and not yet taken into a group commit (approximate: threads)."""
        return self._queue.qsize()

    def submit_nowait(self, operation: Operation[Any]) -> None:
        """Run `operation` in a coming group commit without waiting (thread-safe; errors are logged)."""
        if not self._closed:
            self._queue.put(_Pending(operation, None, None))

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
        hooks = self.hooks
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                conn.execute("SAVEPOINT op")
                if hooks is not None:
                    hooks.operation_started()
                try:
                    value = pending.operation(conn)
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    if hooks is not None:
                        hooks.operation_failed()
                    fault = storage_fault(e, self._path)
                    if fault is not None:
                        raise  # the storage failed, not this operation: the whole batch fails
                    if pending.future is None:
                        log.warning("journal operation failed: %s", e)
                    results.append((False, e))
                else:
                    results.append((True, value))
                conn.execute("RELEASE op")
            if hooks is not None:
                hooks.before_commit(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._faults.failed(e)
            with contextlib.suppress(sqlite3.Error):  # the rollback can fail on a broken disk too
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if hooks is not None:
                hooks.after_rollback()
            error = storage_fault(e, self._path) or JournalError(f"journal commit failed: {e}")
            results = [(False, error)] * len(batch)
        else:
            self._faults.committed()
            if hooks is not None:
                hooks.after_commit()
        self.commits += 1
        self.operations += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for pending, (ok, value) in zip(batch, results, strict=True):
            if pending.loop is not None and pending.future is not None:
                by_loop.setdefault(pending.loop, []).append((pending.future, ok, value))
        for loop, outcomes in by_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, outcomes)
        if self.on_commit is not None:
            self.on_commit(conn)
