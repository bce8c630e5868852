"""RemoteWorkers without gRPC: a test plays the transport through a worker's outbox.

Runs on the test's own event loop with an in-process Node (real SQLite), so it can look at
what the gRPC tests cannot: exactly which commands the node queued for a worker, and when.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import node
from node.errors import InvalidArgument, Unavailable
from node.jobs.remote import Assign, RemoteWorker, Stop
from tests.support.in_process import job_in_state
from tests.support.waiting import async_wait_for


async def next_command(worker: RemoteWorker) -> Assign | Stop:
    return await asyncio.wait_for(worker.outbox.get(), 10)


async def test_a_worker_gets_at_most_its_concurrency_and_each_result_frees_a_slot(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        worker = n.workers.connect("w", ["mem/**"], concurrency=2)
        ids = [(await n.jobs.add_job("mem/job", {"n": i})).id for i in range(3)]
        first, second = await next_command(worker), await next_command(worker)
        assert isinstance(first, Assign)
        assert isinstance(second, Assign)
        # The third stays QUEUED: no worker slot is free for it (ACTIVE means held)
        await asyncio.sleep(0.2)  # let the runner claim whatever it would claim
        assert (await n.jobs.get_job(ids[2])).state is node.JobState.QUEUED
        assert worker.outbox.empty()
        assert worker.outstanding == 2
        # A result frees a slot: the third is sent
        assert n.workers.complete(worker, first.job.id, first.job.attempt, node.JobResult.succeeded())
        third = await next_command(worker)
        assert isinstance(third, Assign)
        for command in (second, third):
            n.workers.complete(worker, command.job.id, command.job.attempt, node.JobResult.succeeded())
        for job_id in ids:
            await job_in_state(n, job_id, node.JobState.SUCCEEDED)
        n.workers.disconnect(worker, "test over")


async def test_a_stop_request_becomes_one_stop_command(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        worker = n.workers.connect("w", ["mem/stop"], concurrency=1)
        job = await n.jobs.add_job("mem/stop")
        assign = await next_command(worker)
        assert isinstance(assign, Assign)

        await n.jobs.stop_job(job.id)
        await n.jobs.stop_job(job.id)  # asked twice: still one stop command

        stop = await next_command(worker)
        assert isinstance(stop, Stop)
        assert (stop.job_id, stop.attempt) == (job.id, assign.job.attempt)
        n.workers.complete(worker, job.id, assign.job.attempt, node.JobResult.failed("stopped"))
        await job_in_state(n, job.id, node.JobState.STOPPED)
        assert worker.outbox.empty()
        n.workers.disconnect(worker, "test over")


async def test_disconnect_fails_unfinished_jobs_for_an_immediate_retry_and_unregisters_the_consumer(
    tmp_path: Path,
) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        worker = n.workers.connect("w", ["mem/gone"], concurrency=1)
        assert n.consumers.find("mem/gone") is not None
        job = await n.jobs.add_job("mem/gone")
        await next_command(worker)

        n.workers.disconnect(worker, "cable cut")

        assert n.consumers.find("mem/gone") is None

        async def requeued() -> bool:
            current = await n.jobs.get_job(job.id)
            return current.state is node.JobState.QUEUED and current.target_instance is None

        await async_wait_for(requeued, what="the job to wait, unassigned")
        current = await n.jobs.get_job(job.id)
        assert current.retry_count == 1
        assert "cable cut" in current.result_message


async def test_registrations_are_validated_and_refused_while_shutting_down(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        with pytest.raises(InvalidArgument, match=r"register\.topics is empty"):
            n.workers.connect("w", [], 1)
        with pytest.raises(InvalidArgument, match=r"register\.concurrency is 10001"):
            n.workers.connect("w", ["a"], 10_001)
        assert len(n.consumers) == 0, "a refused registration leaves no consumer behind"
        n.workers.close()
        with pytest.raises(Unavailable, match="shutting down"):
            n.workers.connect("w", ["a"], 1)
