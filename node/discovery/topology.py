"""`Topology`: this node's place in the topology, and the API the rest of the node uses.

    view = node.topology.view                          # the current TopologyView
    targets = view.consumers_of("images/resize")       # live instances consuming a topic
    node.topology.subscribe(on_event)                  # TOPOLOGY_INIT, CHANGING, CHANGED, ...
    members = node.topology.latest                     # as they are now, before the settle delay
    node.topology.properties.set("rack", "r1")         # every peer sees it within a second

It wires the membership protocol (liveness), mDNS (finding peers), the instance properties
(published through the protocol) and the view tracker (settled views and events).

Threading: `start`, `stop`, `view`, `latest`, `subscribe`, `add_membership_listener` and
`events` belong to the node's event loop; listeners run there. `properties` may be changed from
any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from node.discovery.config import DiscoveryConfig
from node.discovery.events import EventStream, Subscription, TopologyListener, ViewTracker
from node.discovery.identity import InstanceInfo, local_endpoints, mdns_addresses
from node.discovery.mdns import MdnsDiscovery
from node.discovery.membership import MemberRecord, PeerState
from node.discovery.peers import GrpcPeerTransport, PeerTransport
from node.discovery.properties import InstanceProperties
from node.discovery.protocol import MembershipProtocol
from node.discovery.view import TopologyView, build_view
from node.errors import DuplicateInstance
from node.instance import InstanceIdentity, now_us
from node.transport import Transport

log = logging.getLogger(__name__)


class Topology:
    """Discovery, membership, instance properties and topology views of one node.

    Create it with the node (so properties and consumers can be set up before start);
    `start()` it once the gRPC server serves, `stop()` it first thing on shutdown.
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        transport: PeerTransport | None = None,
        channels: Transport | None = None,
    ) -> None:
        self.config = config
        self._channels = channels or Transport()
        self.properties = InstanceProperties(config.max_properties_bytes, config.properties)
        """This node's instance properties (thread-safe)."""
        self._transport = transport
        self._protocol: MembershipProtocol | None = None
        self._tracker: ViewTracker | None = None
        self._mdns: MdnsDiscovery | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._membership_listeners: list[Callable[[], None]] = []
        self._refresher: asyncio.Task[None] | None = None
        self.info: InstanceInfo | None = None
        """This node as peers see it (after start)."""
        self.properties.add_listener(self._properties_changed)

    # --- lifecycle ---

    async def start(self, identity: InstanceIdentity, port: int, host: str, fingerprint: str = "") -> None:
        """Join the topology as `identity`, serving gRPC on `host:port`; `fingerprint`: the short
        cluster CA fingerprint (mDNS advertises it and ignores nodes of other clusters)."""
        config = self.config
        self._loop = asyncio.get_running_loop()
        self.info = InstanceInfo(
            id=identity.id,
            name=identity.name,
            start_time_us=identity.start_time_us,
            endpoints=local_endpoints(host, port, config.advertise_addresses, config.interfaces),
            cluster=config.cluster,
        )
        local = MemberRecord(self.info, identity.start_time_us, PeerState.ALIVE, self.properties.snapshot())
        transport = self._transport or GrpcPeerTransport(
            reconnect_backoff_ms=max(50, round(config.probe_interval_s * 1000)), channels=self._channels
        )
        self._protocol = MembershipProtocol(config, local, transport, self._membership_changed, config.seeds)
        self._tracker = ViewTracker(config.settle_delay_s, self._snapshot)
        await self._protocol.start()
        if config.mdns:
            self._mdns = MdnsDiscovery(
                self.info,
                mdns_addresses(host, config.interfaces),
                self._found,
                self._protocol.probe_soon,
                fingerprint,
            )
            await self._mdns.start()
        self._refresher = self._loop.create_task(self._refresh_providers(), name="topology-providers")
        log.info(
            "topology: %s (%s) at %s, cluster %r, mDNS %s, seeds %s",
            self.info.name,
            self.info.id,
            ", ".join(self.info.endpoints),
            self.info.cluster,
            "on" if config.mdns else "off",
            ", ".join(config.seeds) or "none",
        )

    async def stop(self) -> None:
        """Leave the topology (unless this node is a refused duplicate) and release everything."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._protocol is not None:
            await self._protocol.leave()
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None
        if self._protocol is not None:
            await self._protocol.stop()
        if self._tracker is not None:
            self._tracker.close()
        self._loop = None

    async def wait_failure(self) -> DuplicateInstance:
        """Wait until this node must stop because an earlier live node owns its instance id."""
        return await self.protocol.wait_failure()

    # --- the public API ---

    @property
    def protocol(self) -> MembershipProtocol:
        """The membership protocol (after start)."""
        if self._protocol is None:
            raise RuntimeError("the topology is not started")
        return self._protocol

    @property
    def view(self) -> TopologyView:
        """The current view: settled membership and properties, live state and last-heard times."""
        tracker, protocol = self._started()
        live = {
            m.record.id: (m.record.state, m.record.incarnation, m.last_heard_us)
            for m in protocol.table.live()
        }
        local = protocol.table.local
        live[local.id] = (PeerState.ALIVE, local.incarnation, now_us())
        return tracker.view.with_live_fields(live)

    @property
    def settled(self) -> TopologyView:
        """The settled view alone (membership and properties, as of the last TOPOLOGY_CHANGED):
        cheaper than `view` for whoever reads only properties, many times a second."""
        return self._started()[0].view

    @property
    def latest(self) -> TopologyView:
        """Membership and properties as they are now, also while a change settles: for whoever
        acts on each member at once (placement). No event announced it, so it is never current;
        listeners that want a settled view use `view` and the events."""
        tracker, _protocol = self._started()
        return self._snapshot(tracker.view.version, lambda _: False)

    def add_membership_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` on the loop after every change of the members, their states or
        their properties, before any settle delay (it must return quickly); returns the undo."""
        self._membership_listeners.append(listener)

        def undo() -> None:
            with contextlib.suppress(ValueError):  # undone already
                self._membership_listeners.remove(listener)

        return undo

    @property
    def changing(self) -> bool:
        """True between TOPOLOGY_CHANGING and TOPOLOGY_CHANGED."""
        return self._started()[0].changing

    def subscribe(self, listener: TopologyListener) -> Subscription:
        """Call `listener(event)` for every topology event, starting with TOPOLOGY_INIT now.

        The listener runs on the node's event loop and must return quickly.
        """
        return self._started()[0].subscribe(listener)

    def events(self) -> EventStream:
        """Topology events as an async iterator (TOPOLOGY_INIT first); ends when the node stops."""
        return EventStream(self._started()[0])

    # --- internals ---

    def _started(self) -> tuple[ViewTracker, MembershipProtocol]:
        if self._tracker is None or self._protocol is None:
            raise RuntimeError("the topology is not started")
        return self._tracker, self._protocol

    def _snapshot(self, version: int, current: Callable[[TopologyView], bool]) -> TopologyView:
        protocol = self.protocol
        return build_view(version, protocol.table.local, protocol.table, now_us(), current)

    def _membership_changed(self) -> None:
        if self._tracker is not None:
            self._tracker.changed()
        for listener in list(self._membership_listeners):
            try:
                listener()
            except Exception:
                log.exception("a membership listener failed")

    def _found(self, address: str, instance_id: str) -> None:
        protocol = self.protocol
        if instance_id == protocol.local.id:
            protocol.check_duplicate(address)
        else:
            protocol.contact(address, expected_id=instance_id)

    def _properties_changed(self) -> None:
        """Called on whichever thread changed the properties."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not started: `start` publishes the properties as they are then
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._publish_properties)

    def _publish_properties(self) -> None:
        if self._protocol is not None and self._protocol.running:
            self._protocol.set_local_properties(self.properties.snapshot())

    async def _refresh_providers(self) -> None:
        while True:
            await asyncio.sleep(self.config.provider_interval_s)
            self.properties.refresh()
