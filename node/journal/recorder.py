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
from dataclasses import dataclass, field

from node.jobs.events import EventType, JobEvent
from node.jobs.model import JobState

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


@dataclass
class _Pending:
    events: list[tuple[object, ...]] = field(default_factory=list)
    stats: dict[tuple[int, str], StatsDelta] = field(default_factory=dict)


class Recorder:
    """Collects events and statistics of the transaction in progress (writer thread only)."""

    def __init__(
        self, next_seq: int, loop: asyncio.AbstractEventLoop, publish: Callable[[list[JobEvent]], None]
    ):
        self._next_seq = next_seq
        self._loop = loop
        self._publish = publish
        self._tx = _Pending()
        self._op_mark: tuple[int, dict[tuple[int, str], StatsDelta]] | None = None

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
        self._next_seq += 1
        self._tx.events.append(
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

    def _delta(self, scope: int, name: str) -> StatsDelta:
        delta = self._tx.stats.get((scope, name))
        if delta is None:
            delta = self._tx.stats[(scope, name)] = StatsDelta()
        return delta

    def started(self, queue: str, topic: str, waited_us: int, now_us: int) -> None:
        """Statistics of an attempt that started after waiting `waited_us`."""
        for key in ((SCOPE_GLOBAL, ""), (SCOPE_QUEUE, queue), (SCOPE_TOPIC, topic)):
            delta = self._delta(*key)
            delta.waiting_us += max(0, waited_us)
            delta.waiting_count += 1
            delta.last_activated_us = now_us

    def ended(self, queue: str, topic: str, outcome: str, processing_us: int | None, now_us: int) -> None:
        """Statistics of an attempt that ended: outcome is finished, failed or cancelled.

        `processing_us` None: the attempt's duration is unknown (a crash cut it short) and
        stays out of the average processing time.
        """
        for key in ((SCOPE_GLOBAL, ""), (SCOPE_QUEUE, queue), (SCOPE_TOPIC, topic)):
            delta = self._delta(*key)
            setattr(delta, outcome, getattr(delta, outcome) + 1)
            if processing_us is not None:
                delta.processing_us += max(0, processing_us)
                delta.processing_count += 1
            delta.last_finished_us = now_us

    # --- transaction hooks (called by the writer) ----------------------------------------------

    def operation_started(self) -> None:
        """Remember where the next operation's records start."""
        self._op_mark = (len(self._tx.events), {k: StatsDelta(**vars(v)) for k, v in self._tx.stats.items()})

    def operation_failed(self) -> None:
        """Drop the records of the operation that just rolled back."""
        if self._op_mark is None:
            return
        count, stats = self._op_mark
        dropped = len(self._tx.events) - count
        del self._tx.events[count:]
        self._next_seq -= dropped
        self._tx.stats = stats

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Write the transaction's records."""
        if self._tx.events:
            conn.executemany(
                "INSERT INTO job_events (seq, type, time_us, job_id, topic, queue, state, retry_count, message, "
                "progress_total, progress_done, eta_us, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._tx.events,
            )
        if self._tx.stats:
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
                [
                    (
                        scope,
                        name,
                        d.finished,
                        d.failed,
                        d.cancelled,
                        d.waiting_us,
                        d.waiting_count,
                        d.processing_us,
                        d.processing_count,
                        d.last_activated_us,
                        d.last_finished_us,
                    )
                    for (scope, name), d in self._tx.stats.items()
                ],
            )

    def after_commit(self) -> None:
        """Hand the committed events to the event loop."""
        rows, self._tx = self._tx.events, _Pending()
        self._op_mark = None
        if rows:
            events = [_row_to_event(row) for row in rows]
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._publish, events)

    def after_rollback(self) -> None:
        """The whole transaction failed: forget its records."""
        self._next_seq -= len(self._tx.events)
        self._tx = _Pending()
        self._op_mark = None


EVENT_COLUMNS = (
    "seq, type, time_us, job_id, topic, queue, state, retry_count, message, progress_total, progress_done, "
    "eta_us, target"
)


def _row_to_event(row: tuple[object, ...] | sqlite3.Row) -> JobEvent:
    return JobEvent(
        seq=row[0],  # type: ignore[arg-type]
        type=EventType(row[1]),  # type: ignore[arg-type]
        time_us=row[2],  # type: ignore[arg-type]
        job_id=row[3],  # type: ignore[arg-type]
        topic=row[4],  # type: ignore[arg-type]
        queue=row[5],  # type: ignore[arg-type]
        state=JobState(row[6]),  # type: ignore[arg-type]
        retry_count=row[7],  # type: ignore[arg-type]
        message=row[8] or "",  # type: ignore[arg-type]
        progress_total=row[9] or 0,  # type: ignore[arg-type]
        progress_done=row[10] or 0,  # type: ignore[arg-type]
        eta_us=row[11],  # type: ignore[arg-type]
        target=row[12],  # type: ignore[arg-type]
    )


row_to_event = _row_to_event
