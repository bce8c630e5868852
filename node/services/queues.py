"""The QueueService servicer: list, configure, suspend, resume and clear queues."""

from __future__ import annotations

import grpc
from jobmesh.v1 import queues_pb2, queues_pb2_grpc

from node.durations import duration_from_seconds, optional_seconds
from node.errors import ConfigError, InvalidArgument
from node.jobs.manager import JobManager
from node.model.queues import MAIN_QUEUE, QueueConfig, QueueInfo, QueueType, SyncIsolation
from node.services.paging import page_of
from node.services.status import rpc

_TYPE_TO_PROTO = {
    QueueType.UNORDERED: queues_pb2.QUEUE_TYPE_UNORDERED,
    QueueType.ORDERED: queues_pb2.QUEUE_TYPE_ORDERED,
    QueueType.TOPIC_ROUND_ROBIN: queues_pb2.QUEUE_TYPE_TOPIC_ROUND_ROBIN,
}
_TYPE_FROM_PROTO = {v: k for k, v in _TYPE_TO_PROTO.items()} | {
    queues_pb2.QUEUE_TYPE_UNSPECIFIED: QueueType.UNORDERED
}
_ISOLATION_TO_PROTO = {
    SyncIsolation.THREAD: queues_pb2.SYNC_ISOLATION_THREAD,
    SyncIsolation.PROCESS: queues_pb2.SYNC_ISOLATION_PROCESS,
}
_ISOLATION_FROM_PROTO = {v: k for k, v in _ISOLATION_TO_PROTO.items()} | {
    queues_pb2.SYNC_ISOLATION_UNSPECIFIED: SyncIsolation.THREAD
}
_SOURCE = {
    "default": queues_pb2.QUEUE_SOURCE_DEFAULT,
    "config": queues_pb2.QUEUE_SOURCE_CONFIG,
    "api": queues_pb2.QUEUE_SOURCE_API,
}


# Duration fields of the proto and the QueueConfig field (seconds) each one sets.
_DURATIONS = {"retry_delay": "retry_delay_s", "retry_delay_max": "retry_delay_max_s", "timeout": "timeout_s"}


def config_to_proto(config: QueueConfig) -> queues_pb2.QueueConfig:
    """The proto form of a queue config."""
    return queues_pb2.QueueConfig(
        name=config.name,
        topics=config.topics,
        type=_TYPE_TO_PROTO[config.type],
        max_parallel=float(config.max_parallel),
        retries=config.retries,
        retry_delay=duration_from_seconds(config.retry_delay_s),
        retry_backoff=config.retry_backoff,
        retry_delay_max=duration_from_seconds(config.retry_delay_max_s),
        timeout=duration_from_seconds(config.timeout_s),
        keep_jobs=config.keep_jobs,
        prefer_run_on_creation_instance=config.prefer_run_on_creation_instance,
        ranking=config.ranking,
        sync_isolation=_ISOLATION_TO_PROTO[config.sync_isolation],
    )


def config_from_proto(proto: queues_pb2.QueueConfig) -> QueueConfig:
    """A validated queue config from its proto (InvalidArgument on bad values); unset fields get defaults."""
    if proto.type not in _TYPE_FROM_PROTO:
        raise InvalidArgument(f"config.type {proto.type} is not a known QueueType")
    if proto.sync_isolation not in _ISOLATION_FROM_PROTO:
        raise InvalidArgument(
            f"config.sync_isolation {proto.sync_isolation} is not a known SyncIsolation; "
            "use SYNC_ISOLATION_THREAD or SYNC_ISOLATION_PROCESS"
        )
    if not proto.name:
        raise InvalidArgument("config.name is empty; names use letters, digits, '.', '_' and '-'")
    values: dict[str, object] = {
        "name": proto.name,
        "topics": tuple(proto.topics),
        "type": _TYPE_FROM_PROTO[proto.type],
        "prefer_run_on_creation_instance": proto.prefer_run_on_creation_instance,
        "ranking": proto.ranking,
        "sync_isolation": _ISOLATION_FROM_PROTO[proto.sync_isolation],
    }
    for field in ("max_parallel", "retries", "retry_backoff", "keep_jobs"):
        if proto.HasField(field):
            values[field] = getattr(proto, field)
    for field, name in _DURATIONS.items():
        seconds = optional_seconds(proto, field, f"config.{field}")
        if seconds is not None:
            values[name] = seconds
    try:
        return QueueConfig.create(**values)
    except ConfigError as e:
        raise InvalidArgument(str(e)) from e


def _queue_order(info: QueueInfo) -> tuple[int, str]:
    """ListQueues' order: the main queue first, then by name."""
    return int(info.config.name != MAIN_QUEUE), info.config.name


def _require_name(name: str) -> str:
    if not name:
        raise InvalidArgument("name is empty; pass a queue name (ListQueues lists them)")
    return name


def info_to_proto(info: QueueInfo) -> queues_pb2.QueueInfo:
    """The proto form of a queue's state."""
    return queues_pb2.QueueInfo(
        config=config_to_proto(info.config),
        source=_SOURCE[info.source],
        suspended=info.suspended,
        queued=info.queued,
        active=info.active,
        parallelism=info.config.parallelism,
    )


class QueueServicer(queues_pb2_grpc.QueueServiceServicer):
    """Serves QueueService from a JobManager."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    @rpc
    async def ListQueues(
        self, request: queues_pb2.ListQueuesRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.ListQueuesResponse:
        page = page_of("queues", await self._manager.list_queues(), _queue_order, request)
        return queues_pb2.ListQueuesResponse(
            queues=[info_to_proto(q) for q in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    @rpc
    async def SetQueue(
        self, request: queues_pb2.SetQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.SetQueueResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is missing")
        info = await self._manager.set_queue(config_from_proto(request.config))
        return queues_pb2.SetQueueResponse(queue=info_to_proto(info))

    @rpc
    async def DeleteQueue(
        self, request: queues_pb2.DeleteQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.DeleteQueueResponse:
        await self._manager.delete_queue(_require_name(request.name))
        return queues_pb2.DeleteQueueResponse()

    @rpc
    async def SuspendQueue(
        self, request: queues_pb2.SuspendQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.SuspendQueueResponse:
        info = await self._manager.suspend_queue(_require_name(request.name), True)
        return queues_pb2.SuspendQueueResponse(queue=info_to_proto(info))

    @rpc
    async def ResumeQueue(
        self, request: queues_pb2.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.ResumeQueueResponse:
        info = await self._manager.suspend_queue(_require_name(request.name), False)
        return queues_pb2.ResumeQueueResponse(queue=info_to_proto(info))

    @rpc
    async def ClearQueue(
        self, request: queues_pb2.ClearQueueRequest, context: grpc.aio.ServicerContext
    ) -> queues_pb2.ClearQueueResponse:
        return queues_pb2.ClearQueueResponse(
            dropped=await self._manager.clear_queue(_require_name(request.name))
        )
