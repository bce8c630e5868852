"""When the gRPC peer transport gives up a channel after timed-out calls (node/discovery/peers.py).

A channel stuck in a partition is dialled afresh, but a new connection costs a TLS handshake on
both sides, so a channel is retired only once nothing answered on it for a while: longer than
`STUCK_AFTER_S`, and longer than a few of the call's own timeouts (an unhealthy node stretches
its timeouts, and its calls time out because it is slow itself). A real gRPC server on loopback
that never answers a Ping stands in for the stuck peer.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from node.discovery import peers
from node.discovery.identity import InstanceInfo
from node.discovery.membership import MemberRecord, PeerState
from node.discovery.messages import Ping
from node.discovery.peers import GrpcPeerTransport
from node.errors import PeerUnavailable
from node.instance import now_us
from node.transport import Transport

STUCK_AFTER_S = 0.3


@pytest.fixture(autouse=True)
def short_stuck_after(monkeypatch: pytest.MonkeyPatch, no_thread_leaks: None) -> Iterator[None]:
    monkeypatch.setattr(peers, "STUCK_AFTER_S", STUCK_AFTER_S)
    yield
    gc.collect()  # a failed call's traceback may hold a channel (and gRPC's poller thread)


class SilentPeer:
    """A gRPC server whose MembershipService.Ping never answers."""

    def __init__(self) -> None:
        self.server = Transport().create_server(1024 * 1024)
        self.address = ""
        self._released = asyncio.Event()

    async def __aenter__(self) -> SilentPeer:
        async def ping(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
            await self._released.wait()
            return b""

        handler = grpc.unary_unary_rpc_method_handler(ping)
        service = grpc.method_handlers_generic_handler("jobmesh.peer.v1.MembershipService", {"Ping": handler})
        self.server.add_generic_rpc_handlers([service])
        self.address = f"127.0.0.1:{Transport().bind(self.server, '127.0.0.1', 0)}"
        await self.server.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._released.set()
        await self.server.stop(0)


def _ping() -> Ping:
    info = InstanceInfo(str(uuid.uuid4()), "a", now_us(), ("127.0.0.1:1",))
    return Ping(MemberRecord(info, 1, PeerState.ALIVE), str(uuid.uuid4()))


async def _time_out(transport: GrpcPeerTransport, address: str, timeout_s: float) -> None:
    with pytest.raises(PeerUnavailable, match="DEADLINE_EXCEEDED"):
        await transport.ping(address, _ping(), timeout_s)


def _holds_channel(transport: GrpcPeerTransport, address: str) -> bool:
    return address in transport._stubs


async def _seconds_until_retired(transport: GrpcPeerTransport, address: str, timeout_s: float) -> float:
    """Time calls out until the transport retires its channel; seconds from the channel's making."""
    made = time.monotonic()
    await _time_out(transport, address, timeout_s)
    while _holds_channel(transport, address):
        assert time.monotonic() - made < 10 * STUCK_AFTER_S, "the channel was never retired"
        await _time_out(transport, address, timeout_s)
    return time.monotonic() - made


async def test_a_channel_is_retired_once_nothing_answered_on_it_for_stuck_after() -> None:
    async with SilentPeer() as peer:
        transport = GrpcPeerTransport(reconnect_backoff_ms=100, channels=Transport())
        try:
            retired_after = await _seconds_until_retired(transport, peer.address, 0.05)
        finally:
            await transport.close()
    # Timeouts of a fresh channel do not retire it; the first after STUCK_AFTER_S does.
    assert STUCK_AFTER_S <= retired_after < STUCK_AFTER_S + 0.5


async def test_stretched_timeouts_stretch_the_quiet_time_before_a_channel_is_retired() -> None:
    timeout_s = 0.15  # STUCK_TIMEOUTS of these (0.6 s) outlast STUCK_AFTER_S (0.3 s)
    async with SilentPeer() as peer:
        transport = GrpcPeerTransport(reconnect_backoff_ms=100, channels=Transport())
        try:
            retired_after = await _seconds_until_retired(transport, peer.address, timeout_s)
        finally:
            await transport.close()
    assert peers.STUCK_TIMEOUTS * timeout_s <= retired_after < peers.STUCK_TIMEOUTS * timeout_s + 0.5
