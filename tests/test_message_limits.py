"""Payloads of any size with gRPC's default message limits: a client or worker with no channel
options (4 MiB receive limit, unlimited send, as in every gRPC library) moves a 64 MiB payload
each way. The node sends no message over ~1 MiB of payload: a worker that registered
`chunked_payloads` gets large payloads in `payload_chunk` pieces, GetJob inlines only payloads
of at most 1 MiB, and GetPayload streams the larger ones in 1 MiB pieces."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from node.config import JobsConfig
from node.errors import DataLoss
from node.services.chunking import CHUNK_BYTES, PayloadAssembler, crc32, slices
from tests.support.default_client import DEFAULT_RECEIVE_LIMIT, plain_client
from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, get_payload, rpc_error, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.protos import new_job
from tests.support.worker_stream import WorkerStream

MIB = 1024 * 1024
BIG = 64 * MIB
# A message carrying one piece: the piece, the ids and sizes, a few bytes of framing.
PIECE_MESSAGE_BYTES = CHUNK_BYTES + 1024
INVERT = bytes(255 - i for i in range(256))

node = shared_node("limits")


def test_default_option_clients_and_workers_move_a_64_mib_payload_each_way(node: NodeProcess) -> None:
    assert JobsConfig().max_payload_bytes == BIG, "the default payload limit is the size tested here"
    payload = os.urandom(BIG)
    output = payload.translate(INVERT)
    with plain_client(node) as worker_channel, plain_client(node) as client_channel:
        # Given a worker and a client with gRPC's default options
        worker = WorkerStream.connect(worker_channel, "big/**", chunked_payloads=True)
        stub = jobs_pb2_grpc.JobServiceStub(client_channel)
        # When the client adds a 64 MiB job in one AddJob (sending has no limit by default)
        job_id = stub.AddJob(jobs_pb2.AddJobRequest(job=new_job("big/one", payload)), timeout=60).job.id
        # Then the worker receives it whole, in messages of at most one piece each
        assignment, received, largest = worker.expect_job(timeout=60)
        assert (assignment.job_id, assignment.payload_chunked, received == payload) == (job_id, True, True)
        assert largest <= PIECE_MESSAGE_BYTES
        # And its 64 MiB output goes back in one result (the node receives up to its limit)
        worker.result(assignment, output_payload=output)
        done = wait_for_state(stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED, timeout=60)
        assert (done.retry_count, done.output_payload_size) == (0, BIG)
        # And GetJob with payloads fits the default limit: it flags both for GetPayload
        job = get_job(stub, job_id, include_payloads=True)
        assert (job.payload_omitted, job.output_payload_omitted) == (True, True)
        assert (job.payload, job.output_payload) == (b"", b"")
        # And the client downloads both with GetPayload, in pieces of at most 1 MiB
        got_input, largest_input = get_payload(stub, job_id)
        got_output, largest_output = get_payload(stub, job_id, output=True)
        assert (got_input == payload, got_output == output) == (True, True)
        assert max(largest_input, largest_output) <= PIECE_MESSAGE_BYTES
        worker.cancel()


def test_a_5_mib_job_to_a_default_worker_succeeds_at_its_first_attempt(node: NodeProcess) -> None:
    payload = b"\x5a" * (DEFAULT_RECEIVE_LIMIT + MIB)
    with plain_client(node) as channel:
        worker = WorkerStream.connect(channel, "five/**", chunked_payloads=True)
        job_id = add_job(node.stub, "five/job", payload)
        assignment, received, largest = worker.expect_job()
        assert received == payload
        assert largest <= PIECE_MESSAGE_BYTES
        worker.result(assignment, output_payload=b"done")
        job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
        assert job.retry_count == 0
        assert worker.error is None
        worker.cancel()


def test_payloads_up_to_1_mib_stay_inline_for_workers_and_get_job(node: NodeProcess) -> None:
    payload = os.urandom(CHUNK_BYTES)  # exactly one piece's worth: inline, no chunks
    with plain_client(node) as channel:
        worker = WorkerStream.connect(channel, "inline/**", chunked_payloads=True)
        job_id = add_job(node.stub, "inline/job", payload)
        assignment, received, _ = worker.expect_job()
        assert (assignment.payload_chunked, assignment.payload == payload, received == payload) == (
            False,
            True,
            True,
        )
        worker.result(assignment, output_payload=payload[::-1])
        wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
        job = get_job(jobs_pb2_grpc.JobServiceStub(channel), job_id, include_payloads=True)
        assert (job.payload_omitted, job.output_payload_omitted) == (False, False)
        assert (job.payload == payload, job.output_payload == payload[::-1]) == (True, True)
        worker.cancel()


def test_a_worker_that_does_not_register_chunked_payloads_gets_them_inline(node: NodeProcess) -> None:
    # A worker written before chunks existed (with a raised receive limit, as it needed then)
    payload = os.urandom(2 * MIB)
    worker = WorkerStream.connect(node.channel, "legacy/**")
    job_id = add_job(node.stub, "legacy/job", payload)
    assignment, received, largest = worker.expect_job()
    assert (assignment.payload_chunked, received == payload) == (False, True)
    assert largest > 2 * MIB, "one message with the whole payload"
    worker.result(assignment)
    wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    worker.cancel()


def test_get_payload_names_what_is_wrong_with_a_request(node: NodeProcess) -> None:
    queued = add_job(node.stub, "nobody/consumes", b"input")
    without = add_job(node.stub, "nobody/consumes")
    with plain_client(node) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)

        def status(job_id: str, kind: jobs_pb2.PayloadKind.ValueType) -> tuple[grpc.StatusCode, str]:
            request = jobs_pb2.GetPayloadRequest(job_id=job_id, kind=kind)
            error = rpc_error(lambda: list(stub.GetPayload(request, timeout=10)))
            return error.code(), error.details() or ""

        code, details = status("0190b7d4-0000-7000-8000-000000000000", jobs_pb2.PAYLOAD_KIND_INPUT)
        assert (code, "no job with id" in details) == (grpc.StatusCode.NOT_FOUND, True)
        code, details = status(without, jobs_pb2.PAYLOAD_KIND_INPUT)
        assert (code, "has no input payload" in details) == (grpc.StatusCode.NOT_FOUND, True)
        code, details = status(queued, jobs_pb2.PAYLOAD_KIND_OUTPUT)
        assert (code, "has no output payload" in details) == (grpc.StatusCode.NOT_FOUND, True)
        code, details = status(queued, jobs_pb2.PAYLOAD_KIND_UNSPECIFIED)
        assert (code, "PAYLOAD_KIND_INPUT" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        code, details = status("", jobs_pb2.PAYLOAD_KIND_INPUT)
        assert (code, "job_id is empty" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        # And a small payload comes in one piece
        assert get_payload(stub, queued)[0] == b"input"


def test_the_cli_saves_payloads_larger_than_one_piece(node: NodeProcess, tmp_path: Path) -> None:
    payload = os.urandom(3 * MIB + 5)
    job_id = add_job(node.stub, "nobody/consumes", payload)
    saved = tmp_path / "payload.bin"
    result = node.cli("job", job_id, "--node", node.address, "--payload", str(saved))
    assert result.returncode == 0, result.stderr
    assert saved.read_bytes() == payload


def test_a_worker_refusing_a_large_message_leaves_one_warning_line_not_a_traceback(
    node: NodeProcess,
) -> None:
    # A worker without chunked payloads and with the default 4 MiB limit cannot take a 5 MiB job
    with plain_client(node) as channel:
        worker = WorkerStream.connect(channel, "refused/**")
        job_id = add_job(node.stub, "refused/job", b"\x5a" * (DEFAULT_RECEIVE_LIMIT + MIB))
        error = worker.wait_error()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_QUEUED)
    log = node.log_text()
    assert "Traceback" not in log
    assert "ExecuteBatchError" not in log


def test_the_assembler_refuses_damaged_misplaced_and_missing_pieces() -> None:
    data = os.urandom(3 * 1000)
    pieces = [(offset, bytes(piece)) for offset, piece in slices(data, 1000)]

    def assemble(chosen: list[tuple[int, bytes]], whole: int = crc32(data)) -> bytes:
        assembler = PayloadAssembler("the test payload", max_bytes=len(data))
        for offset, piece in chosen:
            assembler.add(offset, len(data), piece, crc32(piece))
        return assembler.take(whole)

    assert assemble(pieces) == data
    with pytest.raises(DataLoss, match="out of order"):
        assemble([pieces[0], pieces[2]])
    with pytest.raises(DataLoss, match="only 2000 of 3000 bytes"):
        assemble(pieces[:2])
    with pytest.raises(DataLoss, match="does not match its checksum"):
        assemble(pieces, whole=crc32(data) ^ 1)
    damaged = PayloadAssembler("the test payload")
    with pytest.raises(DataLoss, match="piece at offset 0 does not match"):
        damaged.add(0, len(data), pieces[0][1], crc32(pieces[0][1]) ^ 1)
    too_big = PayloadAssembler("the test payload", max_bytes=10)
    with pytest.raises(DataLoss, match="claims a payload of 3000 bytes"):
        too_big.add(0, len(data), pieces[0][1], crc32(pieces[0][1]))
    assert PayloadAssembler("nothing").take(0) == b""
