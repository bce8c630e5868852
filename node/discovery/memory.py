"""An in-memory network for membership protocols in one process (memberlist's MockNetwork).

`MemoryTransport` is the `PeerTransport` (node.discovery.peers) a protocol uses on it; tests
crash, pause and cut links to exercise the protocol's failure detection without processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from node.discovery.messages import (
    Ack,
    Gossip,
    GossipAck,
    IndirectAck,
    IndirectPing,
    Ping,
    Sync,
    SyncReply,
)
from node.errors import DuplicateInstance, PeerUnavailable, Unavailable
from node.memnet import FaultModel

if TYPE_CHECKING:
    from node.discovery.protocol import MembershipProtocol

R = TypeVar("R")


class MemoryNetwork(FaultModel):
    """Protocols in one process, joined by an in-memory network (for tests of protocol logic).

    Faults (crash, pause, cut) as node.memnet describes: a call to a crashed peer fails at
    once (connection refused), one to a paused or cut-off peer times out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, MembershipProtocol] = {}

    def attach(self, address: str, protocol: MembershipProtocol) -> None:
        """Make `protocol` reachable at `address`."""
        self.nodes[address] = protocol
        self.crashed.discard(address)

    def transport(self, address: str) -> MemoryTransport:
        """The transport a protocol at `address` uses."""
        return MemoryTransport(self, address)

    async def deliver(
        self,
        source: str,
        address: str,
        timeout_s: float,
        handle: Callable[[MembershipProtocol], Awaitable[R]],
    ) -> R:
        """Run `handle` on the protocol at `address` as if the message came over the network."""
        node = self.nodes.get(address)
        if node is None or self.refused(source, address):
            raise PeerUnavailable(f"{address}: connection refused")
        if self.silent(source, address):
            await asyncio.sleep(timeout_s)
            raise PeerUnavailable(f"{address}: deadline exceeded")
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see docs/architecture.md
                return await handle(node)
        except TimeoutError as e:
            raise PeerUnavailable(f"{address}: deadline exceeded") from e
        except DuplicateInstance:
            raise
        except Unavailable as e:
            raise PeerUnavailable(f"{address}: {e}") from e


class MemoryTransport:
    """PeerTransport of one protocol on a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self.address = address

    async def ping(self, address: str, message: Ping, timeout_s: float) -> Ack:
        """Probe the peer at `address`."""
        return await self._network.deliver(self.address, address, timeout_s, lambda n: n.handle_ping(message))

    async def indirect_ping(self, address: str, message: IndirectPing, timeout_s: float) -> IndirectAck:
        """Ask the peer at `address` to probe another one."""
        return await self._network.deliver(
            self.address, address, timeout_s, lambda n: n.handle_indirect_ping(message)
        )

    async def sync(self, address: str, message: Sync, timeout_s: float) -> SyncReply:
        """Exchange member tables with the peer at `address`."""
        return await self._network.deliver(self.address, address, timeout_s, lambda n: n.handle_sync(message))

    async def gossip(self, address: str, message: Gossip, timeout_s: float) -> GossipAck:
        """Push news to the peer at `address`."""
        return await self._network.deliver(
            self.address, address, timeout_s, lambda n: n.handle_gossip(message)
        )

    async def forget(self, address: str) -> None:
        """Nothing is held per peer."""

    async def close(self) -> None:
        """Nothing to release."""
