"""Persisted schedules; firing one adds its job in the same transaction (exactly once)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobmesh.v1 import schedules_pb2

from node.errors import JobmeshError, NotFound
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord

log = logging.getLogger(__name__)
_COLUMNS = "id, name, job, rules, suspended, next_us, last_us, fired_count, last_job_id, created_us"


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as the journal keeps it (job and rules in their proto encoding)."""

    id: str
    name: str
    job: bytes
    rules: bytes
    suspended: bool
    next_us: int | None
    last_us: int | None
    fired_count: int
    last_job_id: str | None
    created_us: int

    def to_proto(self) -> schedules_pb2.Schedule:
        """The public proto form."""
        from jobmesh.v1 import jobs_pb2

        proto = schedules_pb2.Schedule(
            id=self.id,
            name=self.name,
            job=jobs_pb2.NewJob.FromString(self.job),
            rules=schedules_pb2.AddScheduleRequest.FromString(self.rules).rules,
            suspended=self.suspended,
            fired_count=self.fired_count,
            last_job_id=self.last_job_id or "",
        )
        proto.created_time.FromMicroseconds(self.created_us)
        if self.next_us is not None:
            proto.next_time.FromMicroseconds(self.next_us)
        if self.last_us is not None:
            proto.last_time.FromMicroseconds(self.last_us)
        return proto


def _row(row: Any) -> StoredSchedule:
    """A StoredSchedule from a row selected with _COLUMNS."""
    return StoredSchedule(
        id=str(row["id"]),
        name=str(row["name"]),
        job=bytes(row["job"]),
        rules=bytes(row["rules"]),
        suspended=bool(row["suspended"]),
        next_us=row["next_us"],
        last_us=row["last_us"],
        fired_count=int(row["fired_count"]),
        last_job_id=row["last_job_id"],
        created_us=int(row["created_us"]),
    )


class ScheduleStore:
    """Schedule rows of the journal."""

    def __init__(self, journal: Journal, jobs: JobStore) -> None:
        self.journal = journal
        self._jobs = jobs

    async def add(self, schedule: StoredSchedule) -> None:
        """Insert a new schedule."""
        s = schedule
        await self.journal.write(
            lambda c: c.execute(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    s.id,
                    s.name,
                    s.job,
                    s.rules,
                    int(s.suspended),
                    s.next_us,
                    s.last_us,
                    s.fired_count,
                    s.last_job_id,
                    s.created_us,
                ),
            )
        )

    async def all(self) -> list[StoredSchedule]:
        """Every schedule, oldest first."""
        rows = await self.journal.read(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM schedules ORDER BY created_us, id").fetchall()
        )
        return [_row(r) for r in rows]

    async def get(self, schedule_id: str) -> StoredSchedule:
        """One schedule, or NotFound."""
        row = await self.journal.read(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no schedule with id {schedule_id!r} on this node")
        return _row(row)

    async def remove(self, schedule_id: str) -> bool:
        """Delete a schedule; False if there was none."""
        count = await self.journal.write(
            lambda c: c.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount
        )
        return bool(count)

    async def set_suspended(self, schedule_id: str, suspended: bool, next_us: int | None) -> bool:
        """Suspend or resume (with the next occurrence from now); False if there is no such schedule."""
        count = await self.journal.write(
            lambda c: (
                c.execute(
                    "UPDATE schedules SET suspended = ?, next_us = ? WHERE id = ?",
                    (int(suspended), next_us, schedule_id),
                ).rowcount
            )
        )
        return bool(count)

    async def next_due_us(self) -> int | None:
        """The earliest next occurrence of an active schedule."""
        row = await self.journal.read(
            lambda c: c.execute(
                "SELECT min(next_us) AS due FROM schedules WHERE suspended = 0 AND next_us IS NOT NULL"
            ).fetchone()
        )
        return None if row is None or row["due"] is None else int(row["due"])

    async def fire_due(
        self,
        now_us: int,
        make_job: Callable[[StoredSchedule], NewJobRecord],
        next_after: Callable[[bytes, int], int | None],
    ) -> list[str]:
        """Add one job for each schedule due at `now_us` and move it to its next occurrence.

        Both happen in one transaction, so a crash either fires an occurrence completely or
        not at all; an occurrence missed during downtime fires once (the next one is computed
        from now). `make_job` and `next_after` run here, on the event loop (they use the job
        manager's queues and consumers); the transaction fires a schedule only if it is still
        due as read (not suspended, removed or fired meanwhile). Returns the added job ids.
        """
        due = await self.journal.read(
            lambda c: [
                _row(r)
                for r in c.execute(
                    f"SELECT {_COLUMNS} FROM schedules WHERE suspended = 0 AND next_us IS NOT NULL AND next_us <= ?",
                    (now_us,),
                )
            ]
        )
        if not due:
            return []
        prepared: list[tuple[StoredSchedule, int | None, NewJobRecord | None]] = []
        for schedule in due:
            try:
                next_us = next_after(schedule.rules, now_us)
            except JobmeshError as e:  # e.g. a cron expression with no match in the next years
                log.warning("schedule %s (%s) has no next occurrence: %s", schedule.id, schedule.name, e)
                next_us = None
            try:
                record: NewJobRecord | None = make_job(schedule)
            except JobmeshError as e:
                # Its job no longer passes validation (e.g. the payload limit was lowered):
                # skip this occurrence rather than block every other schedule.
                log.warning(
                    "schedule %s (%s): occurrence skipped, its job is invalid now: %s",
                    schedule.id,
                    schedule.name,
                    e,
                )
                record = None
            prepared.append((schedule, next_us, record))
        jobs = self._jobs

        def fire(conn: sqlite3.Connection) -> list[str]:
            added = []
            for schedule, next_us, record in prepared:
                still_due = conn.execute(
                    "SELECT 1 FROM schedules WHERE id = ? AND suspended = 0 AND next_us = ?",
                    (schedule.id, schedule.next_us),
                ).fetchone()
                if still_due is None:
                    continue
                if record is None:
                    conn.execute("UPDATE schedules SET next_us = ? WHERE id = ?", (next_us, schedule.id))
                    continue
                jobs.insert(conn, [record])
                conn.execute(
                    "UPDATE schedules SET next_us = ?, last_us = ?, fired_count = fired_count + 1, last_job_id = ? "
                    "WHERE id = ?",
                    (next_us, now_us, record.id, schedule.id),
                )
                added.append(record.id)
            return added

        return await self.journal.write(fire)
