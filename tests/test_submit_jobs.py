"""SubmitJobs, the streaming enqueue path, on a real node process: answers in request order after
the commit, refusals that do not end the stream, packed requests answered job by job, flow
control counted in jobs, the client's shared stream across threads and across a node crash (and
its packing of the jobs that wait), and the submit scope's topic patterns checked on every job of
every message; in process, a packed message's jobs in one journal operation, where a job that
fails it fails alone; and, with an in-memory call beside the real ones, a stream that breaks
while the client waits for room for its next message."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from node import JobState, Node, NodeConfig
from node.client import JobmeshClient, RpcError
from node.errors import InvalidArgument, JournalFull
from node.journal.records import AddedJob, NewJobRecord
from node.services import submission
from node.services.submission import IN_FLIGHT, MAX_JOBS_PER_REQUEST
from node.submitter import PACK_BYTES, SubmitError, Submitter
from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for
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


def packed(request_id: int, jobs: list[jobs_pb2.NewJob | None]) -> jobs_pb2.SubmitJobsRequest:
    """One request carrying `jobs` (None: an item without a job); ids request_id, +1, ..."""
    first, *more = jobs
    request = jobs_pb2.SubmitJobsRequest(job=first, request_id=request_id)
    for number, job in enumerate(more, request_id + 1):
        request.more.add(job=job, request_id=number)
    return request


def test_a_packed_request_answers_each_of_its_jobs_in_order_and_refuses_them_one_by_one(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("submit")
    jobs: list[jobs_pb2.NewJob | None] = [
        new_job("submit/p", n=0),
        new_job("bad topic!"),
        None,  # no job
        jobs_pb2.NewJob(topic="submit/p", dedup_key="twice"),
        jobs_pb2.NewJob(topic="submit/p", dedup_key="twice"),
        new_job("submit/p", n=5),
    ]
    stream = [
        *requests([new_job("submit/before")]),
        packed(100, jobs),
        packed(200, [None, new_job("submit/q")]),
    ]
    before, middle, after = node.stub.SubmitJobs(iter(stream), timeout=30)

    assert before.request_id == 10
    assert not before.more
    assert before.HasField("job")
    answers = [middle, *middle.more]
    assert [a.request_id for a in answers] == [100, 101, 102, 103, 104, 105]
    assert [a.HasField("error") for a in answers] == [False, True, True, False, False, False]
    assert answers[1].error.code == answers[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "topic" in answers[1].error.message
    assert "job is missing" in answers[2].error.message
    assert (answers[3].deduplicated, answers[4].deduplicated) == (False, True)
    assert answers[3].job.id == answers[4].job.id
    assert answers[5].job.properties["n"].int_value == 5
    # A refused first job refuses only itself.
    assert after.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [a.request_id for a in after.more] == [201]
    assert after.more[0].job.topic == "submit/q"
    committed = {a.job.id for a in [before, *answers, *after.more] if not a.HasField("error")}
    assert committed == stored_ids(node)  # every answer with a job is a committed job


def test_a_request_with_more_jobs_than_allowed_ends_the_call_after_the_answers_before_it(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("submit")
    just_enough = packed(1, [new_job("submit/enough", n=n) for n in range(MAX_JOBS_PER_REQUEST)])
    too_many = packed(5000, [new_job("submit/many", n=n) for n in range(MAX_JOBS_PER_REQUEST + 1)])
    after = packed(9000, [new_job("submit/after")])
    answers: list[jobs_pb2.SubmitJobsResponse] = []

    def read_all() -> None:
        answers.extend(node.stub.SubmitJobs(iter([just_enough, too_many, after]), timeout=60))

    error = rpc_error(read_all)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_JOBS_PER_REQUEST}" in error.details()
    assert "request 5000" in error.details()
    (accepted,) = answers  # the request before it is answered; nothing after it was read
    jobs: list[submission.Answer] = [accepted, *accepted.more]
    assert not any(a.HasField("error") for a in jobs)
    assert {a.job.id for a in jobs} == stored_ids(node)


def has_length(items: list[jobs_pb2.SubmitJobsRequest], length: int) -> bool:
    return len(items) == length


def is_queued(submitter: Submitter, jobs: int) -> bool:
    return submitter._current().requests.qsize() == jobs


def recorded(
    sent: list[jobs_pb2.SubmitJobsRequest],
    messages: Iterator[jobs_pb2.SubmitJobsRequest],
    gate: threading.Event | None = None,
) -> Iterator[jobs_pb2.SubmitJobsRequest]:
    """`messages` as gRPC's sending thread takes them (once `gate` is set), noted in `sent`."""
    if gate is not None:
        gate.wait(30)
    for message in messages:
        sent.append(message)
        yield message


def adding_thread(
    submitter: Submitter, job: jobs_pb2.NewJob, answers: dict[int, str], number: int
) -> threading.Thread:
    """A producer thread adding `job`; its answer's job id goes to answers[number]."""

    def add() -> None:
        answers[number] = submitter.add(job).job.id

    return threading.Thread(target=add)


def test_the_client_packs_the_jobs_that_wait_into_one_message_within_its_byte_bound(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("submit")
    sent: list[jobs_pb2.SubmitJobsRequest] = []
    gate = threading.Event()  # gRPC's sending thread waits for it while every job is queued
    submitter = Submitter(
        lambda messages: node.stub.SubmitJobs(recorded(sent, messages, gate), timeout=60), 30.0
    )
    big = b"x" * (PACK_BYTES // 3)  # three of them do not fit in one message
    jobs = [new_job("submit/small", n=n) for n in range(50)] + [new_job("submit/big", big) for _ in range(4)]
    answers: dict[int, str] = {}
    try:
        threads = [adding_thread(submitter, job, answers, n) for n, job in enumerate(jobs)]
        for queued, thread in enumerate(threads, 1):
            thread.start()
            wait_for(partial(is_queued, submitter, queued), what=f"{queued} jobs queued")
        gate.set()
        for thread in threads:
            thread.join(30)
    finally:
        submitter.close()

    assert len(answers) == len(jobs)
    assert set(answers.values()) == stored_ids(node)
    # Fifty small jobs and two big ones fit in the first message; the other two big ones in one more.
    assert [1 + len(message.more) for message in sent] == [52, 2]
    assert all(message.ByteSize() <= PACK_BYTES + 1024 for message in sent)
    ids = [number for m in sent for number in (m.request_id, *(item.request_id for item in m.more))]
    assert ids == sorted(ids)  # in the order the threads queued them


class HeldAnswers:
    """A SubmitJobs call whose answers reach the client only once `gate` is set."""

    def __init__(self, call: Any, gate: threading.Event) -> None:
        self._call, self._gate = call, gate

    def __iter__(self) -> Iterator[jobs_pb2.SubmitJobsResponse]:
        self._gate.wait(30)
        yield from self._call

    def cancel(self) -> None:
        self._call.cancel()


def test_the_client_keeps_two_messages_unanswered_and_packs_the_jobs_that_queue_meanwhile(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("submit")
    sent: list[jobs_pb2.SubmitJobsRequest] = []
    gate = threading.Event()

    def held(messages: Iterator[jobs_pb2.SubmitJobsRequest]) -> HeldAnswers:
        return HeldAnswers(node.stub.SubmitJobs(recorded(sent, messages), timeout=60), gate)

    submitter = Submitter(held, 30.0)
    jobs = [new_job("submit/window", n=n) for n in range(10)]
    answers: dict[int, str] = {}
    threads = [adding_thread(submitter, job, answers, n) for n, job in enumerate(jobs)]
    try:
        for number, thread in enumerate(threads[:2], 1):  # each goes at once, alone
            thread.start()
            wait_for(partial(has_length, sent, number), what=f"message {number} sent")
        for queued, thread in enumerate(threads[2:]):  # the first of them waits for room
            thread.start()
            wait_for(partial(is_queued, submitter, queued), what=f"{queued} more jobs queued")
        assert len(sent) == 2
        gate.set()
        for thread in threads:
            thread.join(30)
    finally:
        gate.set()
        submitter.close()

    assert [1 + len(message.more) for message in sent] == [1, 1, 8]
    assert set(answers.values()) == stored_ids(node)


class Unavailable(grpc.RpcError):  # type: ignore[misc]  # grpc has no stubs
    """What a broken call raises in its reader."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the connection broke"


class BreakingCall:
    """An in-memory SubmitJobs call: a thread of its own takes the messages, as gRPC's sending
    thread does; the answers never come, and the call breaks once `broken` is set."""

    def __init__(self, messages: Iterator[jobs_pb2.SubmitJobsRequest], broken: threading.Event) -> None:
        self.sent: list[jobs_pb2.SubmitJobsRequest] = []
        self._broken = broken
        self.sender = threading.Thread(target=self.sent.extend, args=(messages,), daemon=True)
        self.sender.start()

    def __iter__(self) -> Iterator[jobs_pb2.SubmitJobsResponse]:
        self._broken.wait(30)
        raise Unavailable()
        yield  # a generator, as a real call's iteration is

    def cancel(self) -> None:
        self._broken.set()


def has_sent(calls: list[BreakingCall], messages: int) -> bool:
    return len(calls) == 1 and len(calls[0].sent) >= messages


def test_a_stream_that_breaks_while_the_client_waits_for_room_fails_every_job_it_holds() -> None:
    broken = threading.Event()
    calls: list[BreakingCall] = []

    def open_call(messages: Iterator[jobs_pb2.SubmitJobsRequest]) -> BreakingCall:
        calls.append(BreakingCall(messages, broken))
        return calls[-1]

    submitter = Submitter(open_call, 30.0)
    errors: dict[int, str] = {}

    def add(number: int) -> None:
        try:
            submitter.add(new_job("submit/broken", n=number))
        except SubmitError as e:
            errors[number] = e.code.name

    threads = [threading.Thread(target=add, args=(n,)) for n in range(3)]
    for number, thread in enumerate(threads[:2], 1):
        thread.start()
        wait_for(partial(has_sent, calls, number), what=f"message {number} sent")
    threads[2].start()  # no room: its job waits in the sending thread for an answer that never comes
    wait_for(partial(is_queued, submitter, 0), what="the third job taken by the sending thread")
    assert len(calls[0].sent) == 2  # the third waits for room
    broken.set()
    for thread in threads:
        thread.join(30)
    calls[0].sender.join(10)
    assert not calls[0].sender.is_alive()  # the sending thread is released, not left waiting
    assert errors == {0: "UNAVAILABLE", 1: "UNAVAILABLE", 2: "UNAVAILABLE"}
    submitter.close()


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


def test_the_submit_scope_is_checked_on_every_job_of_every_message(nodes: NodeFactory) -> None:
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
        # Every job of a packed message, not only its first.
        hidden = packed(1, [new_job("images/c"), new_job("images/d"), new_job("video/y")])
        error = rpc_error(lambda: list(stub.SubmitJobs(iter([hidden]), timeout=30)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "video/y" in error.details()
    topics = {job.topic for job in node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=100)).jobs}
    assert not topics & {"video/x", "video/y", "images/c", "images/d"}
    assert "images/a" in topics
    reader = node.client_transport(token=token(node, "--scope", "read"))
    with stub_with(node, reader) as stub:
        error = rpc_error(lambda: list(stub.SubmitJobs(requests([new_job("images/c")]), timeout=30)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'submit'" in error.details()


@pytest.mark.parametrize("jobs_per_message", [1, 100])
async def test_the_node_reads_at_most_its_read_ahead_in_jobs_while_commits_are_pending(
    jobs_per_message: int,
) -> None:
    read = 0
    commit = asyncio.Event()

    async def endless() -> AsyncIterator[jobs_pb2.SubmitJobsRequest]:
        nonlocal read
        while True:
            read += 1
            yield packed(read * 1000, [new_job("submit/flood")] * jobs_per_message)

    async def slow_add(new_jobs: Sequence[jobs_pb2.NewJob]) -> list[submission.Added]:
        await commit.wait()
        return [(jobs_pb2.Job(topic=job.topic), False) for job in new_jobs]

    answers = submission.answer(endless(), slow_add)
    first = asyncio.ensure_future(anext(answers))
    for _ in range(5 * IN_FLIGHT):
        await asyncio.sleep(0)  # give the reader every chance to run ahead
    # The messages whose jobs fit in the read-ahead, and the one waiting for room.
    assert read == IN_FLIGHT // jobs_per_message + 1
    commit.set()
    response = await first
    assert response.request_id == 1000
    assert len(response.more) == jobs_per_message - 1
    await answers.aclose()


async def test_a_packed_messages_jobs_are_one_journal_operation_and_one_failing_it_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Node(NodeConfig.for_tests(tmp_path)) as n:
        inserts: list[list[str]] = []  # the topics of each insert operation
        insert = n.jobs.store.insert

        def poisoned(conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> list[AddedJob]:
            inserts.append([r.topic for r in records])
            if "pack/poison" in inserts[-1]:  # fails the operation, as a broken row would
                raise sqlite3.IntegrityError("poisoned row")
            if "pack/full" in inserts[-1]:  # the journal itself fails: no job is to blame
                raise JournalFull("the journal's disk is full")
            return insert(conn, records)

        monkeypatch.setattr(n.jobs.store, "insert", poisoned)
        jobs = [new_job("pack/a", n=i) for i in range(50)]
        outcomes = await n.jobs.add_proto_jobs_each([*jobs[:10], new_job("bad topic!"), *jobs[10:]])
        assert inserts == [["pack/a"] * 50]  # the refused job took no part in it
        assert isinstance(outcomes[10], InvalidArgument)
        added = [o for o in outcomes if not isinstance(o, Exception)]
        assert [job.properties["n"] for job, _ in added] == list(range(50))

        inserts.clear()
        outcomes = await n.jobs.add_proto_jobs_each(
            [new_job("pack/b"), new_job("pack/poison"), new_job("pack/c")]
        )
        # The failed operation stored nothing; each job again on its own: only the poisoned one fails.
        assert inserts == [["pack/b", "pack/poison", "pack/c"], ["pack/b"], ["pack/poison"], ["pack/c"]]
        assert isinstance(outcomes[1], sqlite3.IntegrityError)
        stored = [
            await n.jobs.get_job(o[0].id) for o in (outcomes[0], outcomes[2]) if not isinstance(o, Exception)
        ]
        assert [job.topic for job in stored] == ["pack/b", "pack/c"]
        counts = await n.jobs.count_by_state()
        assert counts == {JobState.QUEUED: 52}

        inserts.clear()
        outcomes = await n.jobs.add_proto_jobs_each([new_job("pack/full"), new_job("pack/d")])
        assert inserts == [["pack/full", "pack/d"]]  # not tried again job by job
        assert all(isinstance(o, JournalFull) for o in outcomes)


async def test_each_job_of_a_message_gets_its_own_outcome_as_its_answer() -> None:
    async def add(new_jobs: Sequence[jobs_pb2.NewJob]) -> list[submission.Added]:
        outcomes: list[submission.Added] = [(jobs_pb2.Job(id="j1", topic="a"), False)]
        return [*outcomes, RuntimeError("a bug"), InvalidArgument("no such thing")]

    async def one_message() -> AsyncIterator[jobs_pb2.SubmitJobsRequest]:
        yield packed(7, [new_job("a"), new_job("b"), new_job("c"), None])

    (response,) = [r async for r in submission.answer(one_message(), add)]
    answers: list[submission.Answer] = [response, *response.more]
    assert [a.request_id for a in answers] == [7, 8, 9, 10]
    assert answers[0].job.id == "j1"
    assert answers[1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "a bug" in answers[1].error.message
    assert answers[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[2].error.message == "no such thing"
    assert "job is missing" in answers[3].error.message
