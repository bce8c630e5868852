"""Counts that mean what they say, at the origin (issue 13 point 5): an origin's statistics
include the jobs it offloaded, by target and state; `jobmesh stats` shows them.

Two real nodes in one event loop, transfer streams on the in-memory network.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

import node
from node.cli.manage import print_statistics
from node.model.job import JobState
from node.transfer.memory import MemoryTransferNetwork
from tests.support.launcher import seed_cluster, shared_cluster
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

TOPIC = "counts/work"


def _node(path: Path, network: MemoryTransferNetwork, seeds: tuple[str, ...] = ()) -> node.Node:
    config = node.NodeConfig.for_tests(seed_cluster(path, shared_cluster(path.parent)))
    config = dataclasses.replace(config, discovery=dataclasses.replace(config.discovery, seeds=seeds))
    link = network.link(str(path))
    n = node.Node(config, transfer_link=link)
    n._test_link = link  # type: ignore[attr-defined]
    return n


async def test_an_origin_that_only_offloads_counts_its_jobs_by_target_and_state(tmp_path: Path) -> None:
    network = MemoryTransferNetwork()
    origin = _node(tmp_path / "origin", network)
    async with origin:
        target = _node(tmp_path / "target", network, seeds=(origin.address,))
        target.consumers.register(
            ["counts/**"],
            lambda job, _c: (
                node.JobResult.succeeded() if job.properties["n"] % 3 else node.JobResult.failed("no", 0.0)
            ),
        )
        async with target:
            for n in (origin, target):
                address = n.topology.view.local.address
                n._test_link.source = address  # type: ignore[attr-defined]
                network.attach(address, n.transfer_receiver)

            async def offloadable() -> bool:
                return any(not i.is_local for i in origin.topology.view.consumers_of(TOPIC))

            await async_wait_for(offloadable, 15, "the origin to see the target consume the topic")
            # Given an origin without consumers that offloaded 30 jobs, 10 of which fail for good
            ids = [(await origin.jobs.add_job(TOPIC, {"n": n}, max_retries=0)).id for n in range(30)]

            async def ended() -> bool:
                return all([(await origin.jobs.get_job(i)).state.is_finished for i in ids])

            await async_wait_for(ended, 15, "every job to end at the origin")

            # Then its statistics count them as jobs, by target and state
            report = await origin.jobs.statistics()
            target_id = target.identity.id  # type: ignore[union-attr]
            assert report.offloaded == {
                (target_id, JobState.SUCCEEDED): 20,
                (target_id, JobState.GIVEN_UP): 10,
            }
            # and counts them once as its jobs, by state, while their attempts count at the target
            assert report.jobs == {JobState.SUCCEEDED: 20, JobState.GIVEN_UP: 10}
            at_target = await target.jobs.statistics()
            assert (at_target.global_.finished, at_target.global_.cancelled) == (20, 10)
            # and the target, the origin of nothing, has no jobs of its own and offloaded none
            assert at_target.offloaded == {}
            assert at_target.jobs == {}


def test_jobmesh_stats_shows_the_offloaded_jobs_by_target_and_state() -> None:
    response = jobs_pb2.GetStatisticsResponse(
        offloaded=[
            jobs_pb2.OffloadedCount(target_instance="t-1", state=jobs_pb2.JOB_STATE_SUCCEEDED, jobs=20),
            jobs_pb2.OffloadedCount(target_instance="t-1", state=jobs_pb2.JOB_STATE_ACTIVE, jobs=3),
        ]
    )
    out = io.StringIO()
    print_statistics(response, out)
    text = out.getvalue()
    assert "offloaded jobs" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["t-1", "SUCCEEDED", "20"] in lines
    assert ["t-1", "ACTIVE", "3"] in lines


def test_jobmesh_stats_shows_jobs_counted_once_apart_from_attempts() -> None:
    response = jobs_pb2.GetStatisticsResponse(
        jobs=[jobs_pb2.StateCount(state=jobs_pb2.JOB_STATE_SUCCEEDED, jobs=6)]
    )
    getattr(response, "global").finished = 9  # three of them ran twice
    out = io.StringIO()
    print_statistics(response, out)
    text = out.getvalue()
    assert "jobs, each counted once at its origin" in text
    assert "attempts, where they ran" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["SUCCEEDED", "6"] in lines
    assert any(row[:1] == ["global"] and "9" in row for row in lines)
