"""Chunked payloads on a transfer stream (see PayloadChunk in transfer.proto).

A payload larger than the chunk size travels as PayloadChunk messages in offset order, in frames
of their own, before the item it belongs to. The receiver keeps one `ChunkAssembler` per stream:
it reassembles one payload at a time in memory (at most the node's payload limit), checks each
chunk's CRC-32 on arrival and the whole payload's CRC-32 when the item claims it. A partial
payload is discarded with its stream; after a reconnect the sender starts again from offset 0.
"""

from __future__ import annotations

from jobmesh.peer.v1 import transfer_pb2

from node.errors import InvalidArgument
from node.journal.payloads import checksum

crc32 = checksum
"""CRC-32 as the transfer protocol carries it: the journal's payload checksum."""


class ChunkAssembler:
    """Reassembles the chunked payloads of one transfer stream, one payload at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._key: tuple[str, int, bool] | None = None
        self._total = 0
        self._data = bytearray()

    def add(self, chunk: transfer_pb2.PayloadChunk) -> None:
        """Take one chunk; a corrupted, oversized or out-of-order chunk raises InvalidArgument."""
        what = f"payload chunk of job {chunk.job_id} at offset {chunk.offset}"
        if crc32(chunk.data) != chunk.data_crc32:
            self._reset()
            raise InvalidArgument(f"{what}: the checksum does not match; resend")
        if not 0 <= chunk.total_size <= self.max_bytes:
            self._reset()
            raise InvalidArgument(f"{what}: {chunk.total_size} bytes exceed the limit of {self.max_bytes}")
        key = (chunk.job_id, chunk.epoch, chunk.output)
        if chunk.offset == 0:
            self._reset()
            self._key, self._total = key, chunk.total_size
        elif key != self._key or chunk.offset != len(self._data) or chunk.total_size != self._total:
            self._reset()
            raise InvalidArgument(f"{what}: out of order; resend")
        if len(self._data) + len(chunk.data) > self._total:
            self._reset()
            raise InvalidArgument(f"{what}: more data than the payload's size")
        self._data += chunk.data

    def take(self, job_id: str, epoch: int, output: bool, crc: int) -> bytes:
        """The complete payload the chunks before built for this item, checked against `crc`."""
        key, complete = self._key, len(self._data) == self._total
        data = bytes(self._data)
        self._reset()
        if key != (job_id, epoch, output) or not complete:
            raise InvalidArgument(f"job {job_id}: its chunked payload is incomplete; resend")
        if crc32(data) != crc:
            raise InvalidArgument(f"job {job_id}: the reassembled payload's checksum does not match; resend")
        return data

    def resolve(self, frame: transfer_pb2.ExchangeRequest) -> None:
        """Take the frame's chunks, and put the reassembled payloads into its chunked items."""
        for chunk in frame.chunks:
            self.add(chunk)
        for job in frame.jobs:
            if job.payload_chunked:
                job.payload = self.take(job.job_id, job.epoch, False, job.payload_crc32)
                job.payload_chunked = False
        for report in frame.reports:
            if report.output_chunked:
                report.output_payload = self.take(report.job_id, report.epoch, True, report.output_crc32)
                report.output_chunked = False

    def _reset(self) -> None:
        self._key, self._total, self._data = None, 0, bytearray()
