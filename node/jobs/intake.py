"""Intake: validating new jobs (Python values or wire protos) into records the journal inserts.

Every limit a new job must respect is checked here, with a message that names the field and
says what to send instead; the job's queue and target come from the manager's placement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from jobmesh.v1 import jobs_pb2

from node.config import JobsConfig
from node.durations import optional_seconds
from node.errors import JobmeshError, ResourceExhausted
from node.instance import now_us
from node.jobs.validation import JobLimits, check_job_options, check_payload
from node.journal.ids import JobIdGenerator
from node.journal.records import NewJobRecord
from node.model.queues import QueueConfig
from node.properties import encode_properties, encode_proto_properties
from node.topics import validate_topic

MAX_JOBS_PER_ADD = 10_000

Place = Callable[[str], tuple[QueueConfig, "str | None"]]
"""`place(topic)`: the queue of a new job of `topic` and its target (None: unassigned)."""


class JobIntake:
    """Builds validated `NewJobRecord`s for one node."""

    def __init__(self, config: JobsConfig, instance_id: str, ids: JobIdGenerator, place: Place) -> None:
        self._config = config
        self._instance_id = instance_id
        self._ids = ids
        self._place = place
        self._limits = JobLimits.of(config)

    def from_values(
        self,
        topic: str,
        properties: Mapping[str, object] | None,
        payload: bytes | None,
        *,
        dedup_key: str = "",
        max_retries: int | None = None,
        retry_delay_s: float | None = None,
        timeout_s: float | None = None,
    ) -> NewJobRecord:
        """A record from Python values (JobManager.add_job)."""
        validate_topic(topic)
        props = encode_properties(properties or {}, "properties", self._config.max_properties_bytes)
        if payload:
            self._check_payload(payload, "payload")
        return self._record(
            self._ids.next_id(),
            topic,
            props,
            payload or None,
            dedup_key=dedup_key,
            max_retries=max_retries,
            retry_delay_s=retry_delay_s,
            timeout_s=timeout_s,
        )

    def from_proto(self, new: jobs_pb2.NewJob, field: str, job_id: str | None = None) -> NewJobRecord:
        """A record from the wire; errors name `field` (e.g. `jobs[3]`)."""
        validate_topic(new.topic, f"{field}.topic")
        props = encode_proto_properties(
            new.properties, f"{field}.properties", self._config.max_properties_bytes
        )
        if new.payload:
            self._check_payload(new.payload, f"{field}.payload")
        return self._record(
            job_id or self._ids.next_id(),
            new.topic,
            props,
            new.payload or None,
            dedup_key=new.dedup_key,
            max_retries=new.max_retries if new.HasField("max_retries") else None,
            retry_delay_s=optional_seconds(new, "retry_delay", f"{field}.retry_delay"),
            timeout_s=optional_seconds(new, "timeout", f"{field}.timeout"),
            field=field,
        )

    def from_protos(self, new_jobs: Sequence[jobs_pb2.NewJob], field: str) -> list[NewJobRecord]:
        """Records from the wire, in order; at most MAX_JOBS_PER_ADD."""
        if len(new_jobs) > MAX_JOBS_PER_ADD:
            raise ResourceExhausted(
                f"{len(new_jobs)} jobs in one call; send at most {MAX_JOBS_PER_ADD} per call"
            )
        ids = self._ids.next_ids(len(new_jobs))
        return [
            self.from_proto(new, f"{field}[{index}]" if field == "jobs" else field, job_id)
            for index, (job_id, new) in enumerate(zip(ids, new_jobs, strict=True))
        ]

    def each_from_protos(
        self, new_jobs: Sequence[jobs_pb2.NewJob], field: str
    ) -> list[NewJobRecord | JobmeshError]:
        """A record for each job from the wire, in order, or why that job alone is refused."""
        checked: list[NewJobRecord | JobmeshError] = []
        for job_id, new in zip(self._ids.next_ids(len(new_jobs)), new_jobs, strict=True):
            try:
                checked.append(self.from_proto(new, field, job_id))
            except JobmeshError as e:
                checked.append(e)
        return checked

    def _check_payload(self, payload: bytes, field: str) -> None:
        check_payload(len(payload), self._limits, field)

    def _record(
        self,
        job_id: str,
        topic: str,
        props: str | None,
        payload: bytes | None,
        *,
        dedup_key: str = "",
        max_retries: int | None = None,
        retry_delay_s: float | None = None,
        timeout_s: float | None = None,
        field: str = "job",
    ) -> NewJobRecord:
        check_job_options(
            field,
            dedup_key=dedup_key,
            max_retries=max_retries,
            retry_delay_s=retry_delay_s,
            timeout_s=timeout_s,
        )
        queue, target = self._place(topic)
        return NewJobRecord(
            id=job_id,
            topic=topic,
            properties_json=props,
            queue=queue.name,
            origin=self._instance_id,
            target=target,
            max_retries=queue.retries if max_retries is None else max_retries,
            created_us=now_us(),
            payload=payload,
            dedup_key=dedup_key or None,
            retry_delay_us=None if retry_delay_s is None else int(retry_delay_s * 1e6),
            timeout_us=None if timeout_s is None else int(timeout_s * 1e6),
        )
