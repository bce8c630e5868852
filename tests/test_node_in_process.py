"""The Node API in-process: consumers, the journal and the queue runner, on a real SQLite file.

These tests run on the test's own event loop (see conftest: async tests, task-leak check) and
fail if the node leaves threads behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

import node
from node.node import JOURNAL_FILE
from node.transport import client_transport
from tests.support.in_process import job_in_state
from tests.support.waiting import async_wait_for

TIMEOUT_S = 10.0


class Gate:
    """An async consumer whose attempts block until the test opens their gate (or a stop comes)."""

    def __init__(self, outcome: node.JobResult) -> None:
        self.outcome = outcome
        self.contexts: list[node.JobContext] = []
        self.gates: list[asyncio.Event] = []
        self.tasks: list[asyncio.Task[Any]] = []  # the runner's task of each attempt

    async def process(self, job: node.Job, context: node.JobContext) -> node.JobResult:
        gate = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        self.contexts.append(context)
        self.gates.append(gate)
        self.tasks.append(task)
        await gate.wait()
        return self.outcome

    async def wait_started(self, count: int) -> None:
        async def check() -> bool:
            return len(self.contexts) >= count

        await async_wait_for(check, what=f"attempt {count} to start")


async def test_python_api_adds_a_job_that_a_registered_consumer_runs(tmp_path: Path) -> None:
    # Given a node with a sync consumer registered from Python
    seen: list[dict[str, object]] = []

    def consumer(job: node.Job, context: node.JobContext) -> node.JobResult:
        seen.append(dict(job.properties))
        return node.JobResult.succeeded("ok", output=job.payload)

    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["api/**"], consumer)

        # When a job is added through the Python API
        job = await n.jobs.add_job("api/thing", {"width": 100, "tags": ["a", "b"]}, payload=b"in")

        # Then it runs with its properties and payload
        assert job.state in (node.JobState.QUEUED, node.JobState.ACTIVE)
        done = await job_in_state(n, job.id, node.JobState.SUCCEEDED)
        assert seen == [{"width": 100, "tags": ["a", "b"]}]
        assert (await n.jobs.get_job(job.id, include_payloads=True)).output_payload == b"in"
        assert n.identity is not None
        assert done.origin_instance == done.target_instance == n.identity.id


async def test_python_api_validates_like_the_wire(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        with pytest.raises(node.InvalidArgument, match="topic is empty"):
            await n.jobs.add_job("")
        with pytest.raises(node.InvalidArgument, match="not supported"):
            await n.jobs.add_job("a/b", {"x": object()})
        with pytest.raises(node.InvalidArgument, match="does not fit in 64 bits"):
            await n.jobs.add_job("a/b", {"x": 2**63})
        with pytest.raises(node.JobNotFound):
            await n.jobs.get_job("nope")
        assert await n.jobs.count_by_state() == {}


async def test_acknowledged_job_is_committed_when_add_returns(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        job = await n.jobs.add_job("durable/x", {"k": "v"})

        # A separate connection (another reader of the file) sees the row at once
        with sqlite3.connect(tmp_path / JOURNAL_FILE) as conn:
            rows = conn.execute("SELECT topic, state FROM jobs WHERE id = ?", (job.id,)).fetchall()
        conn.close()
        assert rows == [("durable/x", int(node.JobState.QUEUED))]


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        before = n.journal.commit_count

        jobs = await asyncio.gather(*(n.jobs.add_job("group/x", {"i": i}) for i in range(200)))

        commits = n.journal.commit_count - before
        assert len({j.id for j in jobs}) == 200
        assert commits < 100, f"200 concurrent adds took {commits} commits"


async def test_a_new_jobs_claim_is_queued_behind_its_insert_before_the_insert_commits(tmp_path: Path) -> None:
    config = node.NodeConfig.for_tests(tmp_path)
    config = replace(config, history=replace(config.history, purge_interval_s=60.0))  # no other writes
    async with node.Node(config) as n:
        # Given an idle consumer of the topic, and the journal's writer held up by an operation
        n.consumers.register(["soon/**"], lambda job, context: node.JobResult.succeeded())
        warm_up = await n.jobs.add_job("soon/warm-up")  # the runner claimed, ran and went idle
        await job_in_state(n, warm_up.id, node.JobState.SUCCEEDED)
        # (the job's state is read before the runner's last claim, and the registration's own
        # assignment may still wake it: either would be a claim stuck behind the held writer)
        await async_wait_for(lambda: n.jobs.idle, what="the node to have nothing to do")
        await n.journal.write(lambda conn: None)  # and no other write waits
        held, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            held.set()
            release.wait(TIMEOUT_S)

        holding = asyncio.ensure_future(n.journal.write(hold))
        await async_wait_for(held.is_set, what="the writer to be held")
        before = n.journal.queued_writes
        # When a job is added
        adding = asyncio.ensure_future(n.jobs.add_job("soon/x"))
        try:
            # Then its queue's runner claims at once: the claim waits behind the insert, to run
            # in the insert's group commit (or the next), not after the insert committed
            await async_wait_for(
                lambda: n.journal.queued_writes >= before + 2, what="the insert and the claim queued"
            )
        finally:
            release.set()
            await holding
        job = await adding
        await job_in_state(n, job.id, node.JobState.SUCCEEDED)


async def test_consumer_registered_later_takes_the_jobs_waiting_for_it(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        # Given jobs added while nobody consumes their topic
        waiting = [await n.jobs.add_job("later/x") for _ in range(3)]
        assert all(j.target_instance is None for j in waiting)

        # When a consumer for the topic is registered
        async def consumer(job: node.Job, context: node.JobContext) -> None:
            return None

        n.consumers.register(["later/*"], consumer)

        # Then every waiting job runs
        for job in waiting:
            await job_in_state(n, job.id, node.JobState.SUCCEEDED)


async def test_most_specific_consumer_pattern_wins(tmp_path: Path) -> None:
    def named(label: str) -> Callable[[node.Job, node.JobContext], node.JobResult]:
        return lambda job, context: node.JobResult.succeeded(label)

    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["img/**"], named("descendants"))
        n.consumers.register(["img/resize/*"], named("children"))
        n.consumers.register(["img/resize/big"], named("exact"))
        cases = {
            "img/resize/big": "exact",
            "img/resize/small": "children",
            "img/resize/small/x": "descendants",
            "img/crop": "descendants",
        }
        ids = {topic: (await n.jobs.add_job(topic)).id for topic in cases}

        for topic, label in cases.items():
            job = await job_in_state(n, ids[topic], node.JobState.SUCCEEDED)
            assert job.result_message == label, topic


async def test_result_of_an_attempt_whose_job_was_removed_is_discarded(tmp_path: Path) -> None:
    # Given an active job whose consumer will report success whatever happens
    gate = Gate(node.JobResult.succeeded("late success"))
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["fence/*"], gate.process)
        job = await n.jobs.add_job("fence/x")
        await gate.wait_started(1)

        # When the job is removed, and only then its consumer reports success
        dropped = await n.jobs.remove_job(job.id)
        assert dropped is not None
        assert dropped.state is node.JobState.DROPPED
        assert gate.contexts[0].is_stopped(), "removal asks the consumer to stop"
        gate.gates[0].set()

        # Then, once the attempt is over (its result committed or discarded), the job is still DROPPED
        async def attempt_over() -> bool:
            return gate.tasks[0].done()

        await async_wait_for(attempt_over, what="the attempt to end")
        final = await n.jobs.get_job(job.id)
        assert final.state is node.JobState.DROPPED
        assert final.result_message == "removed by a user"


async def test_stale_attempt_ending_does_not_lose_track_of_the_jobs_new_attempt(tmp_path: Path) -> None:
    release_first = asyncio.Event()
    attempts: list[tuple[asyncio.Task[Any], node.JobContext]] = []

    async def consumer(job: node.Job, context: node.JobContext) -> node.JobResult:
        task = asyncio.current_task()
        assert task is not None
        attempts.append((task, context))
        if len(attempts) == 1:
            await release_first.wait()  # the first attempt ignores is_stopped()
            return node.JobResult.succeeded("stale")
        while not context.is_stopped():  # noqa: ASYNC110 - a thread-safe flag, nothing to await
            await asyncio.sleep(0.01)
        return node.JobResult.failed("stopped")

    async def started(count: int) -> bool:
        return len(attempts) >= count

    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["stale/*"], consumer)
        # Given a job removed while active, then retried, so that a second attempt runs
        job = await n.jobs.add_job("stale/x")
        await async_wait_for(lambda: started(1), what="the first attempt")
        await n.jobs.remove_job(job.id)
        await n.jobs.retry_job(job.id)
        await async_wait_for(lambda: started(2), what="the second attempt")

        # When the first (stale) attempt finally returns, and its result is discarded
        release_first.set()
        first_task = attempts[0][0]

        async def first_over() -> bool:
            return first_task.done()

        await async_wait_for(first_over, what="the stale attempt to end")
        assert (await n.jobs.get_job(job.id)).state is node.JobState.ACTIVE

        # Then the node still tracks the second attempt: a stop reaches its consumer
        assert n.jobs.active_count == 1
        assert (await n.jobs.stop_job(job.id)).stop_requested
        final = await job_in_state(n, job.id, node.JobState.STOPPED)
        assert final.result_message == "stopped"
        assert attempts[1][1].is_stopped()


def stored_job(data_dir: Path, job_id: str) -> tuple[int, int, str | None]:
    """(state, retry_count, target) of a job, read straight from the journal file."""
    conn = sqlite3.connect(data_dir / JOURNAL_FILE)
    try:
        row = conn.execute("SELECT state, retry_count, target FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (int(row[0]), int(row[1]), row[2])
    finally:
        conn.close()


async def test_close_requeues_a_job_still_running_after_the_grace(tmp_path: Path) -> None:
    # Given a job whose async consumer never returns on its own
    forever = asyncio.Event()

    async def stuck(job: node.Job, context: node.JobContext) -> None:
        await forever.wait()

    n = node.Node(node.NodeConfig.for_tests(tmp_path))
    await n.start()
    n.consumers.register(["stuck/*"], stuck)
    job = await n.jobs.add_job("stuck/x")
    await job_in_state(n, job.id, node.JobState.ACTIVE)

    # When the node closes with a short grace
    await n.close(grace_s=0.1)

    # Then the job is QUEUED again, and the cut-short attempt is not counted as a failure
    assert stored_job(tmp_path, job.id)[:2] == (int(node.JobState.QUEUED), 0)
    # And a node with a working consumer runs it
    again = node.Node(node.NodeConfig.for_tests(tmp_path))
    again.consumers.register(["stuck/*"], lambda job, context: None)
    async with again:
        done = await job_in_state(again, job.id, node.JobState.SUCCEEDED)
        assert done.retry_count == 0


async def test_queued_jobs_whose_consumer_is_gone_after_a_restart_wait_unassigned(tmp_path: Path) -> None:
    # Given a job assigned to this node's consumer, still QUEUED when the node stopped
    forever = asyncio.Event()

    async def stuck(job: node.Job, context: node.JobContext) -> None:
        await forever.wait()

    first = node.Node(node.NodeConfig.for_tests(tmp_path))
    first.consumers.register(["gone/*"], stuck)
    async with first:
        job = await first.jobs.add_job("gone/x")
        await job_in_state(first, job.id, node.JobState.ACTIVE)
        await first.close(grace_s=0.0)
    state, _, target = stored_job(tmp_path, job.id)
    assert first.identity is not None
    assert (state, target) == (int(node.JobState.QUEUED), first.identity.id)

    # When the node starts again without a consumer for the topic
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as again:
        # Then the job waits unassigned instead of failing attempts for want of a consumer
        # (waiting jobs are settled in the background just after the start)
        async def unassigned() -> bool:
            return (await again.jobs.get_job(job.id)).target_instance is None

        await async_wait_for(unassigned, what="the job to be unassigned")
        waiting = await again.jobs.get_job(job.id)
        assert waiting.state is node.JobState.QUEUED
        # And runs, without a failure counted, once a consumer is registered
        again.consumers.register(["gone/*"], lambda job, context: None)
        done = await job_in_state(again, job.id, node.JobState.SUCCEEDED)
        assert done.retry_count == 0


async def test_object_with_async_call_is_run_as_an_async_consumer(tmp_path: Path) -> None:
    class Handler:
        async def __call__(self, job: node.Job, context: node.JobContext) -> node.JobResult:
            await asyncio.sleep(0)
            return node.JobResult.succeeded("awaited")

    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["callable/*"], Handler())
        job = await n.jobs.add_job("callable/x")

        done = await job_in_state(n, job.id, node.JobState.SUCCEEDED, node.JobState.ERROR)
        assert (done.state, done.result_message) == (node.JobState.SUCCEEDED, "awaited")


async def test_second_node_on_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)):
        with pytest.raises(node.JobmeshError, match="in use"):
            await node.Node(node.NodeConfig.for_tests(tmp_path)).start()


async def test_grpc_client_on_the_test_loop_talks_to_an_in_process_node(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["aio/*"], lambda job, context: node.JobResult.succeeded("via grpc.aio"))
        # A client of this machine: the data dir's client certificate and admin token (the
        # node's own certificate grants reading only).
        client = client_transport({"JOBMESH_DATA_DIR": str(tmp_path)})
        async with client.create_channel(n.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            added = await stub.AddJob(jobs_pb2.AddJobRequest(job=jobs_pb2.NewJob(topic="aio/x")))

            async def succeeded() -> jobs_pb2.Job | None:
                job = (await stub.GetJob(jobs_pb2.GetJobRequest(job_id=added.job.id))).job
                return job if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else None

            job = await async_wait_for(succeeded, what="SUCCEEDED over gRPC")
            assert isinstance(job, jobs_pb2.Job)
            assert job.result_message == "via grpc.aio"
