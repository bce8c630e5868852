"""A complete event stream at the origin (issue 13 point 4): for every offloaded job ADDED,
STARTED, any PROGRESS, then one terminal event, in order, also when the target's STARTED and
FINISHED (or whole failed attempts) reach the origin in one report.

Two real nodes in one event loop, transfer streams on the in-memory network; the test holds a
target's reports back by pausing the origin while the target runs the jobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import node
from node.errors import JobNotFound
from node.model.events import EventType, JobEvent
from node.model.job import JobState
from node.model.lifecycle import MirroredEvent, mirrored_events
from node.transfer.memory import MemoryTransferNetwork
from tests.support.in_process import job_in_state
from tests.support.launcher import seed_cluster, shared_cluster
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

TOPIC = "events/work"


def _node(path: Path, network: MemoryTransferNetwork, seeds: tuple[str, ...] = ()) -> node.Node:
    config = node.NodeConfig.for_tests(seed_cluster(path, shared_cluster(path.parent)))
    # The target runs the jobs while the origin is paused: its lease on the origin (confirmed
    # while the jobs waited) must outlast that (see node/transfer/lease.py).
    offload = dataclasses.replace(config.offload, reassign_grace_s=60.0, confirm_window_s=30.0)
    config = dataclasses.replace(
        config, discovery=dataclasses.replace(config.discovery, seeds=seeds), offload=offload
    )
    link = network.link(str(path))
    n = node.Node(config, transfer_link=link)
    n._test_link = link  # type: ignore[attr-defined]
    return n


class Pair:
    def __init__(self, origin: node.Node, target: node.Node, network: MemoryTransferNetwork) -> None:
        self.origin, self.target, self.network = origin, target, network
        self.events: list[JobEvent] = []
        origin.jobs.add_event_listener(self.events.extend)

    def of(self, job_id: str) -> list[EventType]:
        return [e.type for e in self.events if e.job_id == job_id]


@asynccontextmanager
async def pair(tmp_path: Path, consumer: Any) -> AsyncIterator[Pair]:
    network = MemoryTransferNetwork()
    origin = _node(tmp_path / "origin", network)
    async with origin:
        target = _node(tmp_path / "target", network, seeds=(origin.address,))
        target.consumers.register(["events/**"], consumer)
        async with target:
            for n in (origin, target):
                address = n.topology.view.local.address
                n._test_link.source = address  # type: ignore[attr-defined]
                network.attach(address, n.transfer_receiver)

            async def offloadable() -> bool:
                return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

            await async_wait_for(offloadable, 15, "the origin to see the target consume the topic")
            yield Pair(origin, target, network)


async def _arrived(n: node.Node, job_id: str, *states: JobState) -> None:
    async def check() -> bool:
        try:
            return (await n.jobs.get_job(job_id)).state in states
        except JobNotFound:
            return False

    await async_wait_for(check, 15, f"job {job_id} at {[s.name for s in states]}")


async def _run_with_reports_held(p: Pair, count: int, **options: object) -> list[str]:
    """Add `count` jobs; the target gets them but its queue runs them only while the origin is
    paused, so every report of theirs reaches the origin after they ended, in one frame."""
    await p.target.jobs.suspend_queue("main", True)
    ids = [(await p.origin.jobs.add_job(TOPIC, {"n": n}, **options)).id for n in range(count)]  # type: ignore[arg-type]
    for job_id in ids:
        await _arrived(p.target, job_id, JobState.QUEUED)
    lease, origin_id = p.target.transfer_receiver.lease, p.origin.identity.id  # type: ignore[attr-defined, union-attr]

    async def confirmed() -> bool:  # the target asked the origin about them before the pause
        return not lease.holds(origin_id)

    await async_wait_for(confirmed, 15, "the target's lease on the origin")
    origin_address = p.origin.topology.view.local.address
    p.network.pause(origin_address)
    await p.target.jobs.suspend_queue("main", False)
    for job_id in ids:
        await _arrived(p.target, job_id, *(s for s in JobState if s.is_finished))
    p.network.resume(origin_address)
    return ids


async def test_a_job_whose_started_and_finished_arrive_in_one_report_shows_both_at_the_origin(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path, lambda job, _c: node.JobResult.succeeded("ok")) as p:
        ids = await _run_with_reports_held(p, 5)
        for job_id in ids:
            await job_in_state(p.origin, job_id, JobState.SUCCEEDED, timeout=15)
            assert p.of(job_id) == [EventType.ADDED, EventType.STARTED, EventType.FINISHED]
        started = [e for e in p.events if e.type is EventType.STARTED]
        assert {e.target for e in started} == {p.target.identity.id}  # type: ignore[union-attr]


async def test_failed_attempts_folded_into_one_report_still_show_each_attempt_at_the_origin(
    tmp_path: Path,
) -> None:
    tries: dict[str, int] = {}

    def flaky(job: node.Job, _context: object) -> node.JobResult:
        tries[job.id] = tries.get(job.id, 0) + 1
        return node.JobResult.succeeded() if tries[job.id] > 2 else node.JobResult.failed("not yet", 0.0)

    async with pair(tmp_path, flaky) as p:
        ids = await _run_with_reports_held(p, 3, max_retries=5, retry_delay_s=0.0)
        for job_id in ids:
            done = await job_in_state(p.origin, job_id, JobState.SUCCEEDED, timeout=15)
            assert done.retry_count == 2
            assert p.of(job_id) == [
                EventType.ADDED,
                EventType.STARTED,
                EventType.FAILED,
                EventType.STARTED,
                EventType.FAILED,
                EventType.STARTED,
                EventType.FINISHED,
            ]
            retries = [e.retry_count for e in p.events if e.job_id == job_id]
            assert retries == [0, 0, 1, 1, 2, 2, 2]


def _types(events: list[MirroredEvent]) -> list[tuple[EventType, int]]:
    return [(e.type, e.retry_count) for e in events]


def test_mirrored_events_fill_in_what_one_report_stands_for() -> None:
    # a plain start, then its progress, then its end: one event each
    assert _types(
        mirrored_events(
            was_active=False,
            seen_retry_count=0,
            seen_started_us=0,
            state=JobState.ACTIVE,
            retry_count=0,
            started_us=5,
        )
    ) == [(EventType.STARTED, 0)]
    assert _types(
        mirrored_events(
            was_active=True,
            seen_retry_count=0,
            seen_started_us=5,
            state=JobState.ACTIVE,
            retry_count=0,
            started_us=5,
            is_progress=True,
        )
    ) == [(EventType.PROGRESS, 0)]
    assert _types(
        mirrored_events(
            was_active=True,
            seen_retry_count=0,
            seen_started_us=5,
            state=JobState.SUCCEEDED,
            retry_count=0,
            started_us=5,
        )
    ) == [(EventType.FINISHED, 0)]
    # an attempt that failed in the report of the next one
    assert _types(
        mirrored_events(
            was_active=True,
            seen_retry_count=0,
            seen_started_us=5,
            state=JobState.ACTIVE,
            retry_count=1,
            started_us=9,
        )
    ) == [(EventType.FAILED, 1), (EventType.STARTED, 1)]
    # the last attempt failed unseen: GIVEN_UP after its own STARTED
    assert _types(
        mirrored_events(
            was_active=False,
            seen_retry_count=1,
            seen_started_us=5,
            state=JobState.GIVEN_UP,
            retry_count=2,
            started_us=9,
        )
    ) == [(EventType.STARTED, 1), (EventType.CANCELLED, 2)]
    # stopped before it ever started at the target: no STARTED
    assert _types(
        mirrored_events(
            was_active=False,
            seen_retry_count=0,
            seen_started_us=0,
            state=JobState.STOPPED,
            retry_count=0,
            started_us=0,
        )
    ) == [(EventType.STOPPED, 0)]
