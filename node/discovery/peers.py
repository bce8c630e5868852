"""How the membership protocol reaches peers: a small seam with two implementations.

`GrpcPeerTransport` (the default) calls peers' MembershipService over gRPC, one cached
channel per address, created in `node.transport`. `MemoryNetwork` (node.discovery.memory)
connects protocols in one process, with crashes, pauses and partitions, for fast tests of the
protocol's logic (memberlist's MockNetwork).

Every call raises PeerUnavailable when the peer does not answer in time or cannot be
reached, and DuplicateInstance when the peer says our instance id belongs to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc
from jobmesh.peer.v1 import membership_pb2_grpc

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
from node.discovery.proofs import ServerProofs
from node.errors import DuplicateInstance, InvalidArgument, PeerUnavailable
from node.transport import Transport

R = TypeVar("R")

log = logging.getLogger(__name__)

_HANDSHAKE_FAILED = re.compile(r"SSL_ERROR|CERTIFICATE_|TSI_")
"""What gRPC's details say when a peer's TLS handshake failed on trust (another cluster, a
stranger); not a connection that closed mid-handshake (a busy or stopping peer)."""

IDENTITY_CHECK_TIMEOUT_S = 2.0
"""How long the TLS handshake that checks a claim of this node's instance id may take."""
STUCK_AFTER_S = 1.0
"""A call that times out retires its channel once no call to that address was answered this
long, and for `STUCK_TIMEOUTS` of the call's own timeout."""
STUCK_TIMEOUTS = 4
"""Callers stretch their timeouts when this node is unhealthy (health.py): its calls then time
out because it is slow itself, and a new connection would only add TLS handshakes on both sides."""
RETIRE_GRACE_S = 5.0
"""A retired channel's calls get this long to end (longer than any membership call's deadline)."""


def _being_cancelled() -> bool:
    """True if the current task was asked to stop (as opposed to a call cancelled under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class PeerTransport(Protocol):
    """Outgoing membership calls. Coroutines run on the node's event loop."""

    async def ping(self, address: str, message: Ping, timeout_s: float) -> Ack:
        """Probe the peer at `address`."""
        ...

    async def indirect_ping(self, address: str, message: IndirectPing, timeout_s: float) -> IndirectAck:
        """Ask the peer at `address` to probe another one."""
        ...

    async def sync(self, address: str, message: Sync, timeout_s: float) -> SyncReply:
        """Exchange member tables with the peer at `address`."""
        ...

    async def gossip(self, address: str, message: Gossip, timeout_s: float) -> GossipAck:
        """Push news to the peer at `address`."""
        ...

    async def forget(self, address: str) -> None:
        """Release what is held for `address` (a member that is gone for good)."""
        ...

    async def close(self) -> None:
        """Release everything."""
        ...


class GrpcPeerTransport:
    """PeerTransport over gRPC: one channel per peer address, reused across calls."""

    def __init__(self, reconnect_backoff_ms: int, channels: Transport) -> None:
        self._reconnect_backoff_ms = reconnect_backoff_ms
        self._channels = channels
        self._stubs: dict[str, tuple[grpc.aio.Channel, membership_pb2_grpc.MembershipServiceStub]] = {}
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}
        self._refused: set[str] = set()
        """Addresses whose TLS handshake failed, logged once until a call to them succeeds."""
        self._liars: set[str] = set()
        """Addresses whose server proved another instance than an answer named (logged once)."""
        self._proofs = ServerProofs(self._handshake)
        self._answered_at: dict[str, float] = {}
        """Address -> monotonic time a call to it was last answered (or its channel was made)."""

    async def _handshake(self, address: str) -> str | None:
        return await self._channels.server_instance(address, IDENTITY_CHECK_TIMEOUT_S)

    def _stub(self, address: str) -> membership_pb2_grpc.MembershipServiceStub:
        entry = self._stubs.get(address)
        if entry is None:
            channel = self._channels.create_peer_channel(address, self._reconnect_backoff_ms)
            entry = (channel, membership_pb2_grpc.MembershipServiceStub(channel))
            self._stubs[address] = entry
            self._answered_at[address] = time.monotonic()  # a new channel is not stuck yet
        return entry[1]

    async def _call(self, address: str, method: str, request: Any, timeout_s: float) -> Any:
        # This frame keeps no channel, call or task in its locals, and errors are raised outside
        # `except`: a traceback cycle through such a frame would keep the channel (and gRPC's
        # poller thread) alive until the cyclic GC happens to run.
        try:
            response = await getattr(self._stub(address), method)(request, timeout=timeout_s)
            self._refused.discard(address)
            self._answered_at[address] = time.monotonic()
            return response
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details()
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # our caller is being cancelled: let it
            # grpc.aio raises CancelledError for a call its channel cancelled (channel closed):
            # for the protocol that is an unreachable peer, never the end of its task.
            code, details = grpc.StatusCode.CANCELLED, "the channel was closed"
        if code is grpc.StatusCode.ALREADY_EXISTS:
            if await self._holds_our_id(address):
                raise DuplicateInstance(details or "instance id in use")
            raise PeerUnavailable(
                f"{address} {method}: claims this node's instance id without its certificate"
            )
        handshake_failed = code is grpc.StatusCode.UNAVAILABLE and _HANDSHAKE_FAILED.search(details or "")
        if handshake_failed and address not in self._refused:  # once per peer, not once per probe
            self._refused.add(address)
            log.warning(
                "the peer at %s stays out of the view: the TLS handshake failed (%s); a node of "
                "another cluster, or a certificate this cluster's CA did not issue",
                address,
                details,
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and self._stuck(address, timeout_s):
            # The connection may be stuck (a partition, a paused peer): TCP would retry it with
            # growing backoff long after the network healed. Dial afresh next time.
            self._retire(address)
        raise PeerUnavailable(f"{address} {method}: {code.name}: {details}")

    def _stuck(self, address: str, timeout_s: float) -> bool:
        """True if no call to `address` was answered for `STUCK_AFTER_S` and `STUCK_TIMEOUTS`
        timeouts of the call: one late answer from a busy peer, or calls slowed by this node's
        own load, do not cost a new connection (and its TLS handshake) on both sides."""
        answered = self._answered_at.get(address)
        quiet_s = max(STUCK_AFTER_S, STUCK_TIMEOUTS * timeout_s)
        return answered is None or time.monotonic() - answered >= quiet_s

    async def _holds_our_id(self, address: str) -> bool:
        """True if the server at `address` proves this node's instance id in its certificate (a
        copied data dir carries the certificate); any other server's ALREADY_EXISTS is a lie."""
        own = self._channels.own_instance
        return not own or await self._proves(address, own, "says this node's instance id is its own")

    async def _proves(self, address: str, instance_id: str, claim: str) -> bool:
        """True if the server at `address` holds a certificate naming `instance_id` (always in
        plaintext, where nothing can be proved). Handshakes are cached, shared and rate-limited
        (proofs.py); a proof of another instance is logged once per address."""
        if not self._channels.secure:
            return True
        proof = await self._proofs.proof(address, instance_id)
        if proof.instance == instance_id or (proof.instance is None and not proof.problem):
            return True
        if proof.problem:
            log.debug("the peer at %s %s, not proven yet: %s", address, claim, proof.problem)
            return False
        if address not in self._liars:
            self._liars.add(address)
            log.warning(
                "the peer at %s %s, but its certificate names instance %s: ignored (a peer may speak "
                "only for itself)",
                address,
                claim,
                proof.instance,
            )
        return False

    async def _answered_by(self, address: str, method: str, responder_id: str) -> None:
        """PeerUnavailable unless the server at `address` is the instance its answer names."""
        if not await self._proves(address, responder_id, f"answers as instance {responder_id}"):
            raise PeerUnavailable(f"{address} {method}: answers as {responder_id} without its certificate")

    @staticmethod
    def _decode(address: str, decode: Callable[[Any], R], response: Any) -> R:
        try:
            return decode(response)
        except InvalidArgument as e:
            problem = str(e)
        raise PeerUnavailable(f"{address} sent a malformed answer: {problem}")

    async def ping(self, address: str, message: Ping, timeout_s: float) -> Ack:
        """Probe the peer at `address`."""
        response = await self._call(address, "Ping", message.to_proto(), timeout_s)
        answer = self._decode(address, Ack.from_proto, response)
        await self._answered_by(address, "Ping", answer.responder.id)
        return answer

    async def indirect_ping(self, address: str, message: IndirectPing, timeout_s: float) -> IndirectAck:
        """Ask the peer at `address` to probe another one."""
        response = await self._call(address, "IndirectPing", message.to_proto(), timeout_s)
        answer = self._decode(address, IndirectAck.from_proto, response)
        await self._answered_by(address, "IndirectPing", answer.responder.id)
        return answer

    async def sync(self, address: str, message: Sync, timeout_s: float) -> SyncReply:
        """Exchange member tables with the peer at `address`."""
        response = await self._call(address, "Sync", message.to_proto(), timeout_s)
        answer = self._decode(address, SyncReply.from_proto, response)
        await self._answered_by(address, "Sync", answer.responder.id)
        return answer

    async def gossip(self, address: str, message: Gossip, timeout_s: float) -> GossipAck:
        """Push news to the peer at `address`."""
        response = await self._call(address, "Gossip", message.to_proto(), timeout_s)
        answer = self._decode(address, GossipAck.from_proto, response)
        await self._answered_by(address, "Gossip", answer.responder.id)
        return answer

    def _retire(self, address: str) -> None:
        """Stop using the channel to `address`; close it once its calls have ended.

        Closing at once would cancel other calls in flight on it (a sync beside a probe).
        """
        entry = self._stubs.pop(address, None)
        if entry is not None:
            channel = entry[0]
            task = asyncio.get_running_loop().create_task(
                channel.close(grace=RETIRE_GRACE_S), name=f"close-channel-{address}"
            )
            self._retired[channel] = task
            task.add_done_callback(lambda _: self._retired.pop(channel, None))

    async def forget(self, address: str) -> None:
        """Release the channel to `address` (its calls may finish first)."""
        self._retire(address)
        self._proofs.forget(address)
        self._answered_at.pop(address, None)

    async def close(self) -> None:
        """Close every channel, cancelling calls still in flight."""
        channels = [channel for channel, _ in self._stubs.values()]
        self._stubs.clear()
        for channel, task in list(self._retired.items()):
            task.cancel()
            channels.append(channel)
        self._retired.clear()
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)
