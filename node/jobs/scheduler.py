"""The scheduler: adds the jobs of due schedules, each occurrence exactly once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from jobmesh.v1 import jobs_pb2, schedules_pb2

from node.errors import NotFound, Unavailable
from node.instance import now_us
from node.jobs.schedules import decode_rules, encode_rules, next_time_us, validate_rules
from node.journal.records import NewJobRecord
from node.journal.schedules import ScheduleStore, StoredSchedule
from node.waits import wait_event

log = logging.getLogger(__name__)
MAX_SLEEP_S = 60.0  # wake at least this often, so a changed wall clock is noticed


class Scheduler:
    """Fires due schedules. Event-loop contract: all methods run on the node's loop."""

    def __init__(
        self,
        store: ScheduleStore,
        make_record: Callable[[jobs_pb2.NewJob, str], NewJobRecord],
        on_added: Callable[[Sequence[str]], None],
    ) -> None:
        self._store = store
        self._make_record = make_record
        self._on_added = on_added
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start firing schedules (missed occurrences fire once, right away)."""
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop firing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def add(
        self, name: str, job: jobs_pb2.NewJob, rules: Sequence[schedules_pb2.ScheduleRule]
    ) -> StoredSchedule:
        """Validate and store a schedule; returns it."""
        validate_rules(rules)
        self._make_record(job, "job")  # validates the job
        now = now_us()
        job.dedup_key = ""
        schedule = StoredSchedule(
            id=str(uuid.uuid4()),
            name=name,
            job=job.SerializeToString(),
            rules=encode_rules(rules),
            suspended=False,
            next_us=_first_time(rules, now),
            last_us=None,
            fired_count=0,
            last_job_id=None,
            created_us=now,
        )
        await self._store.add(schedule)
        self._wakeup.set()
        return schedule

    async def set_suspended(self, schedule_id: str, suspended: bool) -> StoredSchedule:
        """Suspend, or resume from now on."""
        schedule = await self._store.get(schedule_id)
        next_us = next_time_us(decode_rules(schedule.rules), now_us()) if not suspended else schedule.next_us
        if not await self._store.set_suspended(schedule_id, suspended, next_us):
            raise NotFound(f"no schedule with id {schedule_id!r} on this node")
        self._wakeup.set()
        return await self._store.get(schedule_id)

    async def _loop(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                added = await self._store.fire_due(now_us(), self._record_for, _next_after)
                if added:
                    self._on_added(added)
                due = await self._store.next_due_us()
            except Unavailable:
                return
            except Exception:
                log.exception("firing schedules failed; retrying")
                due = now_us() + 1_000_000
            timeout = MAX_SLEEP_S if due is None else min(MAX_SLEEP_S, max(0.0, (due - now_us()) / 1e6))
            await wait_event(self._wakeup, timeout)

    def _record_for(self, schedule: StoredSchedule) -> NewJobRecord:
        return self._make_record(jobs_pb2.NewJob.FromString(schedule.job), f"schedule {schedule.id}")


def _first_time(rules: Sequence[schedules_pb2.ScheduleRule], now: int) -> int | None:
    """The first occurrence; an `at` rule already past fires at once."""
    times = [t for t in (next_time_us(rules, now),) if t is not None]
    past_at = [
        r.at.time.seconds * 1_000_000 + r.at.time.nanos // 1000 for r in rules if r.WhichOneof("rule") == "at"
    ]
    if any(t <= now for t in past_at):
        times.append(now)
    return min(times) if times else None


def _next_after(rules: bytes, now: int) -> int | None:
    return next_time_us(decode_rules(rules), now)
