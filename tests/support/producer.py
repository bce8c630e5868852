"""A producer thread that adds jobs at a node steadily, with bursts on demand, through the
node's restarts: each AddJobs batch carries dedup keys and is retried until acknowledged, so a
batch cut by a kill -9 is added exactly once. Used by the chaos scenario (tests/support/chaos.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from .launcher import NodeProcess
from .protos import PropertyInput, new_job


class ProducerPlan(Protocol):
    """What the producer needs of a run's profile."""

    @property
    def jobs(self) -> int: ...
    @property
    def rate_per_s(self) -> float: ...
    @property
    def batch(self) -> int: ...
    @property
    def seed(self) -> int: ...


class Producer(threading.Thread):
    """Adds the run's jobs at the origin: steadily, plus bursts on demand. Retries a batch with
    the same dedup keys until the origin acknowledges it, so a batch cut by the origin's kill
    is added once (never twice, never lost)."""

    def __init__(
        self,
        origin: NodeProcess,
        profile: ProducerPlan,
        topic: str,
        properties: Mapping[str, PropertyInput],
    ) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.profile = profile
        self.topic = topic
        self.properties = dict(properties)
        self.channel = origin.client_transport().create_sync_channel(origin.address)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.ids: list[str] = []
        self.retried_batches = 0
        self.deduplicated = 0
        self.failed: BaseException | None = None
        self._bursts: list[int] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._open = True

    def burst(self, count: int) -> None:
        """Add `count` jobs now, before the steady flow goes on."""
        with self._lock:
            self._bursts.append(count)

    def finish(self) -> None:
        """The faults are over: add only what is left of the plan's count, then stop. Until
        this is called the steady flow goes on past that count, so work never runs out while
        a fault waits for jobs in flight."""
        self._open = False

    @property
    def done(self) -> bool:
        """True once finished and every planned job is added (or the producer failed)."""
        return (not self._open and len(self.ids) >= self.profile.jobs) or self.failed is not None

    def stop(self) -> None:
        """Stop adding and close the channel."""
        self._halt.set()
        self.join(30)
        self.channel.close()

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as e:
            self.failed = e

    def _produce(self) -> None:
        p = self.profile
        pause = p.batch / p.rate_per_s
        while (self._open or len(self.ids) < p.jobs) and not self._halt.is_set():
            with self._lock:
                burst = self._bursts.pop(0) if self._bursts else 0
            for start in range(0, max(burst, p.batch), p.batch):
                self._add(min(p.batch, burst - start) if burst else p.batch)
            if not burst:
                self._halt.wait(pause)

    def _add(self, count: int) -> None:
        first = len(self.ids)
        if not self._open:
            count = min(count, self.profile.jobs - first)
        if count <= 0:
            return
        jobs = [new_job(self.topic, b"", **self.properties) for _ in range(count)]
        for offset, job in enumerate(jobs):
            job.dedup_key = f"chaos-{self.profile.seed}-{first + offset}"
        request = jobs_pb2.AddJobsRequest(jobs=jobs)
        while not self._halt.is_set():
            try:
                response = self.stub.AddJobs(request, timeout=10)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                self.retried_batches += 1
                self._halt.wait(0.2)
                continue
            self.ids.extend(response.job_ids)
            self.deduplicated += sum(response.deduplicated)
            return
