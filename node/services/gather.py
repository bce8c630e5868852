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

from node.services.paging import DEFAULT_PAGE_SIZE, bound_kind, decode_token, encode_token
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
    unanswered: list[str] | None = None,
) -> list[tuple[str, Any]]:
    """Every peer's answer; the ids of those that did not answer go to `unanswered`."""

    async def ask(instance_id: str, address: str) -> tuple[str, Any] | None:
        async with channels.create_channel(address) as channel:
            try:
                return instance_id, await call(gather_pb2_grpc.GatherServiceStub(channel))
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "topology query: instance %s (%s) did not answer: %s", instance_id, address, e.details()
                )
                if unanswered is not None:
                    unanswered.append(instance_id)
                return None

    answers = await asyncio.gather(*(ask(i, a) for i, a in peers))
    return [a for a in answers if a is not None]


TOPOLOGY_PAGES = "jobs-topology"
"""The page tokens of topology-wide FindJobs: they name the id of the last job of a page."""


def _after_id(request: jobs_pb2.FindJobsRequest) -> str:
    """The job id a topology page token continues after ("" without a token)."""
    if not request.page_token:
        return ""
    (after,) = decode_token(bound_kind(TOPOLOGY_PAGES, request), request.page_token, ("",))
    return str(after)


async def find_jobs(
    request: jobs_pb2.FindJobsRequest,
    local_id: str,
    local: LocalQueries,
    peers: PeerList,
    channels: Transport,
) -> jobs_pb2.FindJobsResponse:
    """One topology page: every instance's first page_size matching jobs after the token's id,
    merged by id; an offloaded job appears once, as its origin has it, and counts once (at its
    origin, or, if the origin did not answer, where it is held). Instances that do not answer
    are listed and make the response `partial`."""
    after_id = _after_id(request)
    forwarded = gather_pb2.FindLocalJobsRequest(query=request, after_job_id=after_id)
    unanswered: list[str] = []
    answers: list[tuple[str, gather_pb2.FindLocalJobsResponse]] = [
        (local_id, await local.find_topology_part(request, after_id))
    ]
    answers += await _ask_all(
        channels,
        peers(),
        lambda stub: stub.FindLocalJobs(forwarded, timeout=PEER_QUERY_TIMEOUT_S),
        unanswered,
    )
    chosen: dict[str, tuple[bool, jobs_pb2.Job]] = {}
    for answerer, part in answers:
        for job in part.page.jobs:
            authoritative = job.origin_instance == answerer
            if job.id not in chosen or (authoritative and not chosen[job.id][0]):
                chosen[job.id] = (authoritative, job)
    jobs = sorted((job for _, job in chosen.values()), key=lambda j: j.id, reverse=request.newest_first)
    limit = request.page_size or DEFAULT_PAGE_SIZE
    page = jobs[:limit]
    more = len(jobs) > limit or any(part.more for _, part in answers)
    answered = {answerer for answerer, _ in answers}
    total = 0
    for answerer, part in answers:
        if not part.total_by_origin and part.page.total_size:  # an older peer: no counts per origin
            total += part.page.total_size
            continue
        for origin, count in part.total_by_origin.items():
            # Each job once: at its origin; a job whose origin did not answer, where it is held.
            if origin == answerer or origin not in answered:
                total += count
    return jobs_pb2.FindJobsResponse(
        jobs=page,
        next_page_token=encode_token(bound_kind(TOPOLOGY_PAGES, request), (page[-1].id,))
        if more and page
        else "",
        total_size=total,
        partial=bool(unanswered),
        unanswered_instances=sorted(unanswered),
    )


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
    """The sum of every instance's statistics; instances that do not answer are listed and make
    the response `partial`."""
    request = gather_pb2.GetLocalStatisticsRequest()
    unanswered: list[str] = []
    answers = await _ask_all(
        channels,
        peers(),
        lambda stub: stub.GetLocalStatistics(request, timeout=PEER_QUERY_TIMEOUT_S),
        unanswered,
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
        total.jobs.extend(response.jobs)
    by_state: dict[int, int] = {}
    for state_count in total.jobs:  # each job once, at its origin: a plain sum over origins
        by_state[state_count.state] = by_state.get(state_count.state, 0) + state_count.jobs
    del total.jobs[:]
    for state, jobs in sorted(by_state.items()):
        total.jobs.add(state=state, jobs=jobs)
    total.partial = bool(unanswered)
    total.unanswered_instances[:] = sorted(unanswered)
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

    async def find_topology_part(
        self, request: jobs_pb2.FindJobsRequest, after_id: str
    ) -> gather_pb2.FindLocalJobsResponse:
        """This node's part of a topology page: its matching jobs by id after `after_id`."""

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
        return await self._local.find_topology_part(request.query, request.after_job_id)

    @rpc
    async def GetLocalStatistics(
        self, request: gather_pb2.GetLocalStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> gather_pb2.GetLocalStatisticsResponse:
        return gather_pb2.GetLocalStatisticsResponse(statistics=await self._local.local_statistics())
