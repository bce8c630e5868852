"""Payloads in pieces on the client API: what a node sends to clients and workers is never larger
than about `CHUNK_BYTES` of payload, so gRPC's default 4 MiB receive limit always suffices.

The same shape serves both directions of the public API (WorkerService's `payload_chunk` messages
and JobService.GetPayload's stream): pieces of at most `CHUNK_BYTES`, in offset order, each with
the payload's total size and its own CRC-32, and the CRC-32 of the whole payload beside them.
`slices` cuts a payload without copying it; `PayloadAssembler` puts one back together on the
receiving side (the Python client, the test workers) and checks every piece on the way.
"""

from __future__ import annotations

from collections.abc import Iterator

from node.errors import DataLoss
from node.journal.payloads import checksum

CHUNK_BYTES = 1024 * 1024
"""The most payload bytes in one message to a client or worker (1 MiB)."""


crc32 = checksum
"""CRC-32 as the API carries it: the journal's payload checksum (`node.journal.payloads.checksum`)."""


def needs_chunks(size: int) -> bool:
    """True when a payload of `size` bytes is sent in pieces rather than inline."""
    return size > CHUNK_BYTES


def slices(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, memoryview]]:
    """(offset, piece) of `data` in order, each at most `chunk_bytes`; views, not copies."""
    view = memoryview(data)
    for offset in range(0, len(data), chunk_bytes):
        yield offset, view[offset : offset + chunk_bytes]


class PayloadAssembler:
    """Reassembles one chunked payload and checks it: every piece's CRC-32 on arrival, the order,
    the size, and the whole payload's CRC-32 at the end. Damage raises `DataLoss`."""

    def __init__(self, what: str, max_bytes: int | None = None) -> None:
        """`what` names the payload in errors; `max_bytes` bounds the size a sender may claim."""
        self._what = what
        self._max_bytes = max_bytes
        self._total: int | None = None
        self._data = bytearray()

    def add(self, offset: int, total_size: int, data: bytes, data_crc32: int) -> None:
        """Take the next piece (offset order); DataLoss if it is damaged or out of place."""
        where = f"{self._what}: the piece at offset {offset}"
        if crc32(data) != data_crc32:
            raise DataLoss(f"{where} does not match its checksum")
        if self._total is None:
            if total_size < 0 or (self._max_bytes is not None and total_size > self._max_bytes):
                raise DataLoss(f"{where} claims a payload of {total_size} bytes")
            self._total = total_size
        if total_size != self._total or offset != len(self._data):
            raise DataLoss(f"{where} is out of order (expected offset {len(self._data)} of {self._total})")
        if len(self._data) + len(data) > self._total:
            raise DataLoss(f"{where} runs past the payload's size {self._total}")
        self._data += data

    def take(self, payload_crc32: int) -> bytes:
        """The whole payload, checked against `payload_crc32`; DataLoss if incomplete or damaged."""
        total = self._total or 0  # no piece at all: an empty payload
        if len(self._data) != total:
            raise DataLoss(f"{self._what}: only {len(self._data)} of {total} bytes arrived")
        data = bytes(self._data)
        self._data = bytearray()
        if crc32(data) != payload_crc32:
            raise DataLoss(f"{self._what}: the reassembled payload does not match its checksum")
        return data
