"""TransferService: peers stream offloaded jobs and reports to this node, and ask it to reconcile
(see transfer.proto)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc

from node.errors import InvalidArgument, JobmeshError
from node.services.decoding import BadRequestCounter
from node.services.status import status_for
from node.transfer.link import TransferReceiver

log = logging.getLogger(__name__)


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """Applies each received frame, then acknowledges it."""

    def __init__(self, offloader: TransferReceiver) -> None:
        self._offloader = offloader
        self._closing = asyncio.Event()
        # The text, not the exception, is logged: a kept log record would keep the call's frames alive.
        self.refused = BadRequestCounter(
            message="%d transfer frame(s) refused (latest from %s: %s)", logger=log
        )

    def close(self) -> None:
        """End every open stream now (the node is stopping); senders resend unacknowledged frames."""
        self._closing.set()

    async def Exchange(  # type: ignore[override]  # the read/write API
        self, request_iterator: AsyncIterator[transfer_pb2.ExchangeRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Apply frames in order; acknowledge each after its commit."""
        closing = asyncio.ensure_future(self._closing.wait())
        assembler = self._offloader.assembler()  # a partial payload is discarded with its stream
        read: asyncio.Future[Any] | None = None
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                await asyncio.wait((read, closing), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    return
                frame = read.result()
                if frame is grpc.aio.EOF:
                    return
                await self._offloader.receive(frame, assembler)
                await context.write(transfer_pb2.ExchangeResponse(last_seq=frame.last_seq))
        except JobmeshError as e:
            self.refused.record(context.peer(), str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (asyncio.CancelledError, grpc.RpcError):
            # The sender went away or this node is stopping; it resends what it has no ack for.
            return
        finally:
            closing.cancel()
            if read is not None and not read.done():
                # The call ended under a pending read (the sender went away): its error is expected.
                read.add_done_callback(_retrieve)
                read.cancel()

    async def Reconcile(
        self, request: transfer_pb2.ReconcileRequest, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.ReconcileResponse:
        """Answer a peer's question about the jobs it offloaded here or was given by this node."""
        try:
            return await self._offloader.reconcile(request)
        except JobmeshError as e:
            if isinstance(e, InvalidArgument):
                self.refused.record(context.peer(), str(e))
            await context.abort(status_for(e), str(e))
            raise  # not reached: abort raises


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
