"""SubmitJobs, the streaming enqueue path, on a real node process: answers in request order after
the commit, refusals that do not end the stream, flow control, the client's shared stream across
threads and across a node crash, and the submit scope's topic patterns checked on every message."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from node.client import JobmeshClient, RpcError
from node.services import submission
from node.services.submission import IN_FLIGHT
from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.test_security import stub_with, token

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def requests(jobs: list[jobs_pb2.NewJob]) -> Iterator[jobs_pb2.SubmitJobsRequest]:
    for number, job in enumerate(jobs, 1):
        yield jobs_pb2.SubmitJobsRequest(job=job, request_id=number * 10)


def stored_ids(node: NodeProcess) -> set[str]:
    page = node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=10_000))
    return {job.id for job in page.jobs}


def test_answers_come_in_order_after_the_commit_and_refusals_do_not_end_the_stream(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("submit")
    jobs = [new_job("bad topic!") if n % 7 == 3 else new_job(f"submit/t{n % 3}", n=n) for n in range(300)]
    jobs[5] = jobs_pb2.NewJob(topic="submit/x", dedup_key="k" * 300)  # too long a key
    answers = list(node.stub.SubmitJobs(requests(jobs), timeout=30))

    assert [a.request_id for a in answers] == [n * 10 for n in range(1, 301)]
    refused = [n for n, a in enumerate(answers) if a.HasField("error")]
    assert refused == sorted({5, *(n for n in range(300) if n % 7 == 3)})
    for n in refused:
        assert answers[n].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert not answers[n].HasField("job")
    assert "topic" in answers[3].error.message
    assert "dedup_key" in answers[5].error.message
    added = [a.job for a in answers if not a.HasField("error")]
    assert [job.properties["n"].int_value for job in added] == [n for n in range(300) if n not in refused]
    assert {job.id for job in added} == stored_ids(node)  # each answer is a committed job


def test_a_job_without_a_job_field_is_refused_and_a_dedup_key_deduplicates(nodes: NodeFactory) -> None:
    node = nodes.start("submit")
    jobs = [
        jobs_pb2.NewJob(topic="submit/d", dedup_key="once"),
        jobs_pb2.NewJob(topic="submit/d", dedup_key="once"),
    ]
    stream = [jobs_pb2.SubmitJobsRequest(request_id=1), *requests(jobs)]
    first, again, repeat = node.stub.SubmitJobs(iter(stream), timeout=30)
    assert first.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "job is missing" in first.error.message
    assert not again.deduplicated
    assert repeat.deduplicated
    assert again.job.id == repeat.job.id


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_client_threads_share_one_stream_and_it_reopens_after_a_crash(nodes: NodeFactory) -> None:
    node = nodes.start("submit", settings={"server.port": unused_port()})  # the same port after the crash
    added: list[str] = []
    with JobmeshClient(node.address, timeout_s=10, transport=node.client_transport()) as client:

        def produce(worker: int) -> None:
            for n in range(40):
                added.append(client.add_job(f"submit/w{worker}", {"n": n}).id)

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(added)) == 320
        assert set(added) == stored_ids(node)

        with pytest.raises(RpcError) as refused:
            client.add_job("not a topic")
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert client.add_job("submit/after-a-refusal").id  # the stream went on

        node.kill()
        with pytest.raises(RpcError) as lost:
            client.add_job("submit/while-down")
        assert lost.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        node.start()
        job = client.add_job("submit/after-the-restart")  # a new stream, transparently
    assert job.id in stored_ids(node)


def test_the_submit_scope_is_checked_on_every_message(nodes: NodeFactory) -> None:
    node = nodes.start("submit")
    images_only = node.client_transport(token=token(node, "--scope", "submit", "--topics", "images/**"))
    with stub_with(node, images_only) as stub:
        answers = list(stub.SubmitJobs(requests([new_job("images/a")]), timeout=30))
        assert len(answers) == 1
        assert not answers[0].HasField("error")
        error = rpc_error(
            lambda: list(stub.SubmitJobs(requests([new_job("images/b"), new_job("video/x")]), timeout=30))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "video/x" in error.details()
    topics = {job.topic for job in node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=100)).jobs}
    assert "video/x" not in topics
    assert "images/a" in topics
    reader = node.client_transport(token=token(node, "--scope", "read"))
    with stub_with(node, reader) as stub:
        error = rpc_error(lambda: list(stub.SubmitJobs(requests([new_job("images/c")]), timeout=30)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'submit'" in error.details()


async def test_the_node_reads_at_most_its_read_ahead_while_commits_are_pending() -> None:
    read = 0
    commit = asyncio.Event()

    async def endless() -> AsyncIterator[jobs_pb2.SubmitJobsRequest]:
        nonlocal read
        while True:
            read += 1
            yield jobs_pb2.SubmitJobsRequest(job=new_job("submit/flood"), request_id=read)

    async def slow_add(job: jobs_pb2.NewJob) -> tuple[jobs_pb2.Job, bool]:
        await commit.wait()
        return jobs_pb2.Job(topic=job.topic), False

    answers = submission.answer(endless(), slow_add)
    first = asyncio.ensure_future(anext(answers))
    for _ in range(5 * IN_FLIGHT):
        await asyncio.sleep(0)  # give the reader every chance to run ahead
    # The queue's worth, the one being answered, and the one waiting for room.
    assert read == IN_FLIGHT + 2
    commit.set()
    assert (await first).request_id == 1
    await answers.aclose()
