"""Topology-wide queries: FindJobs and GetStatistics answered from every live instance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from node.transport import Transport

log = logging.getLogger(__name__)

PEER_QUERY_TIMEOUT_S = 5.0
PeerList = Callable[[], list[tuple[str, str]]]
"""(instance id, address) of the live instances other than this node."""


async def _ask_all(
    channels: Transport,
    peers: Sequence[tuple[str, str]],
    call: Callable[[jobs_pb2_grpc.JobServiceStub], Awaitable[Any]],
) -> list[tuple[str, Any]]:
    async def ask(instance_id: str, address: str) -> tuple[str, Any] | None:
        async with channels.create_channel(address) as channel:
            try:
                return instance_id, await call(jobs_pb2_grpc.JobServiceStub(channel))
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "topology query: instance %s (%s) did not answer: %s", instance_id, address, e.details()
                )
                return None

    answers = await asyncio.gather(*(ask(i, a) for i, a in peers))
    return [a for a in answers if a is not None]


async def find_jobs(
    request: jobs_pb2.FindJobsRequest,
    local_id: str,
    local: jobs_pb2.FindJobsResponse,
    peers: PeerList,
    channels: Transport,
) -> jobs_pb2.FindJobsResponse:
    """Merge the answers of every instance; an offloaded job appears once, as its origin has it."""
    forwarded = jobs_pb2.FindJobsRequest()
    forwarded.CopyFrom(request)
    forwarded.scope = jobs_pb2.QUERY_SCOPE_LOCAL
    answers = [(local_id, local)]
    answers += await _ask_all(
        channels,
        peers(),
        lambda stub: stub.FindJobs(forwarded, timeout=PEER_QUERY_TIMEOUT_S),
    )
    chosen: dict[str, tuple[bool, jobs_pb2.Job]] = {}
    for answerer, response in answers:
        assert isinstance(response, jobs_pb2.FindJobsResponse)
        for job in response.jobs:
            authoritative = job.origin_instance == answerer
            if job.id not in chosen or (authoritative and not chosen[job.id][0]):
                chosen[job.id] = (authoritative, job)
    jobs = sorted((job for _, job in chosen.values()), key=lambda j: j.id, reverse=request.newest_first)
    limit = request.limit or len(jobs)
    return jobs_pb2.FindJobsResponse(jobs=jobs[:limit], total_count=len(jobs))


def _add(total: jobs_pb2.Statistics, part: jobs_pb2.Statistics) -> None:
    processed = total.processed + part.processed
    if processed:
        for name in ("average_waiting_ms", "average_processing_ms"):
            weighted = getattr(total, name) * total.processed + getattr(part, name) * part.processed
            setattr(total, name, weighted / processed)
    for name in ("queued", "active", "finished", "failed", "cancelled"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.processed = processed
    if (
        part.HasField("last_activated")
        and part.last_activated.ToMicroseconds() > total.last_activated.ToMicroseconds()
    ):
        total.last_activated.CopyFrom(part.last_activated)
    if (
        part.HasField("last_finished")
        and part.last_finished.ToMicroseconds() > total.last_finished.ToMicroseconds()
    ):
        total.last_finished.CopyFrom(part.last_finished)


async def statistics(
    local: jobs_pb2.GetStatisticsResponse, peers: PeerList, channels: Transport
) -> jobs_pb2.GetStatisticsResponse:
    """The sum of every instance's statistics."""
    request = jobs_pb2.GetStatisticsRequest(scope=jobs_pb2.QUERY_SCOPE_LOCAL)
    answers = await _ask_all(
        channels,
        peers(),
        lambda stub: stub.GetStatistics(request, timeout=PEER_QUERY_TIMEOUT_S),
    )
    total = jobs_pb2.GetStatisticsResponse()
    total.CopyFrom(local)
    for _answerer, response in answers:
        assert isinstance(response, jobs_pb2.GetStatisticsResponse)
        _add(getattr(total, "global"), getattr(response, "global"))
        for name, stats in response.queues.items():
            _add(total.queues[name], stats)
        for name, stats in response.topics.items():
            _add(total.topics[name], stats)
    return total
