"""Remote workers: consumers that run in other processes and get their jobs over a stream.

`RemoteWorkers` keeps the workers connected to this node. Each worker declares topic
patterns and a concurrency; while it is connected the node has a consumer for each of its
patterns (shared by every worker that declared the same pattern). That consumer's handler
picks a worker with a free slot among all connected workers whose patterns match the
job's topic (least loaded first, then the one idle longest), hands the job to it and waits
for the worker's result. A worker never has more jobs than its concurrency, and a job stays
QUEUED while every matching worker is busy: the queue runners claim only what the workers'
free slots admit (`RemoteWorkers.admission`, through `ConsumerRegistry.admission`), so ACTIVE
means a worker holds the job, and the attempt timeout starts when the job is sent
(`JobContext.mark_dispatched`). At the timeout the worker gets a `Stop` (the context's stop
listener) and the attempt ends only when the worker answers or disconnects: its slot, still
taken by the assignment, is not reused meanwhile (see `QueueRunner._execute_within`). Two queues claiming for the same last slot at once is the one
case where a claimed job still waits here, ACTIVE, for the next free slot.

Bounds (the `workers` settings): a registered concurrency above `max_concurrency` is
clamped to it; a job is not sent to a worker while the input payload bytes of its jobs
without a result, plus this job's, would exceed `max_inflight_bytes` (a worker holding
nothing always gets its next job, however large), so a worker that never reads cannot make
the node hold more than that for it.

When a worker's connection breaks, its consumers go (unless another worker declared the
same patterns) and its unfinished jobs end as FAILED with the queue's retry delay: they are
re-queued with retry count + 1 and run after that delay on another worker, or wait for one
to connect. So a worker that connects and disconnects in a loop cannot spend a job's
retries faster than its retry policy allows.

The transport (gRPC, `node.services.workers`) talks to a `RemoteWorker` through its outbox
of `Assign`/`Stop` commands and its `complete`/`context_for` methods; nothing here knows
protos, so an in-memory transport can drive it in tests.

Event-loop contract: every method runs on the node's event loop. Stop requests may come
from any thread; they are handed to the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from node.errors import ConsumerGone, InvalidArgument, Unavailable
from node.jobs.consumers import Admit, Consumer, ConsumerRegistry, find_consumer
from node.jobs.context import JobContext
from node.model.job import Job, JobResult
from node.topics import TopicPattern

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 10_000
"""The largest concurrency a registration may name (the `workers.max_concurrency` setting clamps it)."""
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
MAX_PATTERNS = 256
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class Assign:
    """Command for the transport: send this job (one attempt) to the worker."""

    job: Job


@dataclass(frozen=True)
class Stop:
    """Command for the transport: ask the worker to end this attempt early."""

    job_id: str
    attempt: int
    reason: str


Command = Assign | Stop


@dataclass
class _Assignment:
    job: Job
    context: JobContext
    result: asyncio.Future[JobResult]
    stop_sent: bool = False


@dataclass(eq=False)
class RemoteWorker:
    """One connected worker: its declaration, its outstanding jobs and its outbox."""

    id: str
    name: str
    patterns: tuple[TopicPattern, ...]
    concurrency: int
    outbox: asyncio.Queue[Command] = field(default_factory=asyncio.Queue, repr=False)
    """Commands for the transport, in order."""
    closing: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set when the node shuts down: the transport ends the stream."""
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    """Most payload bytes of jobs without a result this worker may hold (one job always fits)."""
    connected: bool = True
    last_assigned: int = 0
    inflight_bytes: int = 0
    """Input payload bytes of the jobs sent to the worker whose result has not come back."""
    connected_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    """When the worker connected (unix time, microseconds)."""
    _assignments: dict[tuple[str, int], _Assignment] = field(default_factory=dict, repr=False)

    @property
    def outstanding(self) -> int:
        """Jobs sent to the worker whose result has not come back (stopped ones included)."""
        return len(self._assignments)

    @property
    def free_slots(self) -> int:
        """How many more jobs the worker may be sent now."""
        return self.concurrency - len(self._assignments) if self.connected else 0

    def fits(self, job: Job) -> bool:
        """True when sending `job` keeps the worker within its payload bytes in flight."""
        if not self._assignments:
            return True
        return self.inflight_bytes + _payload_bytes(job) <= self.max_inflight_bytes

    def holds(self, job: Job) -> bool:
        """True while the worker still holds an earlier attempt of `job` with the same number
        (a user retried it after that attempt was re-queued at a shutdown that the worker
        outlived): its late reports must not pass for the new attempt's, so the new one goes
        elsewhere or waits. (A timed-out attempt never gets here: the runner ends it only once
        the worker answered it or went away.)"""
        return (job.id, job.attempt) in self._assignments

    def accepts(self, topic: str) -> bool:
        """True when one of the worker's patterns matches `topic`."""
        return any(p.matches(topic) for p in self.patterns)

    def context_for(self, job_id: str, attempt: int) -> JobContext | None:
        """The context of an outstanding attempt (None: unknown or no longer outstanding)."""
        assignment = self._assignments.get((job_id, attempt))
        return None if assignment is None else assignment.context

    def complete(self, job_id: str, attempt: int, result: JobResult) -> bool:
        """The worker's result for an attempt; frees its slot. False if it was not outstanding."""
        assignment = self._assignments.pop((job_id, attempt), None)
        if assignment is None:
            return False
        self.inflight_bytes -= _payload_bytes(assignment.job)
        if not assignment.result.done():  # done: the node shut down, the attempt was cancelled
            assignment.result.set_result(result)
        return True

    async def run(self, job: Job, context: JobContext) -> JobResult:
        """Send `job` to the worker (a slot must be free) and wait for its result."""
        loop = asyncio.get_running_loop()
        key = (job.id, job.attempt)
        assignment = _Assignment(job, context, loop.create_future())
        self._assignments[key] = assignment
        self.inflight_bytes += _payload_bytes(job)
        self.outbox.put_nowait(Assign(job))

        def on_stop() -> None:  # any thread
            loop.call_soon_threadsafe(
                self._stop,
                key,
                "stop requested: the job was stopped or removed, or the node is shutting down",
            )

        context.add_stop_listener(on_stop)
        try:
            return await assignment.result
        except asyncio.CancelledError:
            # The node is shutting down (a timeout does not cancel: the runner sends the stop
            # through the context and waits for the worker's answer). The worker is still busy
            # with the job, so its slot stays taken until it reports (its late result is ignored).
            self._stop(key, "the node is shutting down")
            raise

    def _stop(self, key: tuple[str, int], reason: str) -> None:
        assignment = self._assignments.get(key)
        if assignment is None or assignment.stop_sent or not self.connected:
            return
        assignment.stop_sent = True
        self.outbox.put_nowait(Stop(key[0], key[1], reason))

    def fail_all(self, message: str) -> int:
        """End every outstanding attempt as failed, retried after the queue's retry delay (never
        sooner: a connect/disconnect loop must not spend retries faster than the policy);
        returns how many."""
        failed = 0
        for assignment in self._assignments.values():
            if not assignment.result.done():
                assignment.result.set_result(JobResult.failed(message))
                failed += 1
        self._assignments.clear()
        self.inflight_bytes = 0
        return failed


def _payload_bytes(job: Job) -> int:
    return len(job.payload) if job.payload else 0


class RemoteWorkers:
    """The remote workers connected to one node, registered as consumers of their patterns."""

    def __init__(
        self,
        consumers: ConsumerRegistry,
        *,
        max_concurrency: int = MAX_CONCURRENCY,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    ) -> None:
        """`max_concurrency` clamps each registration; `max_inflight_bytes` bounds the payload
        bytes of one worker's jobs without a result (the `workers` settings)."""
        self._consumers = consumers
        self._max_concurrency = max_concurrency
        self._max_inflight_bytes = max_inflight_bytes
        self._workers: list[RemoteWorker] = []
        self._pools: dict[str, tuple[Consumer, int]] = {}  # pattern -> (consumer, worker count)
        self._ids = itertools.count(1)
        self._assignments = itertools.count(1)
        self._capacity_changed = asyncio.Event()
        self._closed = False
        # job id -> (topic, payload bytes): claimed for a pool, not yet sent
        self._pending: dict[str, tuple[str, int]] = {}
        consumers.capacity = self

    @property
    def workers(self) -> Sequence[RemoteWorker]:
        """The connected workers, oldest first."""
        return tuple(self._workers)

    def connect(self, name: str, patterns: Sequence[str], concurrency: int) -> RemoteWorker:
        """Validate a registration and register the worker as a consumer of its patterns."""
        if self._closed:
            raise Unavailable("the node is shutting down; connect again when it is back")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"register.name has {len(name)} characters; at most {MAX_NAME_CHARS}")
        if not patterns:
            raise InvalidArgument(
                "register.topics is empty; name at least one topic pattern such as 'images/**'"
            )
        if len(patterns) > MAX_PATTERNS:
            raise InvalidArgument(f"register.topics has {len(patterns)} patterns; at most {MAX_PATTERNS}")
        parsed = tuple(TopicPattern.parse(p) for p in patterns)  # names the bad pattern
        if concurrency == 0:
            concurrency = 1
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidArgument(
                f"register.concurrency is {concurrency}; use 1..{MAX_CONCURRENCY} (0 means 1)"
            )
        if concurrency > self._max_concurrency:
            log.info(
                "remote worker %r registered concurrency %d; clamped to workers.max_concurrency %d",
                name,
                concurrency,
                self._max_concurrency,
            )
            concurrency = self._max_concurrency
        number = next(self._ids)
        worker = RemoteWorker(
            f"w{number}",
            name or f"worker-{number}",
            parsed,
            concurrency,
            max_inflight_bytes=self._max_inflight_bytes,
        )
        self._workers.append(worker)
        for pattern in dict.fromkeys(p.text for p in parsed):
            consumer, count = self._pools.get(pattern, (None, 0))
            if consumer is None:
                consumer = self._consumers.register(
                    [pattern], self._handle, name=f"remote:{pattern}", dispatches=True
                )
            self._pools[pattern] = (consumer, count + 1)
        self._notify()
        log.info(
            "remote worker %s (%s) connected: topics %s, concurrency %d",
            worker.id,
            worker.name,
            ", ".join(p.text for p in parsed),
            concurrency,
        )
        return worker

    def disconnect(self, worker: RemoteWorker, reason: str) -> None:
        """Forget a worker whose stream ended; its unfinished jobs are re-queued (retry count + 1)."""
        if not worker.connected:
            return
        worker.connected = False
        self._workers.remove(worker)
        # Unregister first: a re-queued job must not find this worker's consumer again.
        for pattern in dict.fromkeys(p.text for p in worker.patterns):
            consumer, count = self._pools[pattern]
            if count > 1:
                self._pools[pattern] = (consumer, count - 1)
            else:
                del self._pools[pattern]
                self._consumers.unregister(consumer)
        failed = worker.fail_all(f"remote worker {worker.name} ({worker.id}) disconnected: {reason}")
        self._notify()
        log.info(
            "remote worker %s (%s) disconnected (%s); %d jobs re-queued",
            worker.id,
            worker.name,
            reason,
            failed,
        )

    def close(self) -> None:
        """The node shuts down: refuse new workers and ask the transport to end every stream."""
        self._closed = True
        for worker in self._workers:
            worker.closing.set()

    def _notify(self) -> None:
        """Wake the jobs waiting for a free worker slot and the queue runners: capacity or
        membership changed."""
        self._capacity_changed.set()
        self._capacity_changed = asyncio.Event()
        self._closed = False
        self._consumers.capacity_changed()

    # --- Capacity (node.jobs.consumers): what a queue runner's claim may start ---

    def admission(self, consumers: Sequence[Consumer]) -> Admit | None:
        """An `Admit` for one claim: a job whose consumer is a remote pool is admitted while a
        matching worker has a slot, and room for its payload, left in this snapshot of the free
        slots and payload bytes, less those of jobs claimed before and not yet sent (None: no
        pools). So a job that must wait for a worker's payload room stays QUEUED too."""
        pools = {consumer for consumer, _count in self._pools.values()}
        if not pools:
            return None
        workers = [worker for worker in self._workers if worker.free_slots > 0]
        slots = [worker.free_slots for worker in workers]
        held = [worker.outstanding for worker in workers]
        room = [worker.max_inflight_bytes - worker.inflight_bytes for worker in workers]
        pooled: dict[str, bool] = {}  # topic -> served by a pool (this snapshot's own cache)

        def admit(topic: str, payload_bytes: int) -> bool:  # writer thread: this snapshot only
            bounded = pooled.get(topic)
            if bounded is None:
                bounded = pooled[topic] = find_consumer(consumers, topic) in pools
            if not bounded:
                return True
            for index, worker in enumerate(workers):
                fits = held[index] == 0 or payload_bytes <= room[index]  # one job always fits
                if slots[index] and fits and worker.accepts(topic):
                    slots[index] -= 1
                    held[index] += 1
                    room[index] -= payload_bytes
                    return True
            return False

        for topic, payload_bytes in list(self._pending.values()):
            admit(topic, payload_bytes)
        return admit

    def claimed(self, jobs: Sequence[Job]) -> None:
        """Jobs a claim started whose consumer is a pool: pending until sent or ended."""
        pools = {consumer for consumer, _count in self._pools.values()}
        for job in jobs:
            if self._consumers.find(job.topic) in pools:
                self._pending[job.id] = (job.topic, job.payload_size)

    def settled(self, job_id: str) -> None:
        """The job was sent to a worker, or its attempt ended."""
        self._pending.pop(job_id, None)

    def _pick(self, job: Job) -> RemoteWorker | None:
        """A matching worker with a free slot and room for the job's payload (and not holding an
        earlier attempt of it): least loaded, then idle longest. ConsumerGone if none matches."""
        best: RemoteWorker | None = None
        best_key: tuple[float, int] | None = None
        matching = False
        topic = job.topic
        for worker in self._workers:
            if not worker.accepts(topic):
                continue
            matching = True
            if worker.free_slots <= 0 or not worker.fits(job) or worker.holds(job):
                continue
            key = (worker.outstanding / worker.concurrency, worker.last_assigned)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        if not matching:
            raise ConsumerGone(f"no remote worker for topic {topic} is connected any more")
        return best

    def complete(self, worker: RemoteWorker, job_id: str, attempt: int, result: JobResult) -> bool:
        """A worker's result for an attempt; frees its slot. False if it was not outstanding."""
        if not worker.complete(job_id, attempt, result):
            return False
        self._notify()
        return True

    async def _handle(self, job: Job, context: JobContext) -> JobResult:
        """The consumer handler of every remote pattern: run `job` on a free matching worker."""
        loop = asyncio.get_running_loop()
        listening = False
        while True:
            if context.is_stopped():
                return JobResult.failed("stopped before a remote worker took the job")
            changed = self._capacity_changed
            worker = self._pick(job)
            if worker is not None:
                break
            if not listening:  # a stop must end the wait too

                def on_stop() -> None:  # any thread
                    loop.call_soon_threadsafe(self._notify)

                context.add_stop_listener(on_stop)
                listening = True
            await changed.wait()
        worker.last_assigned = next(self._assignments)
        self._pending.pop(job.id, None)  # its slot is taken for real now
        context.mark_dispatched()  # the attempt timeout starts now
        return await worker.run(job, context)
