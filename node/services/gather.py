"""Topology-wide queries: FindJobs and GetStatistics answered from every live instance.

The asking side fans a query out to every live peer over the peer protocol's GatherService
(jobmesh.peer.v1) and merges the answers; the answering side is `GatherServicer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from jobmesh.peer.v1 import gather_pb2, gather_pb2_grpc
from jobmesh.v1 import jobs_pb2

from node.services.status import rpc
from node.transport import Transport

log = logging.getLogger(__name__)

PEER_QUERY_TIMEOUT_S = 5.0
PeerList = Callable[[], list[tuple[str, str]]]
"""(instance id, address) of the live instances other than this node."""


async def _ask_all(
    channels: Transport,
    peers: Sequence[tuple[str, str]],
    call: Callable[[gather_pb2_grpc.GatherServiceStub], Awaitable[Any]],
) -> list[tuple[str, Any]]:
    async def ask(instance_id: str, address: str) -> tuple[str, Any] | None:
        async with channels.create_channel(address) as channel:
            try:
                return instance_id, await call(gather_pb2_grpc.GatherServiceStub(channel))
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
    forwarded = gather_pb2.FindLocalJobsRequest(query=request)
    answers = [(local_id, local)]
    answers += [
        (answerer, response.page)
        for answerer, response in await _ask_all(
            channels, peers(), lambda stub: stub.FindLocalJobs(forwarded, timeout=PEER_QUERY_TIMEOUT_S)
        )
    ]
    chosen: dict[str, tuple[bool, jobs_pb2.Job]] = {}
    for answerer, response in answers:
        for job in response.jobs:
            authoritative = job.origin_instance == answerer
            if job.id not in chosen or (authoritative and not chosen[job.id][0]):
                chosen[job.id] = (authoritative, job)
    jobs = sorted((job for _, job in chosen.values()), key=lambda j: j.id, reverse=request.newest_first)
    limit = request.page_size or len(jobs)
    return jobs_pb2.FindJobsResponse(jobs=jobs[:limit], total_size=len(jobs))


def _add(total: jobs_pb2.Statistics, part: jobs_pb2.Statistics) -> None:
    processed = total.processed + part.processed
    if processed:
        for name in ("average_waiting", "average_processing"):
            weighted = (
                getattr(total, name).ToMicroseconds() * total.processed
                + getattr(part, name).ToMicroseconds() * part.processed
            )
            getattr(total, name).FromMicroseconds(round(weighted / processed))
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
    request = gather_pb2.GetLocalStatisticsRequest()
    answers = await _ask_all(
        channels, peers(), lambda stub: stub.GetLocalStatistics(request, timeout=PEER_QUERY_TIMEOUT_S)
    )
    total = jobs_pb2.GetStatisticsResponse()
    total.CopyFrom(local)
    for _answerer, answer in answers:
        response = answer.statistics
        _add(getattr(total, "global"), getattr(response, "global"))
        for name, stats in response.queues.items():
            _add(total.queues[name], stats)
        for name, stats in response.topics.items():
            _add(total.topics[name], stats)
        total.damaged_payloads += response.damaged_payloads
        total.offloaded.extend(response.offloaded)
    merged: dict[tuple[str, int], int] = {}
    for count in total.offloaded:
        key = (count.target_instance, count.state)
        merged[key] = merged.get(key, 0) + count.jobs
    del total.offloaded[:]
    for (target, state), jobs in sorted(merged.items()):
        total.offloaded.add(target_instance=target, state=state, jobs=jobs)
    return total


class LocalQueries(Protocol):
    """What a node answers about itself (JobServicer)."""

    async def find_local_jobs(self, request: jobs_pb2.FindJobsRequest) -> jobs_pb2.FindJobsResponse:
        """One page of this node's own jobs matching a query."""

    async def local_statistics(self) -> jobs_pb2.GetStatisticsResponse:
        """This node's own statistics."""


class GatherServicer(gather_pb2_grpc.GatherServiceServicer):
    """Answers a peer's topology-wide query with this node's part."""

    def __init__(self, local: LocalQueries) -> None:
        self._local = local

    @rpc
    async def FindLocalJobs(
        self, request: gather_pb2.FindLocalJobsRequest, context: grpc.aio.ServicerContext
    ) -> gather_pb2.FindLocalJobsResponse:
        return gather_pb2.FindLocalJobsResponse(page=await self._local.find_local_jobs(request.query))

    @rpc
    async def GetLocalStatistics(
        self, request: gather_pb2.GetLocalStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> gather_pb2.GetLocalStatisticsResponse:
        return gather_pb2.GetLocalStatisticsResponse(statistics=await self._local.local_statistics())
