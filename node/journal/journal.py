"""The SQLite journal: plumbing shared by every store (jobs, events, queues, schedules).

Writes go through one `JournalWriter` (group commit); reads run on a small pool of
read-only connections in threads (WAL lets them run beside the writer), so nothing here
blocks the event loop. Job events and statistics are recorded inside the same commits
(`Recorder`); committed events are published on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from node.errors import Unavailable
from node.journal.checkpoints import Checkpointer, tune_writer
from node.journal.connection import Durability, open_connection
from node.journal.hooks import JournalHook, NoHook
from node.journal.payloads import PayloadIntegrity
from node.journal.recorder import Recorder, row_to_event
from node.journal.schema import migrate
from node.journal.writer import JournalWriter
from node.model.events import JobEvent

T = TypeVar("T")
EventListener = Callable[[list[JobEvent]], None]
RowListener = Callable[[list[tuple[Any, ...]]], None]
log = logging.getLogger(__name__)


def _last_event_seq(conn: sqlite3.Connection) -> int:
    """The newest event seq ever used: the table's, or the floor a purge left behind.

    Sequence numbers are assigned by the writer (not AUTOINCREMENT, which costs a write per
    row); a purge that empties the table records its highest seq, so none is ever reused.
    """
    newest = conn.execute("SELECT max(seq) AS seq FROM job_events").fetchone()["seq"] or 0
    floor = conn.execute("SELECT value FROM meta WHERE key = 'events_seq_floor'").fetchone()
    return max(int(newest), int(floor["value"]) if floor else 0)


class Journal:
    """Durable storage of one node. Open with `Journal.open` (on the event loop), close with `close`.

    Event-loop contract: `open`, `read`, `write`, `wait_for_events` and listeners run on the
    loop that opened the journal; `submit_nowait` is thread-safe.
    """

    def __init__(
        self, path: Path, durability: Durability, writer: JournalWriter, readers: int, head_seq: int
    ):
        self.path = path
        self.durability = durability
        self._writer = writer
        self._checkpointer = Checkpointer(path, durability)
        writer.on_commit = self._checkpointer.committed
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="journal-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False
        self.head_seq = head_seq
        """The newest committed event's sequence number."""
        self.integrity = PayloadIntegrity(path)
        """Verifies payloads read from this journal and counts the damaged ones."""
        self._events_committed = asyncio.Event()
        self._listeners: list[EventListener] = []
        self._row_listeners: list[RowListener] = []
        self.recorder = Recorder(head_seq + 1, asyncio.get_running_loop(), self._publish)
        writer.hooks = self.recorder

    @classmethod
    def open(cls, path: Path, durability: Durability = Durability.NORMAL, readers: int = 2) -> Journal:
        """Open (creating and migrating as needed) the journal at `path`. Call on the event loop."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_connection(path, durability)
        migrate(conn)
        tune_writer(conn)
        head = _last_event_seq(conn)
        writer = JournalWriter(conn, path)
        journal = cls(path, durability, writer, readers, head)
        writer.start()
        journal._checkpointer.start()
        return journal

    def close(self) -> None:
        """Finish pending writes and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._checkpointer.stop()
        self._writer.close()
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
        self._events_committed.set()  # release watchers; they see the journal closed

    @property
    def closed(self) -> bool:
        """True after `close`."""
        return self._closed

    @property
    def commit_count(self) -> int:
        """Transactions committed so far (for statistics and benchmarks)."""
        return self._writer.commits

    @property
    def queued_writes(self) -> int:
        """Write operations waiting for the writer to take them into a group commit."""
        return self._writer.queued

    @property
    def hook(self) -> JournalHook:
        """The registered hook (a `NoHook` until one is registered)."""
        return self.recorder.hook

    def register_hook(self, hook: JournalHook) -> None:
        """Let `hook` ride along with every job change from now on (see node/journal/hooks.py).

        One hook per journal. Register it before anything writes jobs (before the queue
        runners start): changes committed earlier are never shown to it.
        """
        if not isinstance(self.recorder.hook, NoHook):
            raise RuntimeError("the journal already has a hook")
        # The writer thread reads the attribute per call: it sees the hook from its next operation.
        self.recorder.hook = hook

    # --- plumbing --------------------------------------------------------------------------

    async def write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` in the next group commit; returns its result after the commit."""
        return await self._writer.submit(operation)

    def submit_nowait(self, operation: Callable[[sqlite3.Connection], Any]) -> None:
        """Run `operation` in a coming group commit, without waiting (thread-safe)."""
        self._writer.submit_nowait(operation)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` on a reader connection in the reader pool."""
        if self._closed:
            raise Unavailable("the journal is closed (the node is shutting down)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_with_connection, operation)

    def _read_with_connection(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self.path, self.durability, readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return operation(conn)

    # --- committed events --------------------------------------------------------------------

    def add_event_listener(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener(events)` on the loop after each commit that recorded events.

        Listeners must be quick and must not raise; returns a function that removes it.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_row_listener(self, listener: RowListener) -> Callable[[], None]:
        """Like `add_event_listener`, but called with the committed event rows themselves
        (`EVENT_COLUMNS` order), which costs nothing per event for a listener that looks at few
        of them (the console). Returns a function that removes it."""
        self._row_listeners.append(listener)
        return lambda: self._row_listeners.remove(listener)

    def _publish(self, rows: list[tuple[Any, ...]]) -> None:
        self.head_seq = rows[-1][0]
        self._events_committed.set()
        self._events_committed = asyncio.Event()
        for row_listener in list(self._row_listeners):
            try:
                row_listener(rows)
            except Exception:
                log.exception("job event row listener failed")
        if not self._listeners:
            return  # events become objects only when someone listens
        events = [row_to_event(row) for row in rows]
        for listener in list(self._listeners):
            try:
                listener(events)
            except Exception:
                log.exception("job event listener failed")

    async def wait_for_events(self, after_seq: int, timeout_s: float | None = None) -> bool:
        """Wait until an event newer than `after_seq` is committed; False on timeout or close."""
        while self.head_seq <= after_seq and not self._closed:
            try:
                async with asyncio.timeout(timeout_s):  # not wait_for: see docs/architecture.md
                    await self._events_committed.wait()
            except TimeoutError:
                return False
        return self.head_seq > after_seq

    # --- metadata --------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        """A value from the node's metadata table."""
        row = await self.read(lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else str(row["value"])

    async def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value."""
        await self.write(
            lambda c: c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )


def discard_journal(path: Path) -> Path | None:
    """Move the journal at `path` (and its WAL files) aside; returns where, or None if there was none.

    Nothing is deleted: `journal.sqlite.discarded-<time>` stays for inspection or recovery.
    """
    if not path.exists():
        log.warning("--reset-journal: there was no journal at %s; starting with an empty one", path)
        return None
    aside = path.with_name(f"{path.name}.discarded-{time.strftime('%Y%m%dT%H%M%S')}")
    size = path.stat().st_size
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(aside.with_name(aside.name + suffix))
    log.warning(
        "--reset-journal: discarded the journal %s (%d bytes, every job, event, queue and schedule in it), "
        "moved to %s; starting with an empty journal",
        path,
        size,
        aside,
    )
    return aside
