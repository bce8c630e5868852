"""Offloading between two real nodes in one event loop, their transfer streams on the in-memory
network (node.transfer.memory): faults of the transfer link without OS processes. Discovery is
real (gRPC membership on loopback, seeds); only the transfer streams are in memory. The same
behaviours with real processes and real links stay in test_offload*.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import node
from node.transfer.memory import MemoryTransferLink, MemoryTransferNetwork
from node.transfer.offloader import IDLE_POLL_S
from tests.support.launcher import seed_cluster, shared_cluster

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

TOPIC = "mem/work"
TIMEOUT_S = 15.0


async def until(condition: Callable[[], Awaitable[bool]], what: str, within_s: float = TIMEOUT_S) -> None:
    """Await `condition()` until it is true; fail at the deadline."""
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class Pair:
    """An origin without consumers and a worker that consumes TOPIC, joined by `network`."""

    def __init__(self, origin: node.Node, worker: node.Node, network: MemoryTransferNetwork) -> None:
        self.origin, self.worker, self.network = origin, worker, network
        self.origin_address = origin.topology.view.local.address
        self.worker_address = worker.topology.view.local.address

    async def states(self, ids: list[str]) -> list[node.JobState]:
        return [(await self.origin.jobs.get_job(i)).state for i in ids]

    async def all_succeeded(self, ids: list[str]) -> bool:
        return all(s is node.JobState.SUCCEEDED for s in await self.states(ids))

    async def add(self, count: int) -> list[str]:
        return [(await self.origin.jobs.add_job(TOPIC, {"n": n})).id for n in range(count)]


def _node(
    path: Path,
    network: MemoryTransferNetwork,
    seeds: tuple[str, ...] = (),
    purge_interval_s: float | None = None,
    **offload: Any,
) -> tuple[node.Node, MemoryTransferLink]:
    # Both nodes of one cluster (membership runs over real gRPC with mutual TLS).
    config = node.NodeConfig.for_tests(seed_cluster(path, shared_cluster(path.parent)))
    config = dataclasses.replace(
        config,
        discovery=dataclasses.replace(config.discovery, seeds=seeds),
        offload=dataclasses.replace(config.offload, **offload),
    )
    if purge_interval_s is not None:
        config = dataclasses.replace(
            config, history=dataclasses.replace(config.history, purge_interval_s=purge_interval_s)
        )
    link = network.link(str(path))
    return node.Node(config, transfer_link=link), link


@asynccontextmanager
async def pair(tmp_path: Path, purge_interval_s: float | None = None, **offload: Any) -> AsyncIterator[Pair]:
    """Start both nodes (`offload` settings changed as given), attach them to the network under
    the addresses peers dial, and wait until the origin sees the worker consume TOPIC."""
    network = MemoryTransferNetwork()
    origin, origin_link = _node(tmp_path / "origin", network, (), purge_interval_s, **offload)
    async with origin:
        worker, worker_link = _node(
            tmp_path / "worker", network, (origin.address,), purge_interval_s, **offload
        )
        worker.consumers.register(
            ["mem/**"], lambda job, _context: node.JobResult.succeeded(f"done {job.id}")
        )
        async with worker:
            for n, link in ((origin, origin_link), (worker, worker_link)):
                address = n.topology.view.local.address
                link.source = address  # faults are named by the addresses peers dial
                network.attach(address, n.transfer_receiver)
            p = Pair(origin, worker, network)

            async def sees_worker() -> bool:
                return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

            await until(sees_worker, "the origin to see the worker's topics")
            yield p


async def test_offloaded_jobs_end_at_the_origin_with_the_workers_results(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        ids = await p.add(20)
        await until(lambda: p.all_succeeded(ids), "every job to succeed at the origin")
        job = await p.origin.jobs.get_job(ids[0])
        assert job.result_message == f"done {ids[0]}"
        assert job.target_instance == p.worker.identity.id  # type: ignore[union-attr]


async def test_a_job_added_to_an_idle_pair_travels_at_once_not_at_the_senders_poll(tmp_path: Path) -> None:
    # The senders look at the outbox on their own only every IDLE_POLL_S (a safety net): a job
    # must go out, and its report come back, on the wake-up of the commit that enqueued it.
    assert IDLE_POLL_S >= 1.0
    async with pair(tmp_path) as p:
        warm = await p.add(1)
        await until(lambda: p.all_succeeded(warm), "the first job to succeed")
        for _ in range(8):
            await asyncio.sleep(0.1)  # both sides idle again, their senders waiting
            started = time.monotonic()
            ids = await p.add(1)
            await until(
                functools.partial(p.all_succeeded, ids), "an offloaded job to succeed", IDLE_POLL_S / 2
            )
            assert time.monotonic() - started < IDLE_POLL_S / 2


async def test_a_cut_transfer_link_holds_the_jobs_until_it_heals(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        # Given the transfer link between them cut (membership still sees both alive)
        p.network.cut(p.origin_address, p.worker_address)

        # When jobs are added, none reaches the worker
        ids = await p.add(10)
        await asyncio.sleep(0.5)
        assert set(await p.states(ids)) == {node.JobState.QUEUED}
        assert (await p.worker.jobs.count_by_state()) == {}

        # Then once the link heals, every job runs there once and ends at the origin
        p.network.heal()
        await until(lambda: p.all_succeeded(ids), "every job to succeed after the heal")
        assert (await p.worker.jobs.count_by_state()) == {node.JobState.SUCCEEDED: 10}


async def test_reports_wait_in_the_workers_outbox_while_the_origins_link_is_down(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        ids = await p.add(5)
        await until(lambda: p.all_succeeded(ids), "the first jobs to succeed")

        # Given the origin's receiving side gone (its transfer server crashed)
        p.network.crash(p.origin_address)
        more = await p.add(5)

        # The worker cannot report (nor the origin send, its own link refused): jobs stay open
        await asyncio.sleep(0.5)
        assert not await p.all_succeeded(more)

        # When it is back, the outboxes drain and every job ends SUCCEEDED once
        p.network.attach(p.origin_address, p.origin.transfer_receiver)
        await until(lambda: p.all_succeeded(more), "the remaining jobs to succeed")
        assert (await p.worker.jobs.count_by_state()) == {node.JobState.SUCCEEDED: 10}


async def test_a_paused_worker_gets_the_held_frames_when_it_resumes(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        # Given the worker's transfer side paused (frames to it are held, not refused)
        p.network.pause(p.worker_address)
        ids = await p.add(5)
        await asyncio.sleep(0.5)
        assert (await p.worker.jobs.count_by_state()) == {}

        # When it resumes, the held frame arrives and every job runs once
        p.network.resume(p.worker_address)
        await until(lambda: p.all_succeeded(ids), "every job to succeed after the resume")
        assert (await p.worker.jobs.count_by_state()) == {node.JobState.SUCCEEDED: 5}


async def _queued_at_the_worker(p: Pair, count: int) -> list[str]:
    """Add `count` jobs while the worker's queue is suspended; wait until they wait there, and
    until the worker's lease on the origin is confirmed (it asked about them)."""
    await p.worker.jobs.suspend_queue("main", True)
    ids = await p.add(count)
    lease, origin_id = p.worker.transfer_receiver.lease, p.origin.identity.id  # type: ignore[attr-defined, union-attr]

    async def arrived() -> bool:
        counts = await p.worker.jobs.count_by_state()
        return counts.get(node.JobState.QUEUED, 0) == count and not lease.holds(origin_id)

    await until(arrived, "the jobs to wait at the worker, its lease on the origin confirmed")
    return ids


async def _finished_events(n: node.Node) -> list[int]:
    rows = await n.journal.read(
        lambda c: c.execute("SELECT count(*) FROM job_events WHERE type = 4 GROUP BY job_id").fetchall()
    )
    return sorted(r[0] for r in rows)


async def test_a_lost_report_is_recovered_by_reconciliation(tmp_path: Path) -> None:
    # A long lease: the worker runs the jobs while the origin is unreachable
    async with pair(tmp_path, reassign_grace_s=60.0, confirm_window_s=30.0) as p:
        # Given jobs that ran at the worker while the origin was unreachable, their reports lost
        # (their outbox rows deleted before they could go)
        ids = await _queued_at_the_worker(p, 5)
        p.network.crash(p.origin_address)
        await p.worker.jobs.suspend_queue("main", False)

        async def ran() -> bool:
            return (await p.worker.jobs.count_by_state()) == {node.JobState.SUCCEEDED: 5}

        await until(ran, "the worker to run the jobs")
        lost = await p.worker.journal.write(lambda c: c.execute("DELETE FROM outbox WHERE kind = 2").rowcount)
        assert lost >= 5

        # When the origin is reachable again
        p.network.attach(p.origin_address, p.origin.transfer_receiver)

        # Then it asks the worker about the quiet jobs, the worker sends their reports again, and
        # every job ends SUCCEEDED at the origin, once
        await until(lambda: p.all_succeeded(ids), "reconciliation to recover the lost reports")
        assert p.origin.transfer_receiver.reconciler.counts.reports_resent == 5  # type: ignore[attr-defined]
        assert await _finished_events(p.origin) == [1] * 5
        assert (await p.worker.jobs.count_by_state()) == {node.JobState.SUCCEEDED: 5}


async def test_jobs_their_target_does_not_know_are_reassigned_under_a_new_epoch(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        # Given jobs delivered to the worker, then lost there (their rows gone from its journal)
        ids = await _queued_at_the_worker(p, 3)
        marks = ", ".join("?" * len(ids))

        async def epochs() -> list[int]:
            rows = await p.origin.journal.read(
                lambda c: c.execute(
                    f"SELECT epoch FROM jobs WHERE id IN ({marks}) ORDER BY id", ids
                ).fetchall()
            )
            return [r[0] for r in rows]

        before = await epochs()
        await p.worker.journal.write(lambda c: c.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids))
        await p.worker.jobs.suspend_queue("main", False)

        # Then the origin learns the worker does not know them and gives them out again under a
        # new epoch: they run and end SUCCEEDED once
        await until(lambda: p.all_succeeded(ids), "the unknown jobs to be reassigned and run")
        counts = p.origin.transfer_receiver.reconciler.counts  # type: ignore[attr-defined]
        assert counts.reassigned_unknown == 3
        assert await epochs() == [e + 1 for e in before]
        assert await _finished_events(p.origin) == [1] * 3


async def test_assignment_rounds_cued_while_nothing_waits_unassigned_write_nothing(tmp_path: Path) -> None:
    # Every topology change (the worker's capacity, published while it runs jobs), every report
    # frame cues an assignment round; with nothing waiting unassigned a round must not touch the
    # writer (it cost two write transactions each, dozens a second on both sides of a busy
    # pair). History purges, the one periodic write of an idle node, are out of the window.
    async with pair(tmp_path, purge_interval_s=60.0) as p:
        ids = await p.add(50)
        await until(lambda: p.all_succeeded(ids), "every job to succeed at the origin")
        await asyncio.sleep(0.5)  # the last reports and their acknowledgements settle
        before = [n.job_counters.commits for n in (p.origin, p.worker)]

        async def origin_sees(value: str) -> bool:
            return any(i.properties.get("cue") == value for i in p.origin.topology.view.instances)

        # When the worker's properties change five times, each a topology event on both nodes
        for n in range(5):
            p.worker.topology.properties.set("cue", str(n))
            await until(functools.partial(origin_sees, str(n)), "the origin to see the property")
        await asyncio.sleep(0.3)

        # Then neither journal committed anything
        assert [n.job_counters.commits for n in (p.origin, p.worker)] == before
