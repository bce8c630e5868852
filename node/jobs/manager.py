"""The job manager: add, get, find, stop, remove and retry jobs (Sling's JobManager)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from jobmesh.v1 import jobs_pb2

from node.config import JobsConfig
from node.errors import InvalidArgument, ResourceExhausted
from node.jobs.consumers import ConsumerRegistry
from node.jobs.model import Job, JobState
from node.jobs.runner import QueueRunner, QueueSettings, now_us
from node.journal.ids import JobIdGenerator
from node.journal.journal import JobPage, JobQuery, Journal, NewJobRecord
from node.properties import encode_properties, encode_proto_properties
from node.topics import validate_topic

MAIN_QUEUE = "main"
MAX_JOBS_PER_ADD = 10_000


class JobManager:
    """Adds and controls the jobs of one node and runs them with its consumers.

    Event-loop contract: coroutines run on the node's loop; `consumers` may be changed at
    any time from the loop.
    """

    def __init__(
        self, journal: Journal, consumers: ConsumerRegistry, config: JobsConfig, instance_id: str
    ) -> None:
        self._journal = journal
        self.consumers = consumers
        self._config = config
        self.instance_id = instance_id
        self._ids = JobIdGenerator()
        self._executor = ThreadPoolExecutor(max_workers=config.max_parallel, thread_name_prefix="consumer")
        self._runner = QueueRunner(
            journal,
            consumers,
            instance_id,
            QueueSettings(MAIN_QUEUE, config.max_parallel, config.retry_delay_s),
            self._executor,
        )
        consumers.add_listener(self._on_consumers_changed)
        self._started = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[int, int, int]:
        """Recover jobs a crash left ACTIVE, assign waiting jobs, start running. Returns recovery counts."""
        recovered = await self._journal.recover_after_crash(self.instance_id, now_us())
        await self._journal.assign_unassigned(self.instance_id, self.consumers.patterns)
        self._runner.start()
        self._started = True
        return recovered

    async def stop(self, grace_s: float) -> None:
        """Stop taking jobs; give running ones `grace_s` to finish, then re-queue them."""
        if self._started:
            await self._runner.stop(grace_s)
        # Consumer threads that ignore is_stopped() cannot be killed; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def active_count(self) -> int:
        """Jobs running on this node now."""
        return self._runner.active_count

    # --- adding ----------------------------------------------------------------------------

    def _target_for(self, topic: str) -> str | None:
        return self.instance_id if self.consumers.find(topic) is not None else None

    def _check_payload(self, payload: bytes, field: str) -> None:
        limit = self._config.max_payload_bytes
        if len(payload) > limit:
            raise InvalidArgument(
                f"{field} is {len(payload)} bytes; the limit is {limit} bytes (jobs.max_payload_bytes)"
            )

    async def add_job(
        self, topic: str, properties: Mapping[str, object] | None = None, payload: bytes | None = None
    ) -> Job:
        """Add one job from Python values; returns it as committed (QUEUED)."""
        validate_topic(topic)
        props = encode_properties(properties or {}, "properties", self._config.max_properties_bytes)
        if payload:
            self._check_payload(payload, "payload")
        record = self._record(self._ids.next_id(), topic, props, payload or None, now_us())
        await self._commit([record])
        # Built from the record, not read back: no reader round trip per add.
        return record.as_committed()

    async def add_proto_job(self, new_job: jobs_pb2.NewJob, field: str = "job") -> Job:
        """Validate and add one job from the wire; returns it as committed (QUEUED)."""
        (record,) = await self._add_proto([new_job], field)
        return record.as_committed()

    async def add_proto_jobs(self, new_jobs: Sequence[jobs_pb2.NewJob], field: str = "jobs") -> list[str]:
        """Validate and add jobs from the wire, all or none; returns their ids in order."""
        return [record.id for record in await self._add_proto(new_jobs, field)]

    async def _add_proto(self, new_jobs: Sequence[jobs_pb2.NewJob], field: str) -> list[NewJobRecord]:
        if len(new_jobs) > MAX_JOBS_PER_ADD:
            raise ResourceExhausted(
                f"{len(new_jobs)} jobs in one call; send at most {MAX_JOBS_PER_ADD} per call"
            )
        ids = self._ids.next_ids(len(new_jobs))
        created = now_us()
        max_props = self._config.max_properties_bytes
        records = []
        for index, (job_id, new) in enumerate(zip(ids, new_jobs, strict=True)):
            where = f"{field}[{index}]" if field == "jobs" else field
            validate_topic(new.topic, f"{where}.topic")
            props = encode_proto_properties(new.properties, f"{where}.properties", max_props)
            if new.payload:
                self._check_payload(new.payload, f"{where}.payload")
            records.append(self._record(job_id, new.topic, props, new.payload or None, created))
        await self._commit(records)
        return records

    def _record(
        self, job_id: str, topic: str, props: str | None, payload: bytes | None, created: int
    ) -> NewJobRecord:
        return NewJobRecord(
            id=job_id,
            topic=topic,
            properties_json=props,
            queue=MAIN_QUEUE,
            origin=self.instance_id,
            target=self._target_for(topic),
            max_retries=self._config.retries,
            created_us=created,
            payload=payload,
        )

    async def _commit(self, records: list[NewJobRecord]) -> None:
        await self._journal.add_jobs(records)
        if any(r.target is not None for r in records):
            self._runner.wake()

    # --- reading ---------------------------------------------------------------------------

    async def get_job(self, job_id: str, *, include_payloads: bool = False) -> Job:
        """The job with `job_id` (JobNotFound if there is none)."""
        return await self._journal.get_job(job_id, include_payloads=include_payloads)

    async def find_jobs(self, query: JobQuery) -> JobPage:
        """A page of jobs matching `query`."""
        return await self._journal.find_jobs(query)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return await self._journal.count_by_state()

    # --- control ---------------------------------------------------------------------------

    async def stop_job(self, job_id: str) -> Job:
        """Stop a queued job now, or ask an active one to stop (it ends STOPPED when it returns)."""
        job = await self._journal.stop(job_id, now_us())
        if job.state is JobState.ACTIVE:
            self._runner.request_stop(job_id)
        return job

    async def remove_job(self, job_id: str) -> Job | None:
        """Drop a queued or active job (returns it DROPPED), or delete a finished one (returns None)."""
        job = await self._journal.remove(job_id, now_us())
        if job is not None:
            self._runner.request_stop(job_id)
        return job

    async def retry_job(self, job_id: str) -> Job:
        """Queue a finished job again with its retry count reset."""
        current = await self._journal.get_job(job_id)
        job = await self._journal.retry(job_id, self._target_for(current.topic), now_us())
        self._runner.wake()
        return job

    def _on_consumers_changed(self) -> None:
        if self._started:

            async def assign() -> None:
                await self._journal.assign_unassigned(self.instance_id, self.consumers.patterns)
                self._runner.wake()

            task = asyncio.get_running_loop().create_task(assign())
            self._background.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._background.discard)
