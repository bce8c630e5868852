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

if TYPE_CHECKING:
    from node.discovery.protocol import MembershipProtocol

R = TypeVar("R")


class MemoryNetwork:
    """Protocols in one process, joined by an in-memory network (for tests of protocol logic).

    `crash(address)` makes calls to it fail at once (connection refused); `pause(address)`
    makes them time out (a stopped process) until `resume`; `cut(a, b)` drops traffic
    between two addresses both ways until `heal`.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, MembershipProtocol] = {}
        self.crashed: set[str] = set()
        self.paused: set[str] = set()
        self.cuts: set[frozenset[str]] = set()

    def attach(self, address: str, protocol: MembershipProtocol) -> None:
        """Make `protocol` reachable at `address`."""
        self.nodes[address] = protocol
        self.crashed.discard(address)

    def transport(self, address: str) -> MemoryTransport:
        """The transport a protocol at `address` uses."""
        return MemoryTransport(self, address)

    def crash(self, address: str) -> None:
        """Calls to `address` fail at once."""
        self.crashed.add(address)

    def pause(self, address: str) -> None:
        """Calls to `address` time out."""
        self.paused.add(address)

    def resume(self, address: str) -> None:
        """Undo `pause`."""
        self.paused.discard(address)

    def cut(self, a: str, b: str) -> None:
        """Drop traffic between `a` and `b`."""
        self.cuts.add(frozenset((a, b)))

    def heal(self) -> None:
        """Undo every `cut`."""
        self.cuts.clear()

    async def deliver(
        self,
        source: str,
        address: str,
        timeout_s: float,
        handle: Callable[[MembershipProtocol], Awaitable[R]],
    ) -> R:
        """Run `handle` on the protocol at `address` as if the message came over the network."""
        node = self.nodes.get(address)
        if node is None or address in self.crashed or source in self.crashed:
            raise PeerUnavailable(f"{address}: connection refused")
        if address in self.paused or source in self.paused or frozenset((source, address)) in self.cuts:
            await asyncio.sleep(timeout_s)
            raise PeerUnavailable(f"{address}: deadline exceeded")
        try:
            return await asyncio.wait_for(handle(node), timeout_s)
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
