"""Side effects recorded during a group commit: job events and statistics.

Journal operations record events and statistic deltas while they run; the writer flushes
them into the same transaction just before COMMIT (one executemany for all of them), drops
an operation's records when that operation rolls back, and hands the committed events to
the event loop after COMMIT. So an event exists exactly when its state change does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from node.journal.hooks import JournalHook, NoHook
from node.model.events import EventType, JobEvent
from node.model.job import JobState

SCOPE_GLOBAL, SCOPE_QUEUE, SCOPE_TOPIC = 0, 1, 2


@dataclass
class StatsDelta:
    """Counter changes of one (scope, name) within a transaction."""

    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    waiting_us: int = 0
    waiting_count: int = 0
    processing_us: int = 0
    processing_count: int = 0
    last_activated_us: int = 0
    last_finished_us: int = 0

    def add(self, other: StatsDelta) -> None:
        """Add `other`'s counts to this one."""
        self.finished += other.finished
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.waiting_us += other.waiting_us
        self.waiting_count += other.waiting_count
        self.processing_us += other.processing_us
        self.processing_count += other.processing_count
        self.last_activated_us = max(self.last_activated_us, other.last_activated_us)
        self.last_finished_us = max(self.last_finished_us, other.last_finished_us)

    def values(self) -> tuple[int, ...]:
        """The counters in job_stats column order (the field order)."""
        return tuple(getattr(self, f.name) for f in fields(StatsDelta))


_OUTCOME_INDEX = {"finished": 0, "failed": 1, "cancelled": 2}


class CommitObserver(Protocol):
    """Told of each committed transaction (metrics). Called on the writer thread after COMMIT:
    quick, never blocking, never raising; it must not keep the lists."""

    def committed(
        self,
        operations: int,
        events: list[tuple[Any, ...]],
        stats: list[tuple[str, str, int, int | None, int]],
    ) -> None:
        """`operations` in the group commit; its event rows (`EVENT_COLUMNS` order) and its
        statistics records (queue, topic, kind 0 started / 1-3 ended, value us or None, now us)."""


class Recorder:
    """Collects events and statistics of the transaction in progress (writer thread only).

    Both are plain lists of tuples: recording costs one append, an operation that rolls back
    truncates them to where it started (O(1)), and statistics are aggregated per
    (scope, name) once per transaction, just before COMMIT.
    """

    def __init__(
        self, next_seq: int, loop: asyncio.AbstractEventLoop, publish: Callable[[list[tuple[Any, ...]]], None]
    ):
        self._next_seq = next_seq
        self._loop = loop
        self._publish = publish
        self._events: list[tuple[Any, ...]] = []
        # (queue, topic, kind, value, now): kind 0 started (value = waited us),
        # 1 ended finished / 2 failed / 3 cancelled (value = processing us or None).
        self._stats: list[tuple[str, str, int, int | None, int]] = []
        self._mark = (0, 0)
        self.hook: JournalHook = NoHook()
        """What offloading adds to each commit (see `Journal.register_hook`)."""
        self.observer: CommitObserver | None = None
        """Told of each commit (the node's metrics); None: nobody."""
        self._operations = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest recorded event (committed or pending)."""
        return self._next_seq - 1

    # --- recording (called by journal operations) ------------------------------------------

    def event(
        self,
        kind: EventType,
        time_us: int,
        job_id: str,
        topic: str,
        queue: str,
        state: int,
        retry_count: int,
        message: str = "",
        progress: tuple[int, int, int | None] = (0, 0, None),
        target: str | None = None,
    ) -> int:
        """Record one event of the current operation; returns its sequence number."""
        seq = self._next_seq
        self._next_seq = seq + 1
        self._events.append(
            (
                seq,
                int(kind),
                time_us,
                job_id,
                topic,
                queue,
                int(state),
                retry_count,
                message,
                *progress,
                target,
            )
        )
        return seq

    def started(self, queue: str, topic: str, waited_us: int, now_us: int) -> None:
        """Statistics of an attempt that started after waiting `waited_us`."""
        self._stats.append((queue, topic, 0, max(0, waited_us), now_us))

    def ended(self, queue: str, topic: str, outcome: str, processing_us: int | None, now_us: int) -> None:
        """Statistics of an attempt that ended: outcome is finished, failed or cancelled.

        `processing_us` None: the attempt's duration is unknown (a crash cut it short) and
        stays out of the average processing time.
        """
        value = None if processing_us is None else max(0, processing_us)
        self._stats.append((queue, topic, 1 + _OUTCOME_INDEX[outcome], value, now_us))

    # --- transaction hooks (called by the writer) ----------------------------------------------

    def operation_started(self) -> None:
        """Remember where the next operation's records start."""
        self._operations += 1
        self._mark = (len(self._events), len(self._stats))

    def operation_failed(self) -> None:
        """Drop the records of the operation that just rolled back."""
        events, stats = self._mark
        self._next_seq -= len(self._events) - events
        del self._events[events:]
        del self._stats[stats:]

    def _aggregate(self) -> dict[tuple[int, str], StatsDelta]:
        deltas: dict[tuple[int, str], StatsDelta] = {}
        by_pair: dict[tuple[str, str], StatsDelta] = {}
        for queue, topic, kind, value, now in self._stats:
            d = by_pair.get((queue, topic))
            if d is None:
                d = by_pair[(queue, topic)] = StatsDelta()
            if kind == 0:
                d.waiting_us += value or 0
                d.waiting_count += 1
                d.last_activated_us = max(d.last_activated_us, now)
            else:
                if kind == 1:
                    d.finished += 1
                elif kind == 2:
                    d.failed += 1
                else:
                    d.cancelled += 1
                if value is not None:
                    d.processing_us += value
                    d.processing_count += 1
                d.last_finished_us = max(d.last_finished_us, now)
        for (queue, topic), d in by_pair.items():
            for key in ((SCOPE_GLOBAL, ""), (SCOPE_QUEUE, queue), (SCOPE_TOPIC, topic)):
                total = deltas.get(key)
                if total is None:
                    total = deltas[key] = StatsDelta()
                total.add(d)
        return deltas

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Write the transaction's records."""
        if self._events:
            conn.executemany(
                "INSERT INTO job_events (seq, type, time_us, job_id, topic, queue, state, retry_count, message, "
                "progress_total, progress_done, eta_us, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._events,
            )
            self.hook.events_recorded(conn, self._events[0][0], self._events[-1][0])
        if self._stats:
            conn.executemany(
                "INSERT INTO job_stats (scope, name, finished, failed, cancelled, waiting_us, waiting_count, "
                "processing_us, processing_count, last_activated_us, last_finished_us) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET "
                "finished = finished + excluded.finished, failed = failed + excluded.failed, "
                "cancelled = cancelled + excluded.cancelled, waiting_us = waiting_us + excluded.waiting_us, "
                "waiting_count = waiting_count + excluded.waiting_count, "
                "processing_us = processing_us + excluded.processing_us, "
                "processing_count = processing_count + excluded.processing_count, "
                "last_activated_us = max(last_activated_us, excluded.last_activated_us), "
                "last_finished_us = max(last_finished_us, excluded.last_finished_us)",
                [(scope, name, *d.values()) for (scope, name), d in self._aggregate().items()],
            )

    def after_commit(self) -> None:
        """Hand the committed events (as rows) to the event loop."""
        self.hook.committed()
        rows = self._events
        if self.observer is not None:
            self.observer.committed(self._operations, rows, self._stats)
        self._operations = 0
        self._events, self._stats, self._mark = [], [], (0, 0)
        if rows and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._publish, rows)

    def after_rollback(self) -> None:
        """The whole transaction failed: forget its records."""
        self._next_seq -= len(self._events)
        self._events, self._stats, self._mark = [], [], (0, 0)
        self._operations = 0


EVENT_COLUMNS = (
    "seq, type, time_us, job_id, topic, queue, state, retry_count, message, progress_total, progress_done, "
    "eta_us, target"
)


def row_to_event(row: tuple[Any, ...] | sqlite3.Row) -> JobEvent:
    """An event from a row selected with EVENT_COLUMNS (or a tuple the recorder recorded)."""
    seq, kind, time_us, job_id, topic, queue, state, retry_count, message, total, done, eta_us, target = row
    return JobEvent(
        seq=seq,
        type=EventType(kind),
        time_us=time_us,
        job_id=job_id,
        topic=topic,
        queue=queue,
        state=JobState(state),
        retry_count=retry_count,
        message=message or "",
        progress_total=total or 0,
        progress_done=done or 0,
        eta_us=eta_us,
        target=target,
    )
