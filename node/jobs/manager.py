"""The job manager: add, read, find and control jobs, queues and schedules (Sling's JobManager)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobmesh.v1 import jobs_pb2, schedules_pb2

from node.config import NodeConfig
from node.errors import FailedPrecondition, JobmeshError, NotFound, Unavailable
from node.instance import now_us
from node.jobs.consumers import ConsumerRegistry
from node.jobs.context import JobContext
from node.jobs.intake import JobIntake
from node.jobs.placement import LocalPlacement, Placement
from node.jobs.retention import Retention
from node.jobs.runner import QueueRunner
from node.jobs.scheduler import Scheduler
from node.journal.claims import NO_HOLD, Hold
from node.journal.events import EventBatch, EventStore
from node.journal.ids import JobIdGenerator
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.queues import QueueStore
from node.journal.records import AddedJob, JobPage, JobQuery, NewJobRecord
from node.journal.schedules import ScheduleStore, StoredSchedule
from node.journal.stats import StatisticsReport, read_statistics
from node.model.consumption import ConsumptionRules
from node.model.events import EventFilter, JobEvent
from node.model.job import Job, JobState
from node.model.queues import MAIN_QUEUE, QueueConfig, QueueDirectory, QueueInfo, QueueType
from node.topics import TopicPattern

log = logging.getLogger(__name__)


class JobManager:
    """Adds and controls the jobs of one node and runs them with its consumers.

    Event-loop contract: coroutines run on the node's loop; register consumers on the loop.
    Event listeners (`add_event_listener`) are called on the loop after each commit.
    """

    def __init__(
        self,
        journal: Journal,
        consumers: ConsumerRegistry,
        config: NodeConfig,
        instance_id: str,
        placement: Placement | None = None,
    ):
        self._journal = journal
        self.consumers = consumers
        self._config = config
        self.instance_id = instance_id
        self.store = JobStore(journal)
        self.events = EventStore(journal)
        self._queue_store = QueueStore(journal)
        self._schedule_store = ScheduleStore(journal, self.store)
        self._ids = JobIdGenerator()
        self._file_queues = {q.name: q for q in config.queues}
        self._api_queues: dict[str, QueueConfig] = {}
        self._suspended: set[str] = set()
        self.queues = QueueDirectory(config.queues, config.main_queue())
        self._runners: dict[str, QueueRunner] = {}
        # Sized beyond the total parallelism: a timed-out sync consumer keeps its thread.
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="consumer")
        self._intake = JobIntake(config.jobs, instance_id, self._ids, self._place)
        self.scheduler = Scheduler(self._schedule_store, self._intake.from_proto, self.wake_runners)
        self._retention = Retention(self.store, self.events, config.history, config.events)
        consumers.add_listener(self._on_consumers_changed)
        consumers.add_capacity_listener(self.wake_runners)  # refused claims may start now
        self.hold: Callable[[], Hold] = lambda: NO_HOLD
        """The jobs of other origins the runners leave QUEUED now (set by the offloader's lease)."""
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self.consumption = ConsumptionRules()
        """This node's topic consumption settings (see `apply_consumption`)."""
        self._placement: Placement = placement or LocalPlacement(instance_id)
        """Where jobs go that this node does not keep for itself (offloading; see placement.py)."""

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> tuple[int, int, int]:
        """Recover jobs a crash left ACTIVE, apply queue state, start running. Returns recovery counts."""
        recovered = await self.store.recover_after_crash(self.instance_id, now_us())
        for name, stored in (await self._queue_store.load()).items():
            if stored.suspended:
                self._suspended.add(name)
            if stored.config_json:
                self._api_queues[name] = QueueConfig.create(**json.loads(stored.config_json))
        self._rebuild_directory()
        self._started = True
        self._sync_runners()
        # Waiting jobs get this run's queues and consumers in the background, in bounded writes:
        # a journal of millions of jobs must not delay serving (AddJob, claims) until all moved.
        self._in_background(self._settle_waiting_jobs())
        self.scheduler.start()
        self._retention.start()
        return recovered

    async def stop(self, grace_s: float) -> None:
        """Stop taking jobs; give running ones `grace_s` to finish, then re-queue them."""
        self._started = False
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.scheduler.stop()
        await self._retention.stop()
        await asyncio.gather(*(runner.stop(grace_s) for runner in self._runners.values()))
        # Consumer threads that ignore is_stopped() cannot be killed; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def active_count(self) -> int:
        """Jobs running on this node now."""
        return sum(r.active_count for r in self._runners.values())

    @property
    def free_slots(self) -> int:
        """Job slots of this node's queues not taken now."""
        return max(0, sum(q.parallelism for q in self.queues.all()) - self.active_count)

    def _make_context(self, job: Job) -> JobContext:
        return JobContext(
            job,
            self.store,
            max_log_lines=self._config.jobs.max_log_lines,
            max_properties_bytes=self._config.jobs.max_properties_bytes,
        )

    def _sync_runners(self) -> None:
        """One runner per configured queue, with the current config and suspension."""
        if not self._started:
            return
        wanted = {q.name: q for q in self.queues.all()}
        for name, config in wanted.items():
            runner = self._runners.get(name)
            if runner is None:
                runner = QueueRunner(
                    self.store,
                    self.consumers,
                    self.instance_id,
                    config,
                    self._executor,
                    self._make_context,
                    suspended=name in self._suspended,
                    hold=lambda: self.hold(),
                )
                self._runners[name] = runner
                runner.start()
            else:
                runner.reconfigure(config)
                runner.set_suspended(name in self._suspended)
        # A queue whose config was deleted keeps its runner until its jobs moved; harmless.

    def wake_runners(self, _job_ids: Sequence[str] = ()) -> None:
        """Let every queue runner look for new work now."""
        for runner in self._runners.values():
            runner.wake()

    @property
    def idle(self) -> bool:
        """Nothing to do: no background assignment pending, every runner waiting to be woken."""
        return not self._background and all(runner.idle for runner in self._runners.values())

    # --- adding ----------------------------------------------------------------------------

    def queue_suspended(self, name: str) -> bool:
        """True while the queue called `name` is suspended."""
        return name in self._suspended

    def _place(self, topic: str) -> tuple[QueueConfig, str | None]:
        """The queue of a new job of `topic`, and its target (None: unassigned)."""
        queue = self.queues.for_topic(topic)
        return queue, self._target_for(topic, queue.name)

    def _target_for(self, topic: str, queue: str | None = None) -> str | None:
        local = self.consumers.find(topic) is not None and self.consumption.allows(topic)
        if queue is None:
            return self.instance_id if local else None
        config = self.queues.get(queue)
        # The origin runs the job itself when its queue prefers the creating instance (the main
        # queue does by default) or keeps order; otherwise it competes with the remote consumers.
        if local and (
            config is None or config.prefer_run_on_creation_instance or config.type is QueueType.ORDERED
        ):
            return self.instance_id
        return self._placement.choose(
            topic,
            config,
            suspended=queue in self._suspended,
            local_free_slots=self.free_slots if local else None,
        )

    @property
    def max_payload_bytes(self) -> int:
        """Largest payload a job may carry."""
        return self._config.jobs.max_payload_bytes

    async def add_job(
        self,
        topic: str,
        properties: Mapping[str, object] | None = None,
        payload: bytes | None = None,
        *,
        dedup_key: str = "",
        max_retries: int | None = None,
        retry_delay_s: float | None = None,
        timeout_s: float | None = None,
    ) -> Job:
        """Add one job from Python values; returns it once committed (an existing one on a dedup hit)."""
        record = self._intake.from_values(
            topic,
            properties,
            payload,
            dedup_key=dedup_key,
            max_retries=max_retries,
            retry_delay_s=retry_delay_s,
            timeout_s=timeout_s,
        )
        (added,) = await self._commit([record])  # answered as `_answer` does
        return await self.store.get_job(added.id) if added.deduplicated else record.as_committed()

    async def add_proto_jobs_each(
        self, new_jobs: Sequence[jobs_pb2.NewJob]
    ) -> list[tuple[Job, bool] | Exception]:
        """Validate and add jobs from the wire, each on its own but in one journal operation: per
        job, in order, it as committed and whether it existed, or why it alone was refused."""
        checked = self._intake.each_from_protos(new_jobs, "job")
        records = [r for r in checked if isinstance(r, NewJobRecord)]
        self._wake_for(records)
        added = iter(await self.store.add_jobs_each(records))
        return [
            record if isinstance(record, JobmeshError) else await self._answer(record, next(added))
            for record in checked
        ]

    async def _answer(
        self, record: NewJobRecord, added: AddedJob | Exception
    ) -> tuple[Job, bool] | Exception:
        """A job added from the wire, answered: a new one from its record, a dedup hit read back."""
        if isinstance(added, Exception):
            return added
        if not added.deduplicated:
            return record.as_committed(), False
        try:
            return await self.store.get_job(added.id), True
        except JobmeshError as e:  # e.g. removed since
            return e

    async def add_proto_jobs(
        self, new_jobs: Sequence[jobs_pb2.NewJob], field: str = "jobs"
    ) -> list[AddedJob]:
        """Validate and add jobs from the wire, all or none; returns them in request order."""
        records = self._intake.from_protos(new_jobs, field)
        return await self._commit(records)

    async def _commit(self, records: list[NewJobRecord]) -> list[AddedJob]:
        self._wake_for(records)
        return await self.store.add_jobs(records)

    def _wake_for(self, records: list[NewJobRecord]) -> None:
        # Woken before the insert commits: the insert is queued before this first yields, and a
        # claim is a write behind it (one writer, in order): claimed in its commit or the next.
        for name in {r.queue for r in records if r.target is not None} & self._runners.keys():
            self._runners[name].wake()

    # --- reading ---------------------------------------------------------------------------

    async def get_job(
        self,
        job_id: str,
        *,
        include_payloads: bool = False,
        include_log: bool = False,
        inline_limit: int | None = None,
    ) -> Job:
        """The job with `job_id` (JobNotFound if there is none); with `include_payloads`, its
        payloads of at most `inline_limit` bytes (None: all)."""
        return await self.store.get_job(
            job_id, include_payloads=include_payloads, include_log=include_log, inline_limit=inline_limit
        )

    async def get_payload(self, job_id: str, kind: int) -> bytes | None:
        """A job's verified payload of `kind` (PAYLOAD_INPUT/OUTPUT; None: it has none);
        JobNotFound for an unknown job, PayloadDamaged for a damaged one."""
        payload = await self.store.get_payload(job_id, kind)
        if payload is None:
            await self.store.get_job(job_id)  # JobNotFound when there is no such job at all
        return payload

    async def find_jobs(self, query: JobQuery) -> JobPage:
        """A page of jobs matching `query`."""
        return await self.store.find_jobs(query)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return await self.store.count_by_state()

    async def statistics(self) -> StatisticsReport:
        """Statistics: global, per queue, per topic."""
        return await read_statistics(self._journal, self.instance_id)

    def watch(self, after_seq: int, event_filter: EventFilter | None = None) -> AsyncIterator[EventBatch]:
        """Committed events after `after_seq` (-1: from now), then live ones, in batches."""
        return self.events.watch(after_seq, event_filter or EventFilter())

    def add_event_listener(self, listener: Callable[[list[JobEvent]], None]) -> Callable[[], None]:
        """Call `listener(events)` on the loop after each commit; returns a function that removes it."""
        return self._journal.add_event_listener(listener)

    # --- control ---------------------------------------------------------------------------

    async def stop_job(self, job_id: str) -> Job:
        """Stop a queued job now, or ask an active one to stop (it ends STOPPED when it returns)."""
        job = await self.store.stop(job_id, now_us())
        if job.state is JobState.ACTIVE:
            self.request_stop(job_id)
        return job

    def request_stop(self, job_id: str) -> None:
        """Tell the consumer running `job_id` here (if any) to stop."""
        for runner in self._runners.values():
            if runner.request_stop(job_id):
                return

    async def remove_job(self, job_id: str) -> Job | None:
        """Drop a queued or active job (returns it DROPPED), or delete a finished one (returns None)."""
        job = await self.store.remove(job_id, now_us())
        if job is not None:
            self.request_stop(job_id)
        return job

    async def retry_job(self, job_id: str) -> Job:
        """Queue a finished job again with its retry count reset."""
        current = await self.store.get_job(job_id)
        queue = self.queues.for_topic(current.topic).name
        job = await self.store.retry(job_id, self._target_for(current.topic), queue, now_us())
        self.wake_runners()
        return job

    async def purge(self, states: Sequence[JobState], older_than_s: float | None, keep_newest: int) -> int:
        """Delete finished jobs by state, age and count."""
        cutoff = None if older_than_s is None else now_us() - int(older_than_s * 1e6)
        return await self.store.purge(states or [s for s in JobState if s.is_finished], cutoff, keep_newest)

    # --- queues ----------------------------------------------------------------------------

    def _rebuild_directory(self) -> None:
        configs = {**self._file_queues, **self._api_queues}
        main = configs.pop(MAIN_QUEUE, self._config.main_queue())
        self.queues = QueueDirectory(configs.values(), main)

    def _source(self, name: str) -> str:
        if name in self._api_queues:
            return "api"
        return "config" if name in self._file_queues else "default"

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue with its state and counts."""
        counts: dict[tuple[str, JobState], int] = {}
        for queue, _topic, state, count in await self.store.live_counts():
            counts[(queue, state)] = counts.get((queue, state), 0) + count
        return [
            QueueInfo(
                config,
                self._source(config.name),
                config.name in self._suspended,
                counts.get((config.name, JobState.QUEUED), 0),
                counts.get((config.name, JobState.ACTIVE), 0),
            )
            for config in self.queues.all()
        ]

    async def queue_info(self, name: str) -> QueueInfo:
        """One queue (NotFound if unknown)."""
        for info in await self.list_queues():
            if info.config.name == name:
                return info
        raise NotFound(f"no queue named {name!r} on this node; `jobmesh queues` lists them")

    async def set_queue(self, config: QueueConfig) -> QueueInfo:
        """Create or replace a queue config over the API; persisted, applied at once."""
        await self._queue_store.save_config(config.name, config.to_json())
        self._api_queues[config.name] = config
        await self._apply_queue_change()
        return await self.queue_info(config.name)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue config set over the API."""
        if name not in self._api_queues:
            if self.queues.get(name) is None:
                raise NotFound(f"no queue named {name!r} on this node; `jobmesh queues` lists them")
            raise FailedPrecondition(
                f"queue {name!r} was not set over the API; only such queues can be deleted (file queues: edit the config)"
            )
        await self._queue_store.save_config(name, None)
        del self._api_queues[name]
        await self._apply_queue_change()

    async def _apply_queue_change(self) -> None:
        self._rebuild_directory()
        await self.store.reassign_queues(lambda topic: self.queues.for_topic(topic).name)
        self._sync_runners()

    async def suspend_queue(self, name: str, suspended: bool) -> QueueInfo:
        """Suspend (persisted; running jobs finish) or resume a queue."""
        if self.queues.get(name) is None:
            raise NotFound(f"no queue named {name!r} on this node; `jobmesh queues` lists them")
        await self._queue_store.set_suspended(name, suspended)
        (self._suspended.add if suspended else self._suspended.discard)(name)
        runner = self._runners.get(name)
        if runner is not None:
            runner.set_suspended(suspended)
        return await self.queue_info(name)

    async def clear_queue(self, name: str) -> int:
        """Drop every QUEUED job of a queue."""
        if self.queues.get(name) is None:
            raise NotFound(f"no queue named {name!r} on this node; `jobmesh queues` lists them")
        return await self.store.clear_queue(name, now_us())

    # --- schedules -------------------------------------------------------------------------

    async def add_schedule(
        self, name: str, job: jobs_pb2.NewJob, rules: Sequence[schedules_pb2.ScheduleRule]
    ) -> StoredSchedule:
        """Add a schedule."""
        return await self.scheduler.add(name, job, rules)

    async def list_schedules(self) -> list[StoredSchedule]:
        """Every schedule."""
        return await self._schedule_store.all()

    async def get_schedule(self, schedule_id: str) -> StoredSchedule:
        """One schedule."""
        return await self._schedule_store.get(schedule_id)

    async def remove_schedule(self, schedule_id: str) -> None:
        """Remove a schedule."""
        if not await self._schedule_store.remove(schedule_id):
            raise NotFound(f"no schedule with id {schedule_id!r} on this node")

    async def suspend_schedule(self, schedule_id: str, suspended: bool) -> StoredSchedule:
        """Suspend or resume a schedule."""
        return await self.scheduler.set_suspended(schedule_id, suspended)

    # --- consumers -------------------------------------------------------------------------------

    def _on_consumers_changed(self) -> None:
        if self._started:

            async def assign() -> None:
                await self._assign_local()
                self.wake_runners()
                await self._placement.consumers_changed()

            self._in_background(assign())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._background.discard)

    async def _settle_waiting_jobs(self) -> None:
        """At start: move QUEUED jobs to the queues and consumers of this run, waking the runners
        after each step."""
        try:
            await self.store.reassign_queues(lambda topic: self.queues.for_topic(topic).name)
            self.wake_runners()
            await self._assign_local(after_each=self.wake_runners)
        except Unavailable:
            return  # stopping: the next start does it
        except Exception:
            log.exception("assigning this node's waiting jobs at start failed")

    async def _assign_local(self, after_each: Callable[[], None] | None = None) -> int:
        rules = self.consumption
        return await self.store.assign_unassigned(
            self.instance_id,
            self.consumers.patterns,
            [TopicPattern.parse(p) for p in rules.disabled],
            [TopicPattern.parse(p) for p in rules.exclusive],
            after_each=after_each,
        )

    async def apply_consumption(self, rules: ConsumptionRules) -> None:
        """Apply new topic consumption settings: queued jobs this node may no longer take are
        unassigned (an origin's own go to other instances), newly allowed ones assigned here."""
        self.consumption = rules
        if self._started:
            await self._assign_local()
            self.wake_runners()
