"""ACTIVE means held (issue 13 point 7): a job is ACTIVE only once a consumer holds it; jobs
waiting for a free remote worker slot stay QUEUED, and their attempt timeout counts from
dispatch, not from the claim.

An in-process Node (real SQLite); the test plays the remote worker through its outbox.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import node
from node.jobs.remote import Assign, RemoteWorker
from tests.support.in_process import job_in_state
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

HISTORY = tuple(s for s in node.JobState if s.is_finished)


async def next_assign(worker: RemoteWorker) -> Assign:
    command = await asyncio.wait_for(worker.outbox.get(), 10)
    assert isinstance(command, Assign)
    return command


async def test_jobs_beyond_the_workers_slots_stay_queued_until_a_slot_frees(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        # Given the only worker holds 3 jobs at a time
        worker = n.workers.connect("w", ["held/**"], concurrency=3)
        # When 15 jobs are added
        ids = [(await n.jobs.add_job("held/job", {"n": i})).id for i in range(15)]
        held = [await next_assign(worker) for _ in range(3)]
        await asyncio.sleep(0.3)  # let the runner claim whatever it would claim

        # Then exactly the 3 the worker holds are ACTIVE; the other 12 wait QUEUED
        counts = await n.jobs.count_by_state()
        assert counts == {node.JobState.ACTIVE: 3, node.JobState.QUEUED: 12}
        assert worker.outbox.empty()

        # and each result frees a slot that the next job takes (ACTIVE once it is sent)
        n.workers.complete(worker, held[0].job.id, held[0].job.attempt, node.JobResult.succeeded())
        nxt = await next_assign(worker)
        assert (await n.jobs.get_job(nxt.job.id)).state is node.JobState.ACTIVE
        # (the finished job's result commits just after its slot was freed)
        expected = {node.JobState.SUCCEEDED: 1, node.JobState.ACTIVE: 3, node.JobState.QUEUED: 11}

        async def settled() -> bool:
            return await n.jobs.count_by_state() == expected

        await async_wait_for(settled, what=f"counts {expected}")

        # every job runs to the end, one slot at a time
        outstanding, assigned = [*held[1:], nxt], 4
        while outstanding:
            command = outstanding.pop(0)
            n.workers.complete(worker, command.job.id, command.job.attempt, node.JobResult.succeeded())
            if assigned < len(ids):
                outstanding.append(await next_assign(worker))
                assigned += 1
        for job_id in ids:
            await job_in_state(n, job_id, node.JobState.SUCCEEDED)
        n.workers.disconnect(worker, "test over")


async def test_the_attempt_timeout_counts_from_dispatch_not_from_the_wait_for_a_slot(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        # Given a worker with one slot and two jobs with a 2 s attempt timeout
        worker = n.workers.connect("w", ["slow/**"], concurrency=1)
        first = await n.jobs.add_job("slow/job", timeout_s=2.0, max_retries=0)
        second = await n.jobs.add_job("slow/job", timeout_s=2.0, max_retries=0)
        a = await next_assign(worker)
        assert a.job.id == first.id
        # When the first takes 1.2 s, then the second 1.2 s after it was sent (2.4 s after it was added)
        await asyncio.sleep(1.2)
        n.workers.complete(worker, a.job.id, a.job.attempt, node.JobResult.succeeded())
        b = await next_assign(worker)
        assert b.job.id == second.id
        await asyncio.sleep(1.2)
        n.workers.complete(worker, b.job.id, b.job.attempt, node.JobResult.succeeded())

        # Then neither timed out: each had its 2 s from when the worker got it
        assert (await job_in_state(n, first.id, *HISTORY)).state is node.JobState.SUCCEEDED
        ended = await job_in_state(n, second.id, *HISTORY)
        assert ended.state is node.JobState.SUCCEEDED, ended.result_message
        n.workers.disconnect(worker, "test over")
