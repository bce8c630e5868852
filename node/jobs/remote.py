"""Remote workers: consumers that run in other processes and get their jobs over a stream.

`RemoteWorkers` keeps the workers connected to this node. Each worker declares topic
patterns and a concurrency; while it is connected the node has a consumer for each of its
patterns (shared by every worker that declared the same pattern). That consumer's handler
picks a worker with a free slot among all connected workers whose patterns match the
job's topic (least loaded first, then the one idle longest), hands the job to it and waits
for the worker's result. A job waits inside the node while every matching worker is busy,
so a worker never has more jobs than its concurrency.

When a worker's connection breaks, its consumers go (unless another worker declared the
same patterns) and its unfinished jobs end as FAILED with no retry delay: they are
re-queued with retry count + 1 and run on another worker, or wait for one to connect.

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
from node.jobs.consumers import Consumer, ConsumerRegistry
from node.jobs.context import JobContext
from node.model.job import Job, JobResult
from node.topics import TopicPattern

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 10_000
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
    connected: bool = True
    last_assigned: int = 0
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
        if not assignment.result.done():  # done: the attempt timed out or the node shut down
            assignment.result.set_result(result)
        return True

    async def run(self, job: Job, context: JobContext) -> JobResult:
        """Send `job` to the worker (a slot must be free) and wait for its result."""
        loop = asyncio.get_running_loop()
        key = (job.id, job.attempt)
        assignment = _Assignment(job, context, loop.create_future())
        self._assignments[key] = assignment
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
            # The attempt timed out or the node is shutting down. The worker is still busy with
            # the job, so its slot stays taken until it reports (its late result is ignored).
            self._stop(key, "the attempt timed out or the node is shutting down")
            raise

    def _stop(self, key: tuple[str, int], reason: str) -> None:
        assignment = self._assignments.get(key)
        if assignment is None or assignment.stop_sent or not self.connected:
            return
        assignment.stop_sent = True
        self.outbox.put_nowait(Stop(key[0], key[1], reason))

    def fail_all(self, message: str) -> int:
        """End every outstanding attempt as failed, retried at once; returns how many."""
        failed = 0
        for assignment in self._assignments.values():
            if not assignment.result.done():
                assignment.result.set_result(JobResult.failed(message, retry_delay_s=0.0))
                failed += 1
        self._assignments.clear()
        return failed


class RemoteWorkers:
    """The remote workers connected to one node, registered as consumers of their patterns."""

    def __init__(self, consumers: ConsumerRegistry) -> None:
        self._consumers = consumers
        self._workers: list[RemoteWorker] = []
        self._pools: dict[str, tuple[Consumer, int]] = {}  # pattern -> (consumer, worker count)
        self._ids = itertools.count(1)
        self._assignments = itertools.count(1)
        self._capacity_changed = asyncio.Event()
        self._closed = False

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
        number = next(self._ids)
        worker = RemoteWorker(f"w{number}", name or f"worker-{number}", parsed, concurrency)
        self._workers.append(worker)
        for pattern in dict.fromkeys(p.text for p in parsed):
            consumer, count = self._pools.get(pattern, (None, 0))
            if consumer is None:
                consumer = self._consumers.register([pattern], self._handle, name=f"remote:{pattern}")
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
        """Wake the jobs waiting for a free worker slot: capacity or membership changed."""
        self._capacity_changed.set()
        self._capacity_changed = asyncio.Event()
        self._closed = False

    def _pick(self, topic: str) -> RemoteWorker | None:
        """A matching worker with a free slot: least loaded, then idle longest. ConsumerGone if none matches."""
        best: RemoteWorker | None = None
        best_key: tuple[float, int] | None = None
        matching = False
        for worker in self._workers:
            if not worker.accepts(topic):
                continue
            matching = True
            if worker.free_slots <= 0:
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
            worker = self._pick(job.topic)
            if worker is not None:
                break
            if not listening:  # a stop must end the wait too

                def on_stop() -> None:  # any thread
                    loop.call_soon_threadsafe(self._notify)

                context.add_stop_listener(on_stop)
                listening = True
            await changed.wait()
        worker.last_assigned = next(self._assignments)
        return await worker.run(job, context)
