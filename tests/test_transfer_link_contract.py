"""The TransferLink contract, written once and run against both implementations: the gRPC link
(a real TransferService server on loopback) and the in-memory network (node.transfer.memory).

The receiving side is a small receiver that checks each frame exactly as the offloader does
(chunk reassembly with the stream's assembler, every checksum) and records what it accepted.
Async fixtures are not supported by the suite's runner: a test enters its `Links` itself.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from types import TracebackType

import grpc
import pytest
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc
from jobmesh.v1 import jobs_pb2

from node.errors import PeerUnavailable
from node.jobs.validation import check_reconcile
from node.services.transfer import TransferServicer
from node.transfer.apply import check_frame
from node.transfer.chunks import ChunkAssembler, crc32
from node.transfer.link import GrpcTransferLink, TransferLink
from node.transfer.memory import MemoryTransferNetwork
from node.transport import Transport

MAX_PAYLOAD_BYTES = 1024 * 1024


class Receiver:
    """Accepts valid frames, in order; a frame that fails a check is rejected."""

    def __init__(self) -> None:
        self.frames: list[transfer_pb2.ExchangeRequest] = []
        self.questions: list[transfer_pb2.ReconcileRequest] = []
        self.streams = 0

    def assembler(self) -> ChunkAssembler:
        self.streams += 1
        return ChunkAssembler(MAX_PAYLOAD_BYTES)

    async def receive(
        self, frame: transfer_pb2.ExchangeRequest, assembler: ChunkAssembler | None = None
    ) -> None:
        check_frame(frame, assembler)
        self.frames.append(frame)

    async def reconcile(self, request: transfer_pb2.ReconcileRequest) -> transfer_pb2.ReconcileResponse:
        """Knows no job: UNKNOWN for each (a malformed question is refused, as a node refuses it)."""
        check_reconcile(request)
        self.questions.append(request)
        response = transfer_pb2.ReconcileResponse()
        for job in request.jobs:
            response.answers.add(
                job_id=job.job_id, epoch=job.epoch, status=transfer_pb2.RECONCILE_STATUS_UNKNOWN
            )
        return response


class Links:
    """Receivers at addresses, reached through one implementation of TransferLink."""

    def __init__(self) -> None:
        self.receivers: dict[str, Receiver] = {}

    async def __aenter__(self) -> Links:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()
        self.receivers.clear()

    async def add(self, name: str) -> str:
        """A receiver called `name`; returns its address."""
        receiver = Receiver()
        address = await self._serve(name, receiver)
        self.receivers[address] = receiver
        return address

    # --- per implementation ---

    async def _serve(self, name: str, receiver: Receiver) -> str:
        raise NotImplementedError

    def link(self) -> TransferLink:
        """A link to send with."""
        raise NotImplementedError

    async def crash(self, address: str) -> None:
        """The receiver at `address` is gone (its process died)."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Release what the implementation holds."""


class GrpcLinks(Links):
    def __init__(self) -> None:
        super().__init__()
        self._servers: dict[str, tuple[grpc.aio.Server, TransferServicer]] = {}

    async def _serve(self, name: str, receiver: Receiver) -> str:
        server = Transport().create_server(MAX_PAYLOAD_BYTES)
        servicer = TransferServicer(receiver)
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(servicer, server)
        address = f"127.0.0.1:{Transport().bind(server, '127.0.0.1', 0)}"
        await server.start()
        self._servers[address] = (server, servicer)
        return address

    def link(self) -> TransferLink:
        return GrpcTransferLink(Transport(), 2 * MAX_PAYLOAD_BYTES)

    async def crash(self, address: str) -> None:
        server, servicer = self._servers.pop(address)
        servicer.close()
        await server.stop(0)

    async def _close(self) -> None:
        for address in list(self._servers):
            await self.crash(address)


class MemoryLinks(Links):
    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryTransferNetwork()

    async def _serve(self, name: str, receiver: Receiver) -> str:
        self.network.attach(name, receiver)
        return name

    def link(self) -> TransferLink:
        return self.network.link("sender")

    async def crash(self, address: str) -> None:
        self.network.crash(address)


@pytest.fixture(params=["grpc", "memory"])
def links(request: pytest.FixtureRequest, no_thread_leaks: None) -> Iterator[Links]:
    """Each implementation of TransferLink in turn."""
    yield GrpcLinks() if request.param == "grpc" else MemoryLinks()
    # gRPC's poller thread ends once no channel or server object is left alive; a failed call's
    # traceback (kept by pytest.raises in the test's frame) may hold one in a reference cycle.
    gc.collect()


def job_frame(seq: int, payload: bytes = b"in", crc: int | None = None) -> transfer_pb2.ExchangeRequest:
    """A frame carrying one job (outbox seq `seq`)."""
    frame = transfer_pb2.ExchangeRequest(sender_id="origin", last_seq=seq)
    frame.jobs.add(
        job_id=f"j{seq}",
        epoch=1,
        topic="t/a",
        payload=payload,
        payload_crc32=crc32(payload) if crc is None else crc,
    )
    return frame


def chunked(payload: bytes, size: int, seq: int) -> list[transfer_pb2.ExchangeRequest]:
    """Frames of chunks (acknowledging nothing new), then the chunked job itself."""
    frames = []
    for offset in range(0, len(payload), size):
        part = payload[offset : offset + size]
        frame = transfer_pb2.ExchangeRequest(sender_id="origin", last_seq=seq - 1)
        frame.chunks.add(
            job_id="big", epoch=1, offset=offset, total_size=len(payload), data=part, data_crc32=crc32(part)
        )
        frames.append(frame)
    item = transfer_pb2.ExchangeRequest(sender_id="origin", last_seq=seq)
    item.jobs.add(job_id="big", epoch=1, topic="t/a", payload_chunked=True, payload_crc32=crc32(payload))
    return [*frames, item]


async def _send_one(link: TransferLink, address: str) -> int:
    """Open a stream, send one frame, close it (gRPC dials lazily: it fails at the exchange)."""
    stream = await link.open(address)
    try:
        return await stream.exchange(job_frame(1))
    finally:
        await stream.close()


async def test_frames_arrive_in_order_and_each_ack_names_its_frame(links: Links) -> None:
    async with links:
        address = await links.add("target")
        stream = await links.link().open(address)
        try:
            acks = [await stream.exchange(job_frame(seq)) for seq in (1, 2, 3)]
        finally:
            await stream.close()
        assert acks == [1, 2, 3]
        assert [f.jobs[0].job_id for f in links.receivers[address].frames] == ["j1", "j2", "j3"]


async def test_a_rejected_frame_ends_the_stream_and_a_new_stream_works(links: Links) -> None:
    async with links:
        address = await links.add("target")
        link = links.link()
        stream = await link.open(address)
        try:
            with pytest.raises(PeerUnavailable):
                await stream.exchange(job_frame(1, crc=12345))  # a checksum that does not match
            with pytest.raises(PeerUnavailable):
                await stream.exchange(job_frame(2))  # the stream is done
        finally:
            await stream.close()
        stream = await link.open(address)
        try:
            assert await stream.exchange(job_frame(2)) == 2
        finally:
            await stream.close()
        assert [f.jobs[0].job_id for f in links.receivers[address].frames] == ["j2"]


async def test_a_chunked_payload_reassembles_on_its_stream_and_not_across_streams(links: Links) -> None:
    async with links:
        address = await links.add("target")
        link = links.link()
        payload = os.urandom(300_000)
        *chunks, item = chunked(payload, 100_000, seq=5)

        # A partial payload goes with its stream: the item on a new stream is rejected
        stream = await link.open(address)
        try:
            for frame in chunks[:2]:
                assert await stream.exchange(frame) == 4
        finally:
            await stream.close()
        stream = await link.open(address)
        try:
            with pytest.raises(PeerUnavailable):
                await stream.exchange(item)
        finally:
            await stream.close()

        # Sent whole on one stream, it arrives intact
        stream = await link.open(address)
        try:
            for frame in chunks:
                await stream.exchange(frame)
            assert await stream.exchange(item) == 5
        finally:
            await stream.close()
        assert links.receivers[address].frames[-1].jobs[0].payload == payload


async def test_a_crashed_peer_breaks_the_stream(links: Links) -> None:
    async with links:
        address = await links.add("target")
        stream = await links.link().open(address)
        try:
            assert await stream.exchange(job_frame(1)) == 1
            await links.crash(address)
            with pytest.raises(PeerUnavailable):
                await stream.exchange(job_frame(2))
        finally:
            await stream.close()


async def test_an_address_nobody_serves_is_unavailable(links: Links) -> None:
    async with links:
        address = await links.add("target")
        await links.crash(address)
        with pytest.raises(PeerUnavailable):
            await _send_one(links.link(), address)


async def test_a_stream_to_an_address_nobody_serves_fails_when_opened_before_any_frame_is_read(
    links: Links,
) -> None:
    # The sender reads a frame from its outbox only after open() returns: a stream that opened
    # without a connection would have it send, whenever the connection finally came (after a
    # partition healed), a frame read long before, with jobs reassigned meanwhile.
    async with links:
        address = await links.add("target")
        await links.crash(address)
        with pytest.raises(PeerUnavailable):
            await links.link().open(address)


async def test_a_reconcile_question_gets_its_answers_and_failures_are_peer_unavailable(links: Links) -> None:
    async with links:
        address = await links.add("target")
        link = links.link()
        try:
            question = transfer_pb2.ReconcileRequest(
                sender_id="origin", role=transfer_pb2.RECONCILE_ROLE_ORIGIN
            )
            question.jobs.add(job_id="j1", epoch=3, state=jobs_pb2.JOB_STATE_QUEUED)
            answers = (await link.reconcile(address, question)).answers
            assert [(a.job_id, a.epoch, a.status) for a in answers] == [
                ("j1", 3, transfer_pb2.RECONCILE_STATUS_UNKNOWN)
            ]
            assert links.receivers[address].questions == [question]
            # A question the peer refuses, and a peer that is gone, both fail the same way
            with pytest.raises(PeerUnavailable):
                await link.reconcile(address, transfer_pb2.ReconcileRequest(sender_id="origin"))
            await links.crash(address)
            with pytest.raises(PeerUnavailable):
                await link.reconcile(address, question)
        finally:
            await link.close()
