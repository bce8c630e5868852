"""gRPC servicers of discovery: the public TopologyService and the peer MembershipService."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from jobmesh.peer.v1 import membership_pb2, membership_pb2_grpc
from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from node.discovery.events import EventStreamOverflow
from node.discovery.messages import Gossip, IndirectPing, Ping, Sync
from node.discovery.properties import RESERVED_PREFIX
from node.discovery.protocol import MembershipProtocol
from node.discovery.topology import Topology
from node.errors import InvalidArgument, Unavailable
from node.services.status import rpc

log = logging.getLogger(__name__)

MAX_REMOVED_PROPERTIES = 1000
"""Names one SetInstanceProperties call may remove (the properties set are bounded in bytes)."""


class TopologyServicer(topology_pb2_grpc.TopologyServiceServicer):
    """TopologyService: read and watch this node's topology view; set its instance properties."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    @rpc
    async def GetTopology(
        self, request: topology_pb2.GetTopologyRequest, context: grpc.aio.ServicerContext
    ) -> topology_pb2.GetTopologyResponse:
        try:
            view = self._topology.view
        except RuntimeError as e:
            raise Unavailable("the node is not part of the topology yet (starting or stopped)") from e
        return topology_pb2.GetTopologyResponse(view=view.to_proto())

    async def WatchTopology(
        self, request: topology_pb2.WatchTopologyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[topology_pb2.WatchTopologyResponse]:
        try:
            stream = self._topology.events()
        except RuntimeError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is not part of the topology yet")
        try:
            async for event in stream:
                yield topology_pb2.WatchTopologyResponse(event=event.to_proto())
        except EventStreamOverflow as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; watch again")
        finally:
            stream.close()

    @rpc
    async def SetInstanceProperties(
        self, request: topology_pb2.SetInstancePropertiesRequest, context: grpc.aio.ServicerContext
    ) -> topology_pb2.SetInstancePropertiesResponse:
        if len(request.remove) > MAX_REMOVED_PROPERTIES:
            raise InvalidArgument(
                f"remove has {len(request.remove)} names; at most {MAX_REMOVED_PROPERTIES} per call"
            )
        for name in [*request.set, *request.remove]:
            if name.startswith(RESERVED_PREFIX):
                raise InvalidArgument(
                    f"instance property {name!r}: names starting with {RESERVED_PREFIX!r} are published "
                    "by the node itself"
                )
        properties = self._topology.properties.update(dict(request.set), remove=list(request.remove))
        return topology_pb2.SetInstancePropertiesResponse(properties=properties)


class MembershipServicer(membership_pb2_grpc.MembershipServiceServicer):
    """MembershipService: the peer-to-peer side of the membership protocol."""

    def __init__(self, protocol: Callable[[], MembershipProtocol]) -> None:
        self._get_protocol = protocol
        """The protocol to answer with (RuntimeError while there is none, e.g. not started)."""

    def _protocol(self) -> MembershipProtocol:
        try:
            return self._get_protocol()
        except RuntimeError as e:
            raise Unavailable("this node is not part of the topology yet") from e

    @rpc
    async def Ping(
        self, request: membership_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.PingResponse:
        ack = await self._protocol().handle_ping(Ping.from_proto(request))
        return ack.to_proto()

    @rpc
    async def IndirectPing(
        self, request: membership_pb2.IndirectPingRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.IndirectPingResponse:
        answer = await self._protocol().handle_indirect_ping(IndirectPing.from_proto(request))
        return answer.to_proto()

    @rpc
    async def Sync(
        self, request: membership_pb2.SyncRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.SyncResponse:
        reply = await self._protocol().handle_sync(Sync.from_proto(request))
        return reply.to_proto()

    @rpc
    async def Gossip(
        self, request: membership_pb2.GossipRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.GossipResponse:
        ack = await self._protocol().handle_gossip(Gossip.from_proto(request))
        return ack.to_proto()


def add_topology_servicers(server: grpc.aio.Server, topology: Topology) -> None:
    """Serve TopologyService and MembershipService for `topology` on `server`."""
    topology_pb2_grpc.add_TopologyServiceServicer_to_server(TopologyServicer(topology), server)
    membership_pb2_grpc.add_MembershipServiceServicer_to_server(
        MembershipServicer(lambda: topology.protocol), server
    )
