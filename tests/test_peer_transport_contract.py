"""The PeerTransport contract, written once and run against both implementations: the gRPC
transport (real servers on loopback) and the in-memory network the protocol tests use.

Each test gets a `Peers` (a parametrised fixture): real MembershipProtocols at addresses, a
transport to call them with, and a way to crash one. Async fixtures are not supported by the
suite's runner, so a test enters the peers itself (`async with peers:`).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Iterator
from types import TracebackType

import grpc
import pytest
from jobmesh.peer.v1 import membership_pb2_grpc

from node.discovery.config import DiscoveryConfig
from node.discovery.identity import InstanceInfo
from node.discovery.membership import MemberRecord, PeerState
from node.discovery.memory import MemoryNetwork
from node.discovery.messages import Gossip, IndirectPing, Ping, Sync
from node.discovery.peers import GrpcPeerTransport, PeerTransport
from node.discovery.protocol import MembershipProtocol
from node.errors import DuplicateInstance, PeerUnavailable
from node.instance import now_us
from node.services.topology import MembershipServicer
from node.transport import Transport
from tests.support.waiting import async_wait_for

QUIET = DiscoveryConfig(mdns=False, probe_interval_s=60, sync_interval_s=60, gossip_interval_s=60)
"""No rounds of their own during a test: only the calls the test makes."""
TIMEOUT_S = 1.0


def record(
    name: str, address: str, instance_id: str | None = None, start_us: int | None = None
) -> MemberRecord:
    """An ALIVE member record of a node called `name` at `address`."""
    info = InstanceInfo(instance_id or str(uuid.uuid4()), name, start_us or now_us(), (address,))
    return MemberRecord(info, 1, PeerState.ALIVE)


class Peers:
    """Membership protocols at addresses, reached through one implementation of PeerTransport."""

    def __init__(self) -> None:
        self.protocols: dict[str, MembershipProtocol] = {}
        self._transports: list[PeerTransport] = []

    async def __aenter__(self) -> Peers:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(p.stop() for p in self.protocols.values()))
        await asyncio.gather(*(t.close() for t in self._transports))
        await self._close()
        self.protocols.clear()
        self._transports.clear()

    async def add(self, name: str) -> str:
        """Start a protocol called `name`; returns its address."""
        address = await self._listen(name)
        protocol = MembershipProtocol(QUIET, record(name, address), self.transport(address))
        self._serve(address, protocol)
        self.protocols[address] = protocol
        await protocol.start()
        return address

    def transport(self, source: str) -> PeerTransport:
        """A transport for calls from `source`."""
        made = self._transport(source)
        self._transports.append(made)
        return made

    # --- per implementation ---

    async def _listen(self, name: str) -> str:
        raise NotImplementedError

    def _serve(self, address: str, protocol: MembershipProtocol) -> None:
        raise NotImplementedError

    def _transport(self, source: str) -> PeerTransport:
        raise NotImplementedError

    async def crash(self, address: str) -> None:
        """The peer at `address` is gone (its process died)."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Release what the implementation holds."""


class GrpcPeers(Peers):
    """Each protocol behind its own gRPC server on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self._servers: dict[str, grpc.aio.Server] = {}
        self._bound: dict[str, MembershipProtocol] = {}

    async def _listen(self, name: str) -> str:
        server = Transport().create_server(1024 * 1024)
        port = Transport().bind(server, "127.0.0.1", 0)
        address = f"127.0.0.1:{port}"
        membership_pb2_grpc.add_MembershipServiceServicer_to_server(
            MembershipServicer(lambda: self._bound[address]), server
        )
        await server.start()
        self._servers[address] = server
        return address

    def _serve(self, address: str, protocol: MembershipProtocol) -> None:
        self._bound[address] = protocol

    def _transport(self, source: str) -> PeerTransport:
        return GrpcPeerTransport(reconnect_backoff_ms=100, channels=Transport())

    async def crash(self, address: str) -> None:
        await self._servers.pop(address).stop(0)

    async def _close(self) -> None:
        await asyncio.gather(*(s.stop(0) for s in self._servers.values()))
        self._servers.clear()
        self._bound.clear()


class MemoryPeers(Peers):
    """Every protocol on one MemoryNetwork."""

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork()
        self._count = 0

    async def _listen(self, name: str) -> str:
        self._count += 1
        return f"{name}:{self._count}"

    def _serve(self, address: str, protocol: MembershipProtocol) -> None:
        self.network.attach(address, protocol)

    def _transport(self, source: str) -> PeerTransport:
        return self.network.transport(source)

    async def crash(self, address: str) -> None:
        self.network.crash(address)


@pytest.fixture(params=["grpc", "memory"])
def peers(request: pytest.FixtureRequest, no_thread_leaks: None) -> Iterator[Peers]:
    """Each implementation of PeerTransport in turn."""
    yield GrpcPeers() if request.param == "grpc" else MemoryPeers()
    # gRPC's poller thread ends once no channel or server object is left alive; a failed call's
    # traceback (kept by pytest.raises in the test's frame) may hold one in a reference cycle.
    gc.collect()


async def test_a_ping_is_answered_by_the_member_at_the_address(peers: Peers) -> None:
    async with peers:
        a, b = await peers.add("a"), await peers.add("b")
        ack = await peers.transport(a).ping(
            b, Ping(peers.protocols[a].local, peers.protocols[b].local.id), TIMEOUT_S
        )
        assert ack.responder.id == peers.protocols[b].local.id


async def test_a_sync_exchanges_member_tables_both_ways(peers: Peers) -> None:
    async with peers:
        a, b = await peers.add("a"), await peers.add("b")
        local = peers.protocols[a].local
        reply = await peers.transport(a).sync(b, Sync(local, (local,)), TIMEOUT_S)
        assert reply.responder.id == peers.protocols[b].local.id
        assert peers.protocols[b].table.get(local.id) is not None  # b learned a from the sync


async def test_gossip_delivers_records_of_third_members_which_the_receiver_confirms(peers: Peers) -> None:
    async with peers:
        a, b, c = await peers.add("a"), await peers.add("b"), await peers.add("c")
        third, fake = peers.protocols[c].local, record("fake", "elsewhere:1")
        message = Gossip(peers.protocols[a].local, (third, fake))
        ack = await peers.transport(a).gossip(b, message, TIMEOUT_S)
        assert ack.responder.id == peers.protocols[b].local.id
        # Hearsay: b asks c itself, and c's own answer enters b's table; the fake never answers.
        await async_wait_for(lambda: peers.protocols[b].table.get(third.info.id), TIMEOUT_S, "b to learn c")
        assert peers.protocols[b].table.get(fake.info.id) is None


async def test_an_indirect_ping_probes_the_target_through_the_helper(peers: Peers) -> None:
    async with peers:
        a, helper, target = await peers.add("a"), await peers.add("helper"), await peers.add("target")
        target_id = peers.protocols[target].local.id
        message = IndirectPing(peers.protocols[a].local, target_id, target, TIMEOUT_S / 2)
        answer = await peers.transport(a).indirect_ping(helper, message, TIMEOUT_S)
        assert answer.reachable
        assert answer.target is not None
        assert answer.target.id == target_id

        # When the target is gone, the helper says so (the call itself succeeds)
        await peers.crash(target)
        answer = await peers.transport(a).indirect_ping(helper, message, TIMEOUT_S)
        assert not answer.reachable


async def test_a_crashed_member_is_unavailable_within_the_timeout(peers: Peers) -> None:
    async with peers:
        a, b = await peers.add("a"), await peers.add("b")
        await peers.crash(b)
        started = time.monotonic()
        with pytest.raises(PeerUnavailable):
            await peers.transport(a).ping(b, Ping(peers.protocols[a].local, "b"), TIMEOUT_S)
        assert time.monotonic() - started < TIMEOUT_S + 0.5


async def test_a_later_run_with_a_live_members_instance_id_is_refused(peers: Peers) -> None:
    async with peers:
        b = await peers.add("b")
        owner = peers.protocols[b].local
        copy = record("copy", "copy:1", instance_id=owner.id, start_us=owner.info.start_time_us + 1)
        with pytest.raises(DuplicateInstance):
            await peers.transport("copy:1").ping(b, Ping(copy, owner.id), TIMEOUT_S)
