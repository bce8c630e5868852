"""The console's client of its node's own gRPC API (one asyncio channel, made by the node's
transport). The console checks a session's scopes before each call (see `auth.Authenticator.may`);
the call itself then does exactly what the same RPC does for any client: FindJobs across the
topology, a topic consumption change forwarded to another instance, stop and remove at the origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from jobmesh.v1 import (
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    topics_pb2,
    topics_pb2_grpc,
    topology_pb2,
    topology_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

from node.services.chunking import crc32
from node.transport import Transport

CALL_TIMEOUT_S = 10.0
PEER_TIMEOUT_S = 2.0
PAYLOAD_TIMEOUT_S = 300.0
"""A payload download's whole stream (64 MiB to a slow browser)."""

JOBS = "/jobmesh.v1.JobService/"
QUEUES = "/jobmesh.v1.QueueService/"
SCHEDULES = "/jobmesh.v1.ScheduleService/"
TOPICS = "/jobmesh.v1.TopicService/"


class ApiError(Exception):
    """A call of the node's API failed; `message` says why (the RPC's own status details)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeApi:
    """Stubs of every public service on one channel to the node itself."""

    def __init__(self, transport: Transport, address: str) -> None:
        self._transport = transport
        self._address = address
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    def _stub(self, name: str) -> Any:
        if self._channel is None:
            self._channel = self._transport.create_channel(self._address)
            self._stubs = {
                "jobs": jobs_pb2_grpc.JobServiceStub(self._channel),
                "queues": queues_pb2_grpc.QueueServiceStub(self._channel),
                "schedules": schedules_pb2_grpc.ScheduleServiceStub(self._channel),
                "topics": topics_pb2_grpc.TopicServiceStub(self._channel),
                "topology": topology_pb2_grpc.TopologyServiceStub(self._channel),
                "workers": workers_pb2_grpc.WorkerServiceStub(self._channel),
            }
        return self._stubs[name]

    async def call(self, service: str, method: str, request: Any, token: str = "") -> Any:
        """`service.method(request)`, with `token` as its bearer credential if given (else as this
        node, which may read); ApiError with the status details on failure."""
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            return await getattr(self._stub(service), method)(
                request, timeout=CALL_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as e:
            raise ApiError(e.code(), e.details() or e.code().name) from e

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # --- reads ---

    async def _every(self, service: str, method: str, request: Any, field: str) -> list[Any]:
        """Every row of a paged list (AIP-158 page tokens), page after page."""
        rows: list[Any] = []
        while True:
            response = await self.call(service, method, request)
            rows.extend(getattr(response, field))
            if not response.next_page_token:
                return rows
            request.page_token = response.next_page_token

    async def topology(self) -> topology_pb2.TopologyView:
        """The topology view."""
        response = await self.call("topology", "GetTopology", topology_pb2.GetTopologyRequest())
        view: topology_pb2.TopologyView = response.view
        return view

    async def consumption(self) -> list[topics_pb2.InstanceConsumption]:
        """Every live instance's consumer topics and settings."""
        return await self._every(
            "topics", "ListTopicConsumption", topics_pb2.ListTopicConsumptionRequest(), "instances"
        )

    async def find_jobs(self, request: jobs_pb2.FindJobsRequest) -> jobs_pb2.FindJobsResponse:
        """One page of FindJobs."""
        response: jobs_pb2.FindJobsResponse = await self.call("jobs", "FindJobs", request)
        return response

    async def get_job(self, job_id: str, payloads: bool = False) -> jobs_pb2.Job:
        """GetJob with its log (and payloads when asked)."""
        request = jobs_pb2.GetJobRequest(job_id=job_id, include_log=True, include_payloads=payloads)
        job: jobs_pb2.Job = (await self.call("jobs", "GetJob", request)).job
        return job

    async def payload(self, job_id: str, output: bool) -> AsyncIterator[jobs_pb2.GetPayloadResponse]:
        """A job's input or output payload as GetPayload's pieces (at most 1 MiB each), each
        checked in order; ApiError (DATA_LOSS for a damaged piece or whole) on failure."""
        kind = jobs_pb2.PAYLOAD_KIND_OUTPUT if output else jobs_pb2.PAYLOAD_KIND_INPUT
        call = self._stub("jobs").GetPayload(
            jobs_pb2.GetPayloadRequest(job_id=job_id, kind=kind), timeout=PAYLOAD_TIMEOUT_S
        )
        offset, whole, claimed = 0, 0, 0
        try:
            async for piece in call:
                if piece.offset != offset or crc32(piece.data) != piece.data_crc32:
                    raise ApiError(grpc.StatusCode.DATA_LOSS, f"job {job_id}: a damaged payload piece")
                offset, whole, claimed = (
                    offset + len(piece.data),
                    crc32(piece.data, whole),
                    piece.payload_crc32,
                )
                yield piece
        except grpc.aio.AioRpcError as e:
            raise ApiError(e.code(), e.details() or e.code().name) from e
        finally:
            call.cancel()
        if whole != claimed:
            raise ApiError(grpc.StatusCode.DATA_LOSS, f"job {job_id}: the payload does not match its CRC-32")

    async def statistics(self) -> jobs_pb2.GetStatisticsResponse:
        """This node's statistics."""
        response: jobs_pb2.GetStatisticsResponse = await self.call(
            "jobs", "GetStatistics", jobs_pb2.GetStatisticsRequest()
        )
        return response

    async def statistics_of(self, view: topology_pb2.TopologyView) -> dict[str, jobs_pb2.Statistics]:
        """Each live instance's own totals (GetStatistics on each, at once; the node's channels
        to its peers); an instance that does not answer in time is left out."""

        async def one(instance: topology_pb2.Instance) -> tuple[str, jobs_pb2.Statistics | None]:
            if instance.local:
                return instance.id, getattr(await self.statistics(), "global")
            if not instance.endpoints:
                return instance.id, None
            try:
                async with self._transport.create_channel(instance.endpoints[0]) as channel:
                    response = await jobs_pb2_grpc.JobServiceStub(channel).GetStatistics(
                        jobs_pb2.GetStatisticsRequest(), timeout=PEER_TIMEOUT_S
                    )
            except grpc.aio.AioRpcError:
                return instance.id, None
            return instance.id, getattr(response, "global")

        answers = await asyncio.gather(*(one(i) for i in view.instances))
        return {instance_id: stats for instance_id, stats in answers if stats is not None}

    async def queues(self) -> list[queues_pb2.QueueInfo]:
        """Every queue."""
        return await self._every("queues", "ListQueues", queues_pb2.ListQueuesRequest(), "queues")

    async def schedules(self) -> list[schedules_pb2.Schedule]:
        """Every schedule."""
        return await self._every(
            "schedules", "ListSchedules", schedules_pb2.ListSchedulesRequest(), "schedules"
        )

    async def workers(self) -> list[workers_pb2.ConnectedWorker]:
        """The connected remote workers."""
        return await self._every("workers", "ListWorkers", workers_pb2.ListWorkersRequest(), "workers")
