"""How the offloader reaches peers: a small seam with two implementations.

A `TransferLink` opens one `TransferStream` per peer; the stream sends a frame and returns the
outbox seq the peer acknowledged (after its commit). `GrpcTransferLink` (the default) speaks
TransferService.Exchange over a channel of the node's `Transport`; `MemoryTransferNetwork`
(node.transfer.memory) joins offloaders in one process, with crashes, pauses and cuts.

Contract (tests/test_transfer_link_contract.py runs it against both): frames arrive in order,
each applied before its ack; every failure (unreachable peer, broken stream, a frame the peer
rejected) raises PeerUnavailable, after which the stream is done and the sender opens a new one
(a partial chunked payload is discarded with its stream). `reconcile` is one question and its
answer (TransferService.Reconcile), PeerUnavailable on any failure. Coroutines run on the
node's loop.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import grpc
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc

from node.errors import PeerUnavailable
from node.transfer.chunks import ChunkAssembler
from node.transport import Transport

CONNECT_TIMEOUT_S = 2.0
"""How long opening a transfer stream waits for its connection (then the sender tries again)."""
RECONCILE_TIMEOUT_S = 10.0
"""A Reconcile call not answered by then counts as failed (it is asked again next round)."""


class TransferReceiver(Protocol):
    """The receiving side of transfer streams (the Offloader)."""

    def assembler(self) -> ChunkAssembler:
        """A reassembler of chunked payloads for one incoming stream."""
        ...

    async def receive(
        self, frame: transfer_pb2.ExchangeRequest, assembler: ChunkAssembler | None = None
    ) -> None:
        """Apply `frame` (persisted when this returns); JobmeshError if it is invalid."""

    async def reconcile(self, request: transfer_pb2.ReconcileRequest) -> transfer_pb2.ReconcileResponse:
        """Answer a peer's reconciliation question (see answers.py); JobmeshError if it is invalid."""
        ...


class TransferStream(Protocol):
    """One open stream to a peer."""

    async def exchange(self, frame: transfer_pb2.ExchangeRequest) -> int:
        """Send `frame`; returns the outbox seq the peer acknowledged. PeerUnavailable on any failure."""
        ...

    async def close(self) -> None:
        """End the stream (idempotent)."""


class TransferLink(Protocol):
    """Opens transfer streams to peers."""

    async def open(self, address: str) -> TransferStream:
        """A stream to the peer at `address` (PeerUnavailable if it cannot be reached)."""
        ...

    async def reconcile(
        self, address: str, request: transfer_pb2.ReconcileRequest
    ) -> transfer_pb2.ReconcileResponse:
        """Ask the peer at `address` (TransferService.Reconcile); PeerUnavailable on any failure."""
        ...

    async def close(self) -> None:
        """Release what the link keeps between calls (the node is stopping; idempotent)."""


class GrpcTransferLink:
    """TransferLink over gRPC: a channel and an Exchange call per stream."""

    def __init__(self, channels: Transport, max_message_bytes: int) -> None:
        self._channels = channels
        """The node's one channel factory (TLS, keepalive, limits)."""
        self._max_message_bytes = max_message_bytes
        self._unary: dict[str, grpc.aio.Channel] = {}
        """One channel per peer address for Reconcile calls."""

    async def open(self, address: str) -> TransferStream:
        """Dial `address` and wait until connected (PeerUnavailable after CONNECT_TIMEOUT_S).

        Waiting here, not in the first exchange, is what keeps a frame fresh: the sender reads
        a frame from its outbox only once it can leave at once. A frame written while a
        connection attempt hangs in a partition goes out when the partition heals, carrying
        jobs reassigned meanwhile, which the target would then run (fenced work, seen in the
        chaos scenario). Once connected, a frame cut off by a partition cannot arrive late: the
        target's keepalive closes that connection long before a job could be reassigned."""
        channel = self._channels.create_channel(address, self._max_message_bytes)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):  # not wait_for: see docs/architecture.md
                await channel.channel_ready()
        except TimeoutError:
            await channel.close()
            raise PeerUnavailable(f"{address} not reachable within {CONNECT_TIMEOUT_S:g}s") from None
        return _GrpcStream(address, channel, transfer_pb2_grpc.TransferServiceStub(channel).Exchange())

    async def reconcile(
        self, address: str, request: transfer_pb2.ReconcileRequest
    ) -> transfer_pb2.ReconcileResponse:
        """One unary call on a channel kept per address (a round every few seconds: no channel is
        made and torn down per call); a channel whose call failed is closed and made anew."""
        kept = self._unary.get(address)
        channel: grpc.aio.Channel = kept or self._channels.create_channel(address, self._max_message_bytes)
        self._unary[address] = channel
        try:
            stub = transfer_pb2_grpc.TransferServiceStub(channel)
            response: transfer_pb2.ReconcileResponse = await stub.Reconcile(
                request, timeout=RECONCILE_TIMEOUT_S
            )
            return response
        except grpc.aio.AioRpcError as e:
            if self._unary.get(address) is channel:
                del self._unary[address]
            await channel.close()  # idempotent: a call beside this one on it fails and is asked again
            raise PeerUnavailable(f"Reconcile at {address} failed: {e.code().name}: {e.details()}") from e

    async def close(self) -> None:
        """Close the channels kept for Reconcile (the node is stopping)."""
        channels, self._unary = list(self._unary.values()), {}
        for channel in channels:
            await channel.close()


class _GrpcStream:
    def __init__(self, address: str, channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall) -> None:
        self._address = address
        self._channel = channel
        self._call = call

    async def exchange(self, frame: transfer_pb2.ExchangeRequest) -> int:
        try:
            await self._call.write(frame)
            ack = await self._call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            raise PeerUnavailable(f"transfer stream to {self._address} broke: {e}") from e
        if not isinstance(ack, transfer_pb2.ExchangeResponse):
            raise PeerUnavailable(f"{self._address} closed the transfer stream")
        return int(ack.last_seq)

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close()
