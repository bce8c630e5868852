"""An in-memory network for transfer streams in one process (like node.discovery.memory).

`MemoryTransferNetwork.link(source)` is the TransferLink (link.py) of the node at `source`;
`attach(address, receiver)` makes an offloader reachable. Faults as node.memnet describes: a
crashed peer refuses streams and breaks the open ones; a paused peer or a cut link holds frames
until it is resumed or healed (a TCP connection that survived), then delivers them. Frames are
copied through their wire encoding, as gRPC would.
"""

from __future__ import annotations

import asyncio

from jobmesh.peer.v1 import transfer_pb2

from node.errors import JobmeshError, PeerUnavailable
from node.memnet import FaultModel
from node.transfer.link import TransferReceiver, TransferStream

POLL_S = 0.01
"""How often a held frame checks whether its link is back."""


class MemoryTransferNetwork(FaultModel):
    """Offloaders in one process, joined by in-memory transfer streams."""

    def __init__(self) -> None:
        super().__init__()
        self.receivers: dict[str, TransferReceiver] = {}

    def attach(self, address: str, receiver: TransferReceiver) -> None:
        """Make `receiver` reachable at `address` (again, after a crash: open streams stay broken)."""
        self.receivers[address] = receiver
        self.crashed.discard(address)

    def link(self, source: str) -> MemoryTransferLink:
        """The link the node at `source` sends with."""
        return MemoryTransferLink(self, source)


class MemoryTransferLink:
    """TransferLink of one node on a MemoryTransferNetwork."""

    def __init__(self, network: MemoryTransferNetwork, source: str) -> None:
        self.network = network
        self.source = source

    async def open(self, address: str) -> TransferStream:
        """A stream to `address`, or PeerUnavailable if it refuses connections."""
        receiver = self.network.receivers.get(address)
        if receiver is None or self.network.refused(self.source, address):
            raise PeerUnavailable(f"{address}: connection refused")
        return _MemoryStream(self.network, self.source, address, receiver)

    async def reconcile(
        self, address: str, request: transfer_pb2.ReconcileRequest
    ) -> transfer_pb2.ReconcileResponse:
        """Ask the offloader at `address`: refused if it is crashed or cut off for good, held
        while it is paused or the link is silent, copied through the wire encoding both ways."""
        receiver = self.network.receivers.get(address)
        if receiver is None or self.network.refused(self.source, address):
            raise PeerUnavailable(f"{address}: connection refused")
        while self.network.silent(self.source, address):
            await asyncio.sleep(POLL_S)
            if self.network.refused(self.source, address):
                raise PeerUnavailable(f"{address}: connection reset")
        copy = transfer_pb2.ReconcileRequest.FromString(request.SerializeToString())
        try:
            response = await receiver.reconcile(copy)
        except JobmeshError as e:
            raise PeerUnavailable(f"{address} refused a Reconcile: {e}") from e
        return transfer_pb2.ReconcileResponse.FromString(response.SerializeToString())

    async def close(self) -> None:
        """Nothing is kept between calls."""


class _MemoryStream:
    def __init__(self, network: MemoryTransferNetwork, source: str, address: str, receiver: TransferReceiver):
        self._network = network
        self._source = source
        self._address = address
        self._receiver = receiver
        self._assembler = receiver.assembler()  # one per stream, as the servicer keeps one per call
        self._broken = False

    def _check(self) -> None:
        network = self._network
        if (
            self._broken
            or network.refused(self._source, self._address)
            or network.receivers.get(self._address) is not self._receiver
        ):
            self._broken = True
            raise PeerUnavailable(f"transfer stream to {self._address} broke: connection reset")

    async def exchange(self, frame: transfer_pb2.ExchangeRequest) -> int:
        self._check()
        while self._network.silent(self._source, self._address):
            await asyncio.sleep(POLL_S)
            self._check()
        received = transfer_pb2.ExchangeRequest.FromString(frame.SerializeToString())
        try:
            await self._receiver.receive(received, self._assembler)
        except JobmeshError as e:  # the servicer aborts the call with INVALID_ARGUMENT
            self._broken = True
            raise PeerUnavailable(f"{self._address} rejected a frame: {e}") from e
        return int(received.last_seq)

    async def close(self) -> None:
        self._broken = True
