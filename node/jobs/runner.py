"""Queue runners: claim due jobs from the journal and run their consumers.

One runner per queue. It keeps at most the queue's parallelism of jobs running, claims jobs
in batches (one group-committed transaction for many) in the order its queue type asks
for, applies the attempt timeout (ending an attempt only once nothing runs it any more: one
attempt of a job at a time), and writes each result through the journal's writer,
which commits many results together. No job is held in memory beyond the running ones.

A claim is a write transaction on the journal's single writer, so a runner claims when woken
(new or re-queued jobs), when a job is due, and when a slot frees while the last claim filled
every slot; not when a job ends on a queue whose last claim left slots empty (nothing else was
due): that was two claims for nothing per job, two of every three a lightly loaded node made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from node.errors import ConsumerGone, JobmeshError, PayloadDamaged, StorageUnavailable, Unavailable
from node.instance import now_us
from node.jobs.consumers import Consumer, ConsumerRegistry
from node.jobs.context import Deferred, JobContext
from node.jobs.processes import ProcessAttempt, ProcessPool
from node.jobs.threads import ThreadResults
from node.journal.claims import NO_HOLD, Hold
from node.journal.jobs import JobStore
from node.journal.records import AttemptReport
from node.model.job import Job, JobResult, Outcome
from node.model.queues import QueueConfig, QueueType, SyncIsolation
from node.waits import wait_event

log = logging.getLogger(__name__)

CLAIM_RETRY_S = 1.0
"""How long a queue whose claim failed (a full or failing disk) waits before it claims again."""


@dataclass
class _Running:
    job: Job
    context: JobContext
    task: asyncio.Task[None]
    finishing: bool = False  # the consumer returned; its result is being committed


ContextFactory = Callable[[Job], JobContext]


class QueueRunner:
    """Runs the jobs of one queue that are assigned to this instance.

    Event-loop contract: every method must be called on the node's event loop; consumers
    run in the thread pool (sync) or on the loop (async).
    """

    def __init__(
        self,
        store: JobStore,
        consumers: ConsumerRegistry,
        instance_id: str,
        config: QueueConfig,
        executor: ThreadPoolExecutor,
        make_context: ContextFactory,
        *,
        suspended: bool = False,
        hold: Callable[[], Hold] = lambda: NO_HOLD,
    ) -> None:
        self._store = store
        self._hold = hold
        """Which jobs of other origins to leave QUEUED now (their lease lapsed, see lease.py)."""
        self._consumers = consumers
        self._instance_id = instance_id
        self.config = config
        self._executor = executor
        self._make_context = make_context
        self.suspended = suspended
        self._running: dict[str, _Running] = {}
        self._report_batch: tuple[list[AttemptReport], asyncio.Future[list[bool]]] | None = None
        self._thread_results: ThreadResults | None = None
        self._wakeup = asyncio.Event()
        self._drained = False
        """The last claim took fewer jobs than it had slots for, and nothing has woken the runner
        since: no job is due that a freed slot could take (those due later have the timer)."""
        self._waiting = False
        self._claims_failing = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_topic = ""
        self._pool: ProcessPool | None = None
        """Worker processes for sync consumers while the queue isolates them (sync_isolation)."""
        self._old_pools: list[ProcessPool] = []  # retired by a reconfiguration; closed at stop
        self._process_attempts: dict[str, ProcessAttempt] = {}  # job id -> attempt in a process

    @property
    def name(self) -> str:
        """The queue's name."""
        return self.config.name

    @property
    def active_count(self) -> int:
        """Jobs whose consumer is running now."""
        return sum(1 for running in self._running.values() if not running.finishing)

    @property
    def idle(self) -> bool:
        """It waits to be woken (or for a job to be due): no claim in flight, none of its jobs running."""
        return self._waiting and not self._running

    def start(self) -> None:
        """Start claiming and running jobs."""
        self._thread_results = ThreadResults(asyncio.get_running_loop(), self._executor)
        self._sync_pool()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"queue-{self.name}")

    def wake(self) -> None:
        """New or re-queued jobs may be due, or the config changed: look again now."""
        self._drained = False
        self._wakeup.set()

    def _slot_freed(self) -> None:
        """A job's consumer returned: claim again, unless the queue had nothing more to give."""
        # While a claim is in flight (not waiting) the slot is not needed: a claim that fills its
        # slots claims again anyway, and one that does not found nothing more due.
        if self._waiting and not self._drained:
            self._wakeup.set()

    def reconfigure(self, config: QueueConfig) -> None:
        """Apply a new configuration (takes effect for the next jobs claimed)."""
        self.config = config
        self._sync_pool()
        self.wake()

    def _sync_pool(self) -> None:
        """Start, resize or retire the worker processes as the config's sync_isolation says."""
        isolated = self.config.sync_isolation is SyncIsolation.PROCESS
        if isolated and self._pool is None:
            self._pool = ProcessPool(self.name, self.config.parallelism)
        elif isolated and self._pool is not None:
            self._pool.resize(self.config.parallelism)
        elif self._pool is not None:  # running jobs finish in their processes
            self._pool.retire()
            self._old_pools.append(self._pool)
            self._pool = None

    def set_suspended(self, suspended: bool) -> None:
        """Suspend (running jobs finish, none starts) or resume."""
        self.suspended = suspended
        self.wake()

    def request_stop(self, job_id: str) -> bool:
        """Tell a running job's consumer to stop; False if it is not running here."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.context.request_stop()
        return True

    async def stop(self, grace_s: float) -> None:
        """Take no more jobs; let running ones finish for `grace_s`, then re-queue the rest."""
        # Not cancel(): a dispatcher cancelled while its claim commits would lose the claimed
        # jobs (ACTIVE in the journal, run by nobody). It finishes the claim, starts what it
        # claimed (handled below like any running job) and then returns.
        self._stopping = True
        self.wake()
        if self._dispatcher is not None:
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._running:
            log.info(
                "queue %s: waiting up to %.1fs for %d running jobs", self.name, grace_s, len(self._running)
            )
            await asyncio.wait([r.task for r in self._running.values()], timeout=grace_s)
        leftovers = list(self._running.values())
        if leftovers:
            for running in leftovers:
                running.context.request_stop()
                attempt = self._process_attempts.get(running.job.id)
                if attempt is not None:
                    attempt.kill()  # a process need not be waited for, unlike a thread
                running.task.cancel()
            await asyncio.gather(*(r.task for r in leftovers), return_exceptions=True)
            requeued = await self._store.requeue_active(
                [(r.job.id, r.job.claim) for r in leftovers], now_us()
            )
            log.info("queue %s: re-queued %d jobs still running at shutdown", self.name, requeued)
        pools = [*self._old_pools, *([self._pool] if self._pool is not None else [])]
        self._pool, self._old_pools = None, []
        for pool in pools:  # no worker process outlives the node
            await asyncio.to_thread(pool.close)

    def _free_slots(self) -> int:
        if self.config.type is QueueType.ORDERED:
            # The next job may start only after the previous result committed: a failed job
            # must be back at the head before the queue looks at it again.
            return 1 - len(self._running)
        return self.config.parallelism - self.active_count

    async def _claim(self, free: int) -> tuple[list[Job], float | None]:
        """Claim up to `free` jobs; also how long to sleep if none is due (None: until woken)."""
        config, store, me = self.config, self._store, self._instance_id
        now = now_us()
        admit = self._consumers.admission()  # bounded consumers (remote workers): only their free slots
        hold = self._hold()  # asked at each claim: after a pause (SIGSTOP) a lease has lapsed at once
        if config.type is QueueType.ORDERED:
            jobs, head_due = await store.claim_ordered(me, config.name, now, admit, hold)
            return jobs, None if head_due is None else max(0.0, (head_due - now_us()) / 1e6)
        if config.type is QueueType.TOPIC_ROUND_ROBIN:
            jobs, due = await store.claim_round_robin(
                me, config.name, now, free, self._last_topic, admit, hold
            )
            if jobs:
                self._last_topic = jobs[-1].topic
        else:
            jobs, due = await store.claim(me, config.name, now, free, admit, hold)
        if len(jobs) == free:
            return jobs, 0.0
        return jobs, None if due is None else max(0.0, (due - now_us()) / 1e6)

    async def _dispatch(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            timeout: float | None = None
            free = self._free_slots()
            if free > 0 and not self.suspended:
                try:
                    jobs, timeout = await self._claim(free)
                except StorageUnavailable as e:  # a subclass: the journal is open, its disk is not
                    jobs, timeout = self._claim_failed(e)
                except Unavailable:
                    return  # the journal is closed: the node is shutting down
                except Exception as e:  # a full disk, a bug: this queue must not stop for good
                    jobs, timeout = self._claim_failed(e)
                else:
                    if self._claims_failing:
                        self._claims_failing = False
                        log.warning("queue %s: claiming jobs works again", self.name)
                # A wake() meanwhile left the event set: the claim runs again whatever this says.
                self._drained = len(jobs) < free
                self._consumers.claimed(jobs)  # before the next claim looks at free slots
                for job in jobs:
                    self._start(job)
                if jobs and timeout == 0.0:
                    continue  # there may be more; claim again as soon as slots free up
            if timeout == 0.0 or self._stopping:
                continue
            self._waiting = True
            try:
                await wait_event(self._wakeup, timeout)
            finally:
                self._waiting = False

    def _claim_failed(self, error: Exception) -> tuple[list[Job], float]:
        """Log a failed claim (once while they keep failing); it is tried again when woken, or
        after CLAIM_RETRY_S."""
        if not self._claims_failing:
            self._claims_failing = True
            log.error(
                "queue %s: claiming jobs failed (tried again every %gs): %s",
                self.name,
                CLAIM_RETRY_S,
                error,
                exc_info=not isinstance(error, JobmeshError),
            )
        return [], CLAIM_RETRY_S

    def _start(self, job: Job) -> None:
        context = self._make_context(job)
        task = asyncio.create_task(self._run(job, context), name=f"job-{job.id}")
        self._running[job.id] = _Running(job, context, task)
        if job.stop_requested:
            context.request_stop()

    async def _run(self, job: Job, context: JobContext) -> None:
        config, pool = self.config, self._pool
        succeeded = False  # else the attempt may have put a job back (a retry): claim again
        try:
            # A per-job timeout of 0 means none, even on a queue with a timeout.
            timeout_s = job.timeout_us / 1e6 if job.timeout_us is not None else config.timeout_s
            if timeout_s:
                result = await self._execute_within(job, context, timeout_s, pool)
            else:
                result = await self._execute(job, context, pool)
            if result is None:  # no consumer took the job: it waits for one, no retry spent
                if await self._release(job):
                    return
                result = JobResult.failed(f"stopped before a consumer for topic {job.topic} took it")
            running = self._running.get(job.id)
            if running is not None and running.context is context:
                running.finishing = True
                self._slot_freed()
            report = AttemptReport(
                job.id,
                job.claim,
                result.outcome,
                result.message,
                config,
                result.retry_delay_s,
                result.output,
                job.seq,
            )
            with contextlib.suppress(Unavailable):  # shutting down: stop() re-queues the job
                await asyncio.shield(self._report(report))  # shared by every report of the batch
            succeeded = result.outcome is Outcome.SUCCEEDED
        finally:
            # A job removed and retried while this attempt still ran has a newer attempt here.
            current = self._running.get(job.id)
            if current is not None and current.context is context:
                del self._running[job.id]
                self._consumers.settled(job.id)
            if succeeded:
                self._slot_freed()
            else:
                self.wake()

    async def _execute_within(
        self, job: Job, context: JobContext, timeout_s: float, pool: ProcessPool | None
    ) -> JobResult | None:
        """`_execute` with the attempt timeout, counted from dispatch: for a consumer that
        hands the job on (a remote worker), from when it was sent, not from the claim.

        At the timeout the consumer is told to stop (`JobContext.request_stop`). An async
        consumer is cancelled too, and a sync one in a worker process (`pool`) has its process
        killed. A sync one in a thread cannot be stopped, and a remote worker may still be busy
        with the job: the attempt ends only once the thread has returned or the worker answered
        or went away, so the job stays ACTIVE, its slot taken, and its retry cannot run beside
        the old attempt (one attempt of a job at a time, anywhere).
        """
        consumer = self._consumers.find(job.topic)
        # Only a coroutine on this loop can be cut off; anything running elsewhere is awaited.
        cancellable = consumer is not None and consumer.is_async and not consumer.dispatches
        # A worker process reports when it has the job: its start-up is not the job's time.
        isolated = pool is not None and consumer is not None and not consumer.is_async
        execution = asyncio.ensure_future(self._execute(job, context, pool))
        deadline: asyncio.Timeout | None = None
        try:
            if consumer is not None and (consumer.dispatches or isolated):
                dispatched: asyncio.Future[Any] = context.dispatched()
                await asyncio.wait([execution, dispatched], return_when=asyncio.FIRST_COMPLETED)
            deadline = asyncio.timeout(timeout_s)
            async with deadline:  # not wait_for: see docs/architecture.md
                result = await (execution if cancellable else asyncio.shield(execution))
            if not deadline.expired():
                return result
            # An async consumer that swallowed its cancellation: its late result does not count.
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise  # not ours (the consumer's own TimeoutError is a result, see _execute)
        except BaseException:
            if not execution.done():  # this attempt was cancelled (shutdown): so is its consumer
                execution.cancel()
            raise
        try:
            context.request_stop()
            attempt = self._process_attempts.get(job.id)
            if attempt is not None and attempt.kill():  # the hard time limit: ends the attempt now
                with contextlib.suppress(Exception):
                    await execution
                return JobResult.failed(f"timed out after {timeout_s:g}s (worker process killed)")
            if not execution.done():
                await self._await_overrun(job, execution, timeout_s)
            return JobResult.failed(f"timed out after {timeout_s:g}s")
        finally:
            if not execution.done():  # this attempt was cancelled (shutdown): so is its consumer
                execution.cancel()

    async def _await_overrun(
        self, job: Job, execution: asyncio.Future[JobResult | None], timeout_s: float
    ) -> None:
        """Wait for a timed-out consumer that was told to stop but runs on (logged once)."""
        log.warning(
            "queue %s: job %s (attempt %d) did not return at its %gs timeout; told to stop, it stays "
            "ACTIVE and is retried only once its consumer has returned",
            self.name,
            job.id,
            job.attempt,
            timeout_s,
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        with contextlib.suppress(Exception):  # its result no longer counts: the attempt timed out
            await execution
        log.info(
            "queue %s: job %s (attempt %d) returned %.1fs after its timeout",
            self.name,
            job.id,
            job.attempt,
            loop.time() - began,
        )

    async def _execute_in_process(
        self, pool: ProcessPool, consumer: Consumer, job: Job, context: JobContext
    ) -> object:
        """What a sync consumer returned in one of the queue's worker processes."""
        if consumer.spec is None:
            return JobResult.cancelled(
                f"consumer {consumer.name} cannot run in a worker process (queue {self.name} has "
                "sync_isolation = process): register a top-level function or class, or name it "
                "as package.module:callable"
            )
        loop = asyncio.get_running_loop()

        def dispatched() -> None:  # in the consumer thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(context.mark_dispatched)

        attempt = self._process_attempts[job.id] = ProcessAttempt()
        try:
            assert self._thread_results is not None, "QueueRunner.start() was not called"
            return await self._thread_results.run(pool.run, consumer.spec, job, context, attempt, dispatched)
        finally:
            if self._process_attempts.get(job.id) is attempt:
                del self._process_attempts[job.id]

    def _report(self, report: AttemptReport) -> asyncio.Future[list[bool]]:
        """Queue a result; all results reported in one pass of the loop commit as one operation."""
        if self._report_batch is None:
            loop = asyncio.get_running_loop()
            self._report_batch = ([], loop.create_future())
            loop.call_soon(self._flush_reports)
        self._report_batch[0].append(report)
        return self._report_batch[1]

    def _flush_reports(self) -> None:
        assert self._report_batch is not None
        reports, done = self._report_batch
        self._report_batch = None
        task = asyncio.ensure_future(self._store.end_attempts(reports, now_us()))

        def settle(task: asyncio.Future[list[bool]]) -> None:
            if done.cancelled():
                return
            if task.cancelled():
                done.cancel()
            elif task.exception() is not None:
                done.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                done.set_result(task.result())

        task.add_done_callback(settle)

    async def _release(self, job: Job) -> bool:
        """Put a job no consumer took back to QUEUED, unassigned; False if it was stopped meanwhile."""
        message = f"waiting for a consumer: none for topic {job.topic} on this node any more"
        try:
            released = await self._store.release_active(job.id, job.claim, now_us(), message)
        except Unavailable:
            return True  # shutting down: the job is recovered at the next start
        if released and self._consumers.find(job.topic) is not None:
            # A consumer registered while the release was being committed, so the assignment
            # its registration triggered did not see this job: assign it now.
            with contextlib.suppress(Unavailable):
                await self._store.assign_unassigned(self._instance_id, self._consumers.patterns)
            self.wake()
        return released

    async def _execute(self, job: Job, context: JobContext, pool: ProcessPool | None) -> JobResult | None:
        """The consumer's result; None when no consumer took the job (see `ConsumerGone`)."""
        consumer = self._consumers.find(job.topic)
        if consumer is None:
            log.info("no consumer for topic %s any more; job %s waits for one", job.topic, job.id)
            return None
        try:
            if job.payload_size:
                try:
                    payload = await self._store.get_payload(job.id)
                except PayloadDamaged as e:
                    # The consumer never sees damaged bytes. No retry can mend them, so the job
                    # ends now in ERROR (CANCELLED) instead of spending its retries on the same bytes.
                    return JobResult.cancelled(str(e))
                job = replace(job, payload=payload)
                context.job = job
            if consumer.is_async:
                result = await consumer.handler(job, context)  # type: ignore[misc]
            elif pool is not None:
                result = await self._execute_in_process(pool, consumer, job, context)
            else:
                assert self._thread_results is not None, "QueueRunner.start() was not called"
                result = await self._thread_results.run(consumer.handler, job, context)
            if isinstance(result, Deferred):
                result = await asyncio.wrap_future(context.completion)
        except asyncio.CancelledError:
            raise
        except ConsumerGone:
            log.info("consumer %s went away before job %s started; it waits for one", consumer.name, job.id)
            return None
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
