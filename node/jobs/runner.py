"""The queue runner: claims due jobs from the journal and runs their consumers.

One runner per queue. It keeps at most `max_parallel` jobs running, claims jobs in
batches (one group-committed transaction for many), and writes each result through the
journal's writer, which commits many results together. No job is held in memory beyond
the ones running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from node.errors import Unavailable
from node.jobs.consumers import ConsumerRegistry, JobContext
from node.jobs.model import Job, JobResult, Outcome
from node.journal.journal import AttemptReport, Journal

log = logging.getLogger(__name__)


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class QueueSettings:
    """How a queue runs its jobs."""

    name: str
    max_parallel: int
    retry_delay_s: float


@dataclass
class _Running:
    job: Job
    context: JobContext
    task: asyncio.Task[None]
    finishing: bool = False  # the consumer returned; its result is being committed


class _ThreadResults:
    """Runs sync consumers in a thread pool and hands their results back to the loop in batches.

    `loop.run_in_executor` chains a concurrent future and wakes the loop (a write to its
    self-pipe) once per call; with many short jobs that dominates their cost. Here a pool
    thread queues its outcome and only the first outcome of a batch wakes the loop, which
    then resolves every queued one. Cancelling the returned future cancels the call if it
    has not started, as with `run_in_executor`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        self._loop = loop
        self._executor = executor
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._lock = threading.Lock()
        self._wakeup_pending = False

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call `function(*args)` in the pool (on the loop); the future resolves on the loop."""
        future: asyncio.Future[Any] = self._loop.create_future()
        work = self._executor.submit(self._call, future, function, *args)
        future.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
        return future

    def _call(self, future: asyncio.Future[Any], function: Callable[..., Any], *args: Any) -> None:
        # In a pool thread.
        try:
            outcome = (future, True, function(*args))
        except BaseException as e:  # handed to the awaiting task, as run_in_executor does
            outcome = (future, False, e)
        self._done.append(outcome)
        with self._lock:
            if self._wakeup_pending:
                return  # the pending _deliver takes this outcome too
            self._wakeup_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # On the loop. Clear the flag first: an outcome queued after this is either taken
        # below or schedules another _deliver.
        with self._lock:
            self._wakeup_pending = False
        done = self._done
        while done:
            future, ok, value = done.popleft()
            if future.done():  # cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class QueueRunner:
    """Runs the jobs of one queue that are assigned to this instance.

    Event-loop contract: every method must be called on the node's event loop; consumers
    run in `executor` (sync) or on the loop (async).
    """

    def __init__(
        self,
        journal: Journal,
        consumers: ConsumerRegistry,
        instance_id: str,
        settings: QueueSettings,
        executor: ThreadPoolExecutor,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self._journal = journal
        self._consumers = consumers
        self._instance_id = instance_id
        self.settings = settings
        self._executor = executor
        self._on_finished = on_finished
        self._running: dict[str, _Running] = {}
        self._thread_results: _ThreadResults | None = None
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def active_count(self) -> int:
        """Jobs whose consumer is running now."""
        return sum(1 for running in self._running.values() if not running.finishing)

    def start(self) -> None:
        """Start claiming and running jobs."""
        self._thread_results = _ThreadResults(asyncio.get_running_loop(), self._executor)
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"queue-{self.settings.name}")

    def wake(self) -> None:
        """New or re-queued jobs may be due: look again now."""
        self._wakeup.set()

    def request_stop(self, job_id: str) -> bool:
        """Tell a running job's consumer to stop; False if it is not running here."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.context.request_stop()
        return True

    async def stop(self, grace_s: float) -> None:
        """Take no more jobs; let running ones finish for `grace_s`, then re-queue the rest."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._running:
            log.info(
                "queue %s: waiting up to %.1fs for %d running jobs",
                self.settings.name,
                grace_s,
                len(self._running),
            )
            await asyncio.wait([r.task for r in self._running.values()], timeout=grace_s)
        leftovers = list(self._running.values())
        if leftovers:
            for running in leftovers:
                running.context.request_stop()
                running.task.cancel()
            await asyncio.gather(*(r.task for r in leftovers), return_exceptions=True)
            requeued = await self._journal.requeue_active([(r.job.id, r.job.attempt) for r in leftovers])
            log.info("queue %s: re-queued %d jobs still running at shutdown", self.settings.name, requeued)

    async def _dispatch(self) -> None:
        settings = self.settings
        while True:
            self._wakeup.clear()
            # A job whose consumer returned frees its slot at once: the next job is claimed
            # while its result commits (often in the same group commit), not after.
            free = settings.max_parallel - self.active_count
            timeout: float | None = None
            if free > 0:
                try:
                    jobs = await self._journal.claim(self._instance_id, settings.name, now_us(), free)
                except Unavailable:
                    return
                for job in jobs:
                    self._start(job)
                if len(jobs) == free:
                    continue  # there may be more; claim again as soon as slots free up
                due = await self._journal.next_due_us(self._instance_id, settings.name)
                if due is not None:
                    timeout = max(0.0, (due - now_us()) / 1e6)
            if timeout == 0.0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _start(self, job: Job) -> None:
        context = JobContext(job)
        task = asyncio.create_task(self._run(job, context), name=f"job-{job.id}")
        self._running[job.id] = _Running(job, context, task)
        if job.stop_requested:
            context.request_stop()

    async def _run(self, job: Job, context: JobContext) -> None:
        try:
            result = await self._execute(job, context)
            running = self._running.get(job.id)
            if running is not None and running.context is context:
                running.finishing = True
                self._wakeup.set()
            delay_s = self.settings.retry_delay_s if result.retry_delay_s is None else result.retry_delay_s
            report = AttemptReport(
                job.id, job.attempt, result.outcome, result.message, int(delay_s * 1e6), result.output
            )
            try:
                (finished,) = await self._journal.end_attempts([report], now_us())
            except Unavailable:
                return  # shutting down: the job is re-queued by stop()
            if finished is not None and self._on_finished is not None:
                self._on_finished(finished)
        finally:
            # A job removed and retried while this attempt still ran has a newer attempt here.
            current = self._running.get(job.id)
            if current is not None and current.context is context:
                del self._running[job.id]
            self._wakeup.set()

    async def _execute(self, job: Job, context: JobContext) -> JobResult:
        consumer = self._consumers.find(job.topic)
        if consumer is None:
            return JobResult.failed(f"no consumer for topic {job.topic} on this node any more")
        try:
            if job.payload_size:
                job = replace(job, payload=await self._journal.get_payload(job.id))
                context.job = job
            if consumer.is_async:
                result = await consumer.handler(job, context)  # type: ignore[misc]
            else:
                assert self._thread_results is not None, "QueueRunner.start() was not called"
                result = await self._thread_results.run(consumer.handler, job, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("consumer %s raised on job %s", consumer.name, job.id, exc_info=True)
            return JobResult(Outcome.CANCELLED, str(e) or type(e).__name__)
        if result is None:
            return JobResult.succeeded()
        if not isinstance(result, JobResult):
            return JobResult.cancelled(
                f"consumer {consumer.name} returned {type(result).__name__}; expected a JobResult or None"
            )
        return result
