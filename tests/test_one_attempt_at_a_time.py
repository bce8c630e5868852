"""One attempt of a job at a time, and attempt timeouts that stop (issue 13, point 8).

In-process Nodes (real SQLite) on the test's loop. Each kind of consumer meets its timeout:
an async one is cancelled; a sync one (a thread) is told to stop and its attempt ends, and
so its retry starts, only once the thread has returned; a remote worker gets a Stop and its
slot takes no other job until it answers or disconnects. The process-isolated queues
(`sync_isolation = "process"`) have their own tests in test_process_isolation.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

from node import Job, JobContext, JobResult, JobState, Node, NodeConfig
from node.jobs.remote import Assign, RemoteWorker, Stop
from tests.consumers import attempts
from tests.support.in_process import finished, job_in_state
from tests.support.job_calls import add_job, add_running_job, get_job, wait_for_state
from tests.support.launcher import NodeFactory
from tests.support.waiting import async_wait_for, wait_for
from tests.support.worker_stream import WorkerStream

BLOCK_S = 10.0  # a consumer the test forgets to release must not hold a thread for ever
GRACE_S = 2.0  # the test preset's server.shutdown_grace_s


def config_with(tmp_path: Path, *queues: dict[str, object]) -> NodeConfig:
    return NodeConfig.for_tests(tmp_path).with_overrides({"queues": json.dumps(list(queues))})


def timed_queue(timeout_s: float, **settings: object) -> dict[str, object]:
    return {"name": "timed", "topics": ["timed/**"], "timeout_s": timeout_s, "retry_delay_s": 0.01} | settings


async def test_a_sync_consumer_ignoring_the_stop_holds_its_job_until_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sync consumer whose first attempt ignores the stop and runs until released
    release = threading.Event()
    runs: list[tuple[int, float, float]] = []  # (attempt, start, end)
    contexts: list[JobContext] = []

    def consumer(job: Job, context: JobContext) -> JobResult:
        start = time.monotonic()
        contexts.append(context)
        if job.attempt == 1:
            release.wait(BLOCK_S)  # ignores context.is_stopped()
        runs.append((job.attempt, start, time.monotonic()))
        return JobResult.succeeded(f"attempt {job.attempt}")

    caplog.set_level(logging.WARNING, logger="node.jobs.runner")
    try:
        await _hold_and_release(tmp_path, consumer, release, runs, contexts, caplog)
    finally:
        release.set()  # a failed check must not leave the thread behind


async def _hold_and_release(
    tmp_path: Path,
    consumer: object,
    release: threading.Event,
    runs: list[tuple[int, float, float]],
    contexts: list[JobContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Node(config_with(tmp_path, timed_queue(0.2, retries=1))) as n:
        n.consumers.register(["timed/sync"], consumer)
        job = await n.jobs.add_job("timed/sync")

        # When its attempt times out
        await async_wait_for(lambda: bool(contexts) and contexts[0].is_stopped(), what="the timeout's stop")
        # Then the consumer was told to stop, and the job stays held (ACTIVE, its slot taken)
        # while the thread runs on: no retry starts beside it
        await asyncio.sleep(0.3)  # far beyond the retry delay: on the old code attempt 2 ran by now
        held = await n.jobs.get_job(job.id)
        assert (held.state, held.retry_count) == (JobState.ACTIVE, 0)
        assert n.jobs.active_count == 1
        assert len(contexts) == 1
        overrun = [r for r in caplog.records if "did not return" in r.getMessage()]
        assert len(overrun) == 1, [r.getMessage() for r in caplog.records]

        # When the thread returns at last
        release.set()
        done = await finished(n, job.id)

        # Then the timed-out attempt counted as failed only then, and the retry ran after it
        assert (done.state, done.retry_count, done.result_message) == (JobState.SUCCEEDED, 1, "attempt 2")
        (first, _first_start, first_end), (second, second_start, _) = sorted(runs)
        assert (first, second) == (1, 2)
        assert second_start >= first_end, "two attempts of one job ran at once"
        # And the overrun was logged once
        assert len([r for r in caplog.records if "did not return" in r.getMessage()]) == 1


async def test_the_timed_out_failure_of_a_sync_consumer_is_the_timeout_not_its_late_result(
    tmp_path: Path,
) -> None:
    # Given a sync consumer that returns success a little after its timeout, ignoring the stop
    def consumer(job: Job, context: JobContext) -> JobResult:
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return JobResult.succeeded("too late")

    async with Node(config_with(tmp_path, timed_queue(0.1, retries=0))) as n:
        n.consumers.register(["timed/late"], consumer)
        job = await n.jobs.add_job("timed/late")
        done = await finished(n, job.id)
    # Then the attempt ended as timed out, after the consumer returned
    assert (done.state, done.result_message) == (JobState.GIVEN_UP, "timed out after 0.1s")
    assert done.finished_us is not None
    assert done.started_us is not None
    assert done.finished_us - done.started_us >= 400_000


async def test_an_async_consumer_is_cancelled_at_its_timeout_before_its_retry_starts(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    async def consumer(job: Job, context: JobContext) -> JobResult:
        events.append(("start", job.attempt))
        try:
            await asyncio.sleep(BLOCK_S)
        except asyncio.CancelledError:
            events.append(("cancelled", job.attempt))
            raise
        return JobResult.succeeded("never")

    async with Node(config_with(tmp_path, timed_queue(0.2, retries=1))) as n:
        n.consumers.register(["timed/async"], consumer)
        job = await n.jobs.add_job("timed/async")
        done = await finished(n, job.id)
    # Then each attempt was cancelled at its timeout, and the next started only after that
    assert (done.state, done.retry_count, done.result_message) == (
        JobState.GIVEN_UP,
        2,
        "timed out after 0.2s",
    )
    assert events == [("start", 1), ("cancelled", 1), ("start", 2), ("cancelled", 2)]


async def test_an_async_consumer_that_swallows_the_cancellation_still_ends_timed_out(tmp_path: Path) -> None:
    async def consumer(job: Job, context: JobContext) -> JobResult:
        try:
            await asyncio.sleep(BLOCK_S)
        except asyncio.CancelledError:
            return JobResult.succeeded("swallowed the cancellation")
        return JobResult.succeeded("never")

    async with Node(config_with(tmp_path, timed_queue(0.1, retries=0))) as n:
        n.consumers.register(["timed/stubborn"], consumer)
        job = await n.jobs.add_job("timed/stubborn")
        done = await finished(n, job.id)
    assert (done.state, done.result_message) == (JobState.GIVEN_UP, "timed out after 0.1s")


async def test_a_node_stops_within_its_grace_while_a_timed_out_thread_runs_on(tmp_path: Path) -> None:
    release = threading.Event()
    stopped = threading.Event()

    def consumer(job: Job, context: JobContext) -> JobResult:
        while not release.wait(0.01):  # ignores the stop
            if context.is_stopped():
                stopped.set()
        return JobResult.succeeded("released")

    config = config_with(tmp_path, timed_queue(0.1, retries=1))
    try:
        # Given an attempt past its timeout whose thread runs on
        n = Node(config)
        await n.start()
        n.consumers.register(["timed/stuck"], consumer)
        job = await n.jobs.add_job("timed/stuck")
        await async_wait_for(stopped.is_set, what="the timeout's stop")
        # When the node stops, with a short grace
        began = time.monotonic()
        await n.close(grace_s=0.3)
        # Then the stuck thread does not hold it beyond its grace
        assert time.monotonic() - began < 0.3 + 1.0
    finally:
        release.set()
    # And the job was re-queued, its retry not spent on an attempt the stop interrupted
    async with Node(config) as again:  # (no consumer here: a claim of it releases it again)
        requeued = await job_in_state(again, job.id, JobState.QUEUED)
    assert requeued.retry_count == 0


# --- remote workers ---------------------------------------------------------------------------------------


async def next_command(worker: RemoteWorker) -> Assign | Stop:
    async with asyncio.timeout(10.0):
        return await worker.outbox.get()


async def no_command_for(worker: RemoteWorker, seconds: float) -> None:
    await asyncio.sleep(seconds)
    assert worker.outbox.empty(), f"the worker got {worker.outbox.get_nowait()}"


async def test_a_timed_out_remote_worker_gets_a_stop_and_its_slot_waits_for_its_answer(
    tmp_path: Path,
) -> None:
    async with Node(config_with(tmp_path, timed_queue(0.2, retries=1))) as n:
        # Given a worker with one slot, a job that will time out on it and another job waiting
        worker = n.workers.connect("w", ["timed/**"], concurrency=1)
        slow = await n.jobs.add_job("timed/remote", {"n": 1})
        assign = await next_command(worker)
        assert isinstance(assign, Assign)
        assert assign.job.id == slow.id
        other = await n.jobs.add_job("timed/remote", {"n": 2})

        # When the attempt times out, the worker gets a stop for it
        stop = await next_command(worker)
        assert isinstance(stop, Stop)
        assert (stop.job_id, stop.attempt) == (slow.id, 1)
        # Then, while it does not answer, its slot takes no job: neither the retry nor the other
        await no_command_for(worker, 0.4)
        assert (await n.jobs.get_job(slow.id)).state is JobState.ACTIVE
        assert (await n.jobs.get_job(other.id)).state is JobState.QUEUED
        assert worker.outstanding == 1

        # When it answers at last (any result), the timed-out failure is recorded and the slot is free
        assert n.workers.complete(worker, slow.id, 1, JobResult.succeeded("late"))
        failed = await async_wait_for(
            lambda: _retrying(n, slow.id), what="the timed-out attempt to be recorded as failed"
        )
        assert failed.result_message == "timed out after 0.2s"
        following = await next_command(worker)
        assert isinstance(following, Assign)
        n.workers.complete(worker, following.job.id, following.job.attempt, JobResult.succeeded())
        rest = slow.id if following.job.id == other.id else other.id
        last = await next_command(worker)
        assert isinstance(last, Assign)
        assert last.job.id == rest
        n.workers.complete(worker, last.job.id, last.job.attempt, JobResult.succeeded())
        for job_id in (slow.id, other.id):
            await job_in_state(n, job_id, JobState.SUCCEEDED)
        n.workers.disconnect(worker, "test over")


async def _retrying(n: Node, job_id: str) -> Job | None:
    job = await n.jobs.get_job(job_id)
    return job if job.retry_count == 1 else None


async def test_a_timed_out_attempt_on_a_silent_worker_is_retried_elsewhere_only_after_it_disconnects(
    tmp_path: Path,
) -> None:
    async with Node(config_with(tmp_path, timed_queue(0.2, retries=1))) as n:
        # Given a worker holding a job past its timeout, ignoring the stop, and a second idle worker
        silent = n.workers.connect("silent", ["timed/**"], concurrency=1)
        job = await n.jobs.add_job("timed/remote")
        assert isinstance(await next_command(silent), Assign)
        assert isinstance(await next_command(silent), Stop)
        idle = n.workers.connect("idle", ["timed/**"], concurrency=1)

        # Then the retry does not start on the idle worker while the first attempt may still run
        await no_command_for(idle, 0.4)
        assert (await n.jobs.get_job(job.id)).state is JobState.ACTIVE

        # When the silent worker disconnects, the attempt ends timed out and the retry goes to the other
        n.workers.disconnect(silent, "test: the silent worker goes")
        retry = await next_command(idle)
        assert isinstance(retry, Assign)
        assert (retry.job.id, retry.job.attempt) == (job.id, 2)
        n.workers.complete(idle, job.id, 2, JobResult.succeeded("second attempt"))
        done = await job_in_state(n, job.id, JobState.SUCCEEDED)
        assert done.retry_count == 1
        n.workers.disconnect(idle, "test over")


async def test_a_user_stop_of_a_remote_job_ends_it_stopped_with_the_workers_answer(tmp_path: Path) -> None:
    async with Node(config_with(tmp_path, timed_queue(30.0, retries=1))) as n:
        worker = n.workers.connect("w", ["timed/**"], concurrency=1)
        job = await n.jobs.add_job("timed/remote")
        assert isinstance(await next_command(worker), Assign)
        await n.jobs.stop_job(job.id)
        assert isinstance(await next_command(worker), Stop)
        n.workers.complete(worker, job.id, 1, JobResult.failed("stopped"))
        assert (await finished(n, job.id)).state is JobState.STOPPED
        n.workers.disconnect(worker, "test over")


def test_a_worker_over_grpc_that_ignores_the_timeouts_stop_gets_no_job_until_it_answers(
    nodes: NodeFactory,
) -> None:
    # Given a node process whose queue times attempts out after 0.3 s, and a worker with one slot
    queues = json.dumps([timed_queue(0.3, retries=1)])
    node = nodes.start("remote-timeout", settings={"queues": queues})
    worker = WorkerStream.connect(node.channel, "timed/**", concurrency=1)
    slow = add_job(node.stub, "timed/grpc", n=1)
    first = worker.take(slow)
    other = add_job(node.stub, "timed/grpc", n=2)

    # When the attempt times out, the worker gets a stop for it
    stop = worker.expect("stop")
    assert (stop.job_id, stop.attempt) == (slow, 1)
    # Then while it does not answer, nothing else comes into its slot and the job stays ACTIVE
    worker.assert_silent(0.5)
    assert get_job(node.stub, slow).state == jobs_pb2.JOB_STATE_ACTIVE
    assert get_job(node.stub, other).state == jobs_pb2.JOB_STATE_QUEUED

    # When it answers (late, and success), the attempt counts as timed out and the slot is free
    worker.result(first)
    following = worker.expect("assignment")
    worker.result(following)
    last = worker.expect("assignment")
    assert {(following.job_id, following.attempt), (last.job_id, last.attempt)} == {(slow, 2), (other, 1)}
    worker.result(last)
    done = wait_for_state(node.stub, slow, jobs_pb2.JOB_STATE_SUCCEEDED)
    assert done.retry_count == 1
    wait_for_state(node.stub, other, jobs_pb2.JOB_STATE_SUCCEEDED)
    worker.close()


def test_a_node_process_holds_a_timed_out_job_while_its_thread_runs_and_sigterm_still_ends_it(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a node process whose consumer ignores stops, on a queue timing out after 0.3 s
    queues = json.dumps([timed_queue(0.3, retries=1)])
    node = nodes.start("stuck", ["timed/**=consumers:block_ignoring_stop"], {"queues": queues})
    job_id, files = add_running_job(node.stub, "timed/stuck", tmp_path)
    # When its attempt outlives the timeout, the job stays ACTIVE and no second attempt starts
    wait_for(lambda: "did not return at its 0.3s timeout" in node.log_text(), what="the overrun warning")
    time.sleep(0.3)  # beyond the retry delay: on the old code attempt 2 had started by now
    held = get_job(node.stub, job_id)
    assert (held.state, held.retry_count) == (jobs_pb2.JOB_STATE_ACTIVE, 0)
    assert len(attempts(files.attempts)) == 1
    # And SIGTERM ends the node within its grace all the same, without a traceback
    began = time.monotonic()
    assert node.terminate() == 0
    assert time.monotonic() - began < GRACE_S + 1.0
    log = node.log_text()
    assert "Traceback" not in log
    assert log.count("did not return at its") == 1
