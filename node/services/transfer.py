"""TransferService: peers stream offloaded jobs and reports to this node (see transfer.proto)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc

from node.errors import JobmeshError
from node.transfer.link import TransferReceiver

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0
"""At most one log line per this many seconds about refused frames: a peer cannot flood the log."""


class RefusedFrames:
    """Counts frames refused with INVALID_ARGUMENT and logs them at most once per interval (loop only)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.total = 0
        """Refused frames since start."""
        self._interval_s = interval_s
        self._unlogged = 0
        self._last_log = float("-inf")

    def record(self, peer: str, reason: str) -> None:
        """Count one refused frame; log the latest reason when the interval has passed."""
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= self._interval_s:
            # The text, not the exception: a kept log record would keep the call's frames alive.
            log.warning("%d transfer frame(s) refused (latest from %s: %s)", self._unlogged, peer, reason)
            self._unlogged = 0
            self._last_log = now


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """Applies each received frame, then acknowledges it."""

    def __init__(self, offloader: TransferReceiver) -> None:
        self._offloader = offloader
        self._closing = asyncio.Event()
        self.refused = RefusedFrames()

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


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
