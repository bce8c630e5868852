"""What one remote worker may make a node do is bounded (a real node process, real streams).

The `workers` settings clamp a worker's registered concurrency and cap the payload bytes
sent to it without a result; a worker that connects and disconnects in a loop spends a
job's retries no faster than the queue's retry delay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from jobmesh.v1 import workers_pb2 as W
from jobmesh.v1 import workers_pb2_grpc

from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job
from tests.support.launcher import NodeProcess
from tests.support.waiting import wait_for
from tests.support.worker_stream import WorkerStream

MAX_CONCURRENCY = 3
MAX_INFLIGHT_BYTES = 1024 * 1024
PAYLOAD_BYTES = 256 * 1024
RETRY_DELAY_S = 0.5
# How long "nothing more is sent" is watched for; the node would send within milliseconds.
SILENCE_S = 0.5

node = shared_node(
    "bounds",
    settings={
        "workers.max_concurrency": MAX_CONCURRENCY,
        "workers.max_inflight_bytes": MAX_INFLIGHT_BYTES,
        "jobs.retry_delay_s": RETRY_DELAY_S,
        "jobs.retries": 1000,
        "jobs.max_parallel": 64,
    },
)


def in_flight(node: NodeProcess, name: str) -> int:
    """The `in_flight` count ListWorkers gives for the worker called `name` (-1: not listed)."""
    stub = workers_pb2_grpc.WorkerServiceStub(node.channel)
    listed = stub.ListWorkers(W.ListWorkersRequest(page_size=100), timeout=10).workers
    return next((w.in_flight for w in listed if w.name == name), -1)


def test_a_registration_above_the_cap_is_clamped_and_the_worker_never_gets_more(
    node: NodeProcess,
) -> None:
    # Given a worker that registers a concurrency of 50 on a node whose cap is 3
    stream = WorkerStream.connect(node.channel, "clamp/**", concurrency=50, name="clamp")
    try:
        # Then the acknowledgement carries the applied concurrency
        assert stream.registered is not None
        assert stream.registered.concurrency == MAX_CONCURRENCY
        # And of five jobs it is sent three, and no more while it holds them
        for n in range(5):
            add_job(node.stub, "clamp/job", n=n)
        held = [stream.expect("assignment") for _ in range(MAX_CONCURRENCY)]
        stream.assert_silent(SILENCE_S)
        assert in_flight(node, "clamp") == MAX_CONCURRENCY
        # And a result frees exactly one slot
        stream.result(held[0])
        stream.expect("assignment")
        stream.assert_silent(SILENCE_S)
    finally:
        stream.cancel()


def test_a_worker_that_never_reads_is_sent_no_more_payload_bytes_than_the_cap(
    node: NodeProcess,
) -> None:
    # Given a worker (concurrency 3) on a node capping payload bytes in flight at 1 MiB, and a
    # second one that never reads what it is sent
    stream = WorkerStream.connect(node.channel, "bytes/**", concurrency=MAX_CONCURRENCY, name="bytes")
    registration = W.WorkRequest(
        register=W.WorkerRegistration(name="sink", topics=["sink/**"], concurrency=MAX_CONCURRENCY)
    )
    stop_requests = False

    def requests() -> Iterator[W.WorkRequest]:
        yield registration
        while not stop_requests:  # keep the stream open, saying nothing more
            time.sleep(0.05)

    sink = workers_pb2_grpc.WorkerServiceStub(node.channel).Work(requests())
    try:
        wait_for(lambda: in_flight(node, "sink") == 0, what="the never-reading worker to be registered")
        # When jobs of 600 KiB each are added for both
        big = b"x" * (600 * 1024)
        for n in range(4):
            add_job(node.stub, "bytes/job", big, n=n)
            add_job(node.stub, "sink/job", big, n=n)
        # Then each is sent one job only: a second would pass 1 MiB (one always fits)
        first = stream.expect("assignment")
        assert len(first.payload) == len(big)
        stream.assert_silent(SILENCE_S)
        assert in_flight(node, "bytes") == 1
        assert in_flight(node, "sink") == 1, "the never-reading worker holds one job, no more"
        # And small jobs still fill the room the cap leaves
        small_ids = [add_job(node.stub, "bytes/small", b"y" * PAYLOAD_BYTES, n=n) for n in range(3)]
        assert stream.expect("assignment").job_id == small_ids[0], "600 + 256 KiB fit in 1 MiB"
        stream.assert_silent(SILENCE_S)
        assert in_flight(node, "bytes") == 2
        # And a result makes room again
        stream.result(first)
        stream.expect("assignment")
        assert in_flight(node, "sink") == 1
    finally:
        stop_requests = True
        sink.cancel()
        stream.cancel()


def test_a_chunked_payload_counts_in_full_against_the_cap_until_its_result(node: NodeProcess) -> None:
    # Given a worker taking chunked payloads (concurrency 3) on a node capping bytes at 1 MiB
    stream = WorkerStream.connect(
        node.channel, "pieces/**", concurrency=MAX_CONCURRENCY, name="pieces", chunked_payloads=True
    )
    try:
        # When two jobs of 1.5 MiB are added (each over 1 MiB: sent in pieces)
        big = b"p" * (3 * MAX_INFLIGHT_BYTES // 2)
        ids = [add_job(node.stub, "pieces/job", big, n=n) for n in range(2)]
        # Then it is sent the first one whole, in pieces, and not the second while it holds it
        first, payload, _ = stream.expect_job()
        assert (first.job_id, first.payload_chunked, payload == big) == (ids[0], True, True)
        stream.assert_silent(SILENCE_S)
        assert in_flight(node, "pieces") == 1
        # And its result makes room for the second
        stream.result(first)
        second, payload, _ = stream.expect_job()
        assert (second.job_id, payload == big) == (ids[1], True)
        stream.result(second)
    finally:
        stream.cancel()


def test_a_connect_disconnect_loop_spends_at_most_one_retry_per_retry_delay(node: NodeProcess) -> None:
    # Given a job for a topic only a misbehaving worker consumes
    job_id = add_job(node.stub, "loop/job")
    # When the worker connects, takes whatever it is sent, and breaks the stream, over and over
    started = time.monotonic()
    taken = 0
    while time.monotonic() - started < 4 * RETRY_DELAY_S:
        stream = WorkerStream.connect(node.channel, "loop/**", name="looper")
        message = stream._reader.poll(0.05)
        taken += message is not None
        stream.cancel()
    elapsed = time.monotonic() - started
    # Then the job spent at most one retry per retry delay (plus the first attempt's)
    wait_for(lambda: in_flight(node, "looper") == -1, what="the last looping worker to be gone")
    job = get_job(node.stub, job_id)
    assert taken >= 1
    assert 1 <= job.retry_count <= elapsed / RETRY_DELAY_S + 1, (
        f"{job.retry_count} retries spent in {elapsed:.2f}s with a retry delay of {RETRY_DELAY_S}s"
    )
