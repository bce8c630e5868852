"""TopicService: the topic consumption matrix of the topology, and changing any instance's setting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from jobmesh.v1 import topics_pb2, topics_pb2_grpc

from node.discovery.topology import Topology
from node.discovery.view import InstanceDescription
from node.errors import InvalidArgument, NotFound, PeerUnavailable
from node.model.consumption import ConsumptionRules, ConsumptionSetting
from node.services.paging import page_of
from node.services.status import rpc
from node.topics import TopicPattern
from node.transport import Transport

FORWARD_TIMEOUT_S = 5.0
SetLocal = Callable[[str, ConsumptionSetting], Awaitable[ConsumptionRules]]


def describe(
    instance: InstanceDescription, rules: ConsumptionRules | None = None
) -> topics_pb2.InstanceConsumption:
    """One instance's row of the matrix (`rules`: this node's own, fresher than its properties)."""
    rules = rules or ConsumptionRules.from_properties(instance.properties)
    return topics_pb2.InstanceConsumption(
        instance_id=instance.id,
        name=instance.name,
        consumer_topics=instance.topics,
        settings=[
            topics_pb2.TopicSetting(topic=p, setting=topics_pb2.ConsumptionSetting.ValueType(int(s)))
            for p, s in sorted(rules.settings().items())
        ],
    )


def _view_order(instance: InstanceDescription) -> tuple[str, int, str]:
    """A topology view's own order of instances: cluster, start time, id."""
    return instance.cluster, instance.start_time_us, instance.id


class TopicServicer(topics_pb2_grpc.TopicServiceServicer):
    """Answers from the topology view; a change for another instance is forwarded to it."""

    def __init__(self, topology: Topology, set_local: SetLocal, channels: Transport | None = None) -> None:
        self._topology = topology
        self._set_local = set_local
        self._channels = channels or Transport()

    @rpc
    async def ListTopicConsumption(
        self, request: topics_pb2.ListTopicConsumptionRequest, context: grpc.aio.ServicerContext
    ) -> topics_pb2.ListTopicConsumptionResponse:
        """The live instances' consumer topics and settings, one page at a time."""
        page = page_of("instances", self._topology.view.instances, _view_order, request)
        return topics_pb2.ListTopicConsumptionResponse(
            instances=[describe(i) for i in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    @rpc
    async def SetTopicConsumption(
        self, request: topics_pb2.SetTopicConsumptionRequest, context: grpc.aio.ServicerContext
    ) -> topics_pb2.SetTopicConsumptionResponse:
        """Set the setting here, or forward it to the named instance."""
        try:
            TopicPattern.parse(request.topic)
        except InvalidArgument as e:
            raise InvalidArgument(f"topic: {e}") from e
        if request.setting and request.setting not in {int(s) for s in ConsumptionSetting}:
            raise InvalidArgument(f"setting {request.setting} is not a known ConsumptionSetting")
        setting = ConsumptionSetting(request.setting or ConsumptionSetting.ENABLED)
        view = self._topology.view
        wanted = request.instance
        found = [i for i in view.instances if not wanted or wanted in (i.id, i.name)]
        if wanted and not found:
            raise NotFound(f"no live instance with id or name {wanted!r}; `jobmesh topology` lists them")
        instance = view.local if not wanted else found[0]
        if instance.is_local:
            rules = await self._set_local(request.topic, setting)
            return topics_pb2.SetTopicConsumptionResponse(instance=describe(instance, rules))
        forwarded = topics_pb2.SetTopicConsumptionRequest(topic=request.topic, setting=request.setting)
        async with self._channels.create_channel(instance.address) as channel:
            try:
                response: topics_pb2.SetTopicConsumptionResponse = await topics_pb2_grpc.TopicServiceStub(
                    channel
                ).SetTopicConsumption(forwarded, timeout=FORWARD_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                raise PeerUnavailable(
                    f"instance {instance.name} ({instance.address}) did not take the setting: {e.details()}"
                ) from e
        return response
