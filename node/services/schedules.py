"""The ScheduleService servicer."""

from __future__ import annotations

import grpc
from jobmesh.v1 import schedules_pb2, schedules_pb2_grpc

from node.errors import InvalidArgument
from node.jobs.manager import JobManager
from node.services.paging import page_of
from node.services.status import rpc


def _require_id(schedule_id: str) -> str:
    if not schedule_id:
        raise InvalidArgument("id is empty; pass the id AddSchedule returned")
    return schedule_id


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    """Serves ScheduleService from a JobManager."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    @rpc
    async def AddSchedule(
        self, request: schedules_pb2.AddScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.AddScheduleResponse:
        if not request.HasField("job"):
            raise InvalidArgument("job is missing")
        if len(request.name) > 200:
            raise InvalidArgument("name has more than 200 characters")
        schedule = await self._manager.add_schedule(request.name, request.job, request.rules)
        return schedules_pb2.AddScheduleResponse(schedule=schedule.to_proto())

    @rpc
    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ListSchedulesResponse:
        schedules = await self._manager.list_schedules()
        page = page_of("schedules", schedules, lambda s: (s.created_us, s.id), request)  # oldest first
        return schedules_pb2.ListSchedulesResponse(
            schedules=[s.to_proto() for s in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    @rpc
    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.GetScheduleResponse:
        schedule = await self._manager.get_schedule(_require_id(request.id))
        return schedules_pb2.GetScheduleResponse(schedule=schedule.to_proto())

    @rpc
    async def RemoveSchedule(
        self, request: schedules_pb2.RemoveScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.RemoveScheduleResponse:
        await self._manager.remove_schedule(_require_id(request.id))
        return schedules_pb2.RemoveScheduleResponse()

    @rpc
    async def SuspendSchedule(
        self, request: schedules_pb2.SuspendScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.SuspendScheduleResponse:
        schedule = await self._manager.suspend_schedule(_require_id(request.id), True)
        return schedules_pb2.SuspendScheduleResponse(schedule=schedule.to_proto())

    @rpc
    async def ResumeSchedule(
        self, request: schedules_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ResumeScheduleResponse:
        schedule = await self._manager.suspend_schedule(_require_id(request.id), False)
        return schedules_pb2.ResumeScheduleResponse(schedule=schedule.to_proto())
