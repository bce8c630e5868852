"""Retries that hold across offloading (issue 13 point 6): the retry count a job earned at a
target survives a worker's disconnect, the origin's mirror shows it, a job whose consumer
disconnects every time ends GIVEN_UP after its retries, and `attempt` is retry_count + 1.

Two real nodes in one event loop, transfer streams on the in-memory network; the target's only
consumer is a remote worker the test plays through its outbox (node.jobs.remote).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import node
from node.jobs.remote import Assign, RemoteWorker
from node.transfer.memory import MemoryTransferNetwork
from tests.support.in_process import job_in_state
from tests.support.launcher import seed_cluster, shared_cluster
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

TOPIC = "retry/work"


def _node(path: Path, network: MemoryTransferNetwork, seeds: tuple[str, ...] = ()) -> node.Node:
    config = node.NodeConfig.for_tests(seed_cluster(path, shared_cluster(path.parent)))
    config = dataclasses.replace(config, discovery=dataclasses.replace(config.discovery, seeds=seeds))
    link = network.link(str(path))
    n = node.Node(config, transfer_link=link)
    n._test_link = link  # type: ignore[attr-defined]
    return n


@asynccontextmanager
async def origin_and_target(tmp_path: Path) -> AsyncIterator[tuple[node.Node, node.Node]]:
    """An origin without consumers and a target whose consumers are remote workers only."""
    network = MemoryTransferNetwork()
    origin = _node(tmp_path / "origin", network)
    async with origin:
        target = _node(tmp_path / "target", network, seeds=(origin.address,))
        async with target:
            for n in (origin, target):
                address = n.topology.view.local.address
                n._test_link.source = address  # type: ignore[attr-defined]
                network.attach(address, n.transfer_receiver)
            yield origin, target


async def next_assign(worker: RemoteWorker) -> Assign:
    command = await asyncio.wait_for(worker.outbox.get(), 15)
    assert isinstance(command, Assign)
    return command


async def test_a_job_whose_worker_disconnects_every_time_keeps_its_retries_and_ends_given_up(
    tmp_path: Path,
) -> None:
    async with origin_and_target(tmp_path) as (origin, target):
        # Given a target whose worker consumes the topic, seen by the origin
        worker = target.workers.connect("w0", ["retry/**"], concurrency=1)

        async def offloadable() -> bool:
            return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

        await async_wait_for(offloadable, 15, "the origin to see the target consume the topic")
        job = await origin.jobs.add_job(TOPIC, max_retries=2)

        for n in range(3):
            # When the worker gets the job, its attempt is retry_count + 1 and the origin agrees
            assign = await next_assign(worker)
            assert assign.job.id == job.id
            assert assign.job.retry_count == n
            assert assign.job.attempt == n + 1  # retry_count + 1

            async def mirrored(n: int = n) -> bool:
                mirror = await origin.jobs.get_job(job.id)
                return mirror.state is node.JobState.ACTIVE and mirror.retry_count == n

            await async_wait_for(mirrored, 15, f"the origin to show attempt {n + 1} running")
            # and then its worker disconnects while it runs
            target.workers.disconnect(worker, "stream broken")
            if n < 2:

                async def retried(n: int = n) -> bool:
                    mirror = await origin.jobs.get_job(job.id)
                    return mirror.retry_count == n + 1

                await async_wait_for(retried, 15, f"the origin to show retry {n + 1}")
                worker = target.workers.connect(f"w{n + 1}", ["retry/**"], concurrency=1)

        # Then after its two retries the job is GIVEN_UP at the origin, retry count kept
        ended = await job_in_state(origin, job.id, node.JobState.GIVEN_UP, timeout=15)
        assert ended.retry_count == 3
        assert (await target.jobs.get_job(job.id)).state is node.JobState.GIVEN_UP


async def test_a_job_handed_back_and_offloaded_again_keeps_its_retry_count(tmp_path: Path) -> None:
    async with origin_and_target(tmp_path) as (origin, target):
        # Given a job whose worker disconnected while running it (retry 1 at the target)
        worker = target.workers.connect("w0", ["retry/**"], concurrency=1)

        async def offloadable() -> bool:
            return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

        await async_wait_for(offloadable, 15, "the origin to see the target consume the topic")
        job = await origin.jobs.add_job(TOPIC, max_retries=5)
        await next_assign(worker)
        target.workers.disconnect(worker, "stream broken")

        # When the target, without a consumer now, hands it back and the origin holds it
        async def held() -> bool:
            mirror = await origin.jobs.get_job(job.id)
            return mirror.state is node.JobState.QUEUED and mirror.target_instance is None

        await async_wait_for(held, 15, "the origin to hold the handed-back job")
        assert (await origin.jobs.get_job(job.id)).retry_count == 1
        # and offloads it again, under a new epoch, once a worker is back
        worker = target.workers.connect("w1", ["retry/**"], concurrency=1)
        again = await next_assign(worker)

        # Then the new attempt continues from the retries it had: retry 1, attempt 2
        assert (again.job.retry_count, again.job.attempt) == (1, 2)

        async def mirrored() -> bool:
            mirror = await origin.jobs.get_job(job.id)
            return mirror.state is node.JobState.ACTIVE and mirror.retry_count == 1

        await async_wait_for(mirrored, 15, "the origin to show attempt 2 running with retry 1")
        target.workers.complete(worker, job.id, again.job.attempt, node.JobResult.succeeded())
        done = await job_in_state(origin, job.id, node.JobState.SUCCEEDED, timeout=15)
        assert done.retry_count == 1


async def test_an_attempt_lost_with_its_target_counts_as_failed_at_the_origin(tmp_path: Path) -> None:
    network = MemoryTransferNetwork()
    origin = _node(tmp_path / "origin", network)
    async with origin:
        # Given a job with no retries left running on a target's worker
        target = _node(tmp_path / "target", network, seeds=(origin.address,))
        async with target:
            for n in (origin, target):
                address = n.topology.view.local.address
                n._test_link.source = address  # type: ignore[attr-defined]
                network.attach(address, n.transfer_receiver)
            worker = target.workers.connect("w0", ["retry/**"], concurrency=1)

            async def offloadable() -> bool:
                return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

            await async_wait_for(offloadable, 15, "the origin to see the target consume the topic")
            job = await origin.jobs.add_job(TOPIC, max_retries=0)
            await next_assign(worker)
            await job_in_state(origin, job.id, node.JobState.ACTIVE, timeout=15)
            network.crash(target.topology.view.local.address)
        # When the target is gone past the grace period (its reports never arrive)
        # Then the origin counts the lost attempt: no retries left, GIVEN_UP, retry count 1
        ended = await job_in_state(origin, job.id, node.JobState.GIVEN_UP, timeout=15)
        assert ended.retry_count == 1
        assert "is gone" in ended.result_message


async def test_attempt_is_retry_count_plus_one_after_a_graceful_restart_requeued_the_job(
    tmp_path: Path,
) -> None:
    # Given a job running at a graceful stop: re-queued with its retry count unchanged
    release = threading.Event()
    seen: list[tuple[int, int]] = []

    def blocking(job: node.Job, _context: object) -> node.JobResult:
        seen.append((job.attempt, job.retry_count))
        release.wait(5)
        return node.JobResult.succeeded()

    config = node.NodeConfig.for_tests(tmp_path)
    async with node.Node(config) as n:
        n.consumers.register(["solo/**"], blocking)
        job = await n.jobs.add_job("solo/job", max_retries=3)
        await job_in_state(n, job.id, node.JobState.ACTIVE)
        await async_wait_for(lambda: bool(seen), what="the consumer to start")
        await n.close(grace_s=0.05)
    release.set()
    # When the node starts again and runs it
    release = threading.Event()
    release.set()
    async with node.Node(config) as n:
        n.consumers.register(["solo/**"], blocking)
        done = await job_in_state(n, job.id, node.JobState.SUCCEEDED)
    # Then each attempt's number was its retry count + 1, also the one after the restart
    assert [a for a, r in seen] == [r + 1 for a, r in seen]
    assert done.attempt == done.retry_count + 1
