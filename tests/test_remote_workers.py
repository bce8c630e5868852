"""Remote workers over WorkerService.Work against a real node process.

Each test drives workers by hand (`WorkerStream`) so it decides exactly when a worker
answers, breaks its stream or reconnects. Topics are distinct per test: the node is shared.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2 as J
from jobmesh.v1 import workers_pb2 as W

from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import duration, new_job
from tests.support.waiting import wait_for
from tests.support.worker_stream import WorkerStream

QUEUED, ACTIVE, SUCCEEDED = J.JOB_STATE_QUEUED, J.JOB_STATE_ACTIVE, J.JOB_STATE_SUCCEEDED
STOPPED, ERROR = J.JOB_STATE_STOPPED, J.JOB_STATE_ERROR
# How long "nothing more arrives" is watched for. A negative can only be checked over a
# window; the node would have sent within milliseconds.
SILENCE_S = 0.3


node = shared_node("workers")


def _unassigned(node: NodeProcess, job_id: str, retries: int) -> bool:
    """True when the job is QUEUED for nobody with `retries` retries counted."""
    job = get_job(node.stub, job_id)
    return job.state == QUEUED and job.retry_count == retries and job.target_instance == ""


Connect = Callable[..., WorkerStream]
"""Connects a worker (`WorkerStream.connect` arguments after the channel) to the module's node."""


@pytest.fixture
def connect(node: NodeProcess) -> Iterator[Connect]:
    """Worker streams to the node; each is broken off after the test, whatever its outcome."""
    streams: list[WorkerStream] = []

    def open_stream(*topics: str, **options: Any) -> WorkerStream:
        stream = WorkerStream.connect(node.channel, *topics, **options)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        stream.cancel()


def hold(node: NodeProcess, stream: WorkerStream, topic: str) -> W.WorkAssignment:
    """Add a job of `topic` and take the assignment `stream` gets for it."""
    return stream.take(add_job(node.stub, topic))


def full_job(node: NodeProcess, job_id: str) -> J.Job:
    job: J.Job = node.stub.GetJob(J.GetJobRequest(job_id=job_id, include_payloads=True, include_log=True)).job
    return job


def test_registration_is_acknowledged_with_the_node_and_the_applied_concurrency(
    node: NodeProcess, connect: Connect
) -> None:
    stream = connect("reg/**", concurrency=0)

    assert stream.registered is not None
    assert stream.registered.instance_id == node.instance_id
    assert stream.registered.worker_id
    assert stream.registered.concurrency == 1, "0 means 1"


def test_a_worker_runs_a_job_and_its_reports_and_result_land_on_the_job(
    node: NodeProcess, connect: Connect
) -> None:
    # Given a connected worker for run/**
    stream = connect("run/**")
    # When a job with properties and a payload is added
    job_id = add_job(node.stub, "run/it", b"input bytes", width=100, name="Ada", tags=["a", "b"])
    # Then the worker receives it, whole
    assignment = stream.expect("assignment")
    assert (assignment.job_id, assignment.topic, assignment.attempt) == (job_id, "run/it", 1)
    assert assignment.payload == b"input bytes"
    assert assignment.properties["width"].int_value == 100
    assert assignment.properties["name"].string_value == "Ada"
    assert [v.string_value for v in assignment.properties["tags"].list_value.values] == ["a", "b"]
    assert (assignment.retry_count, assignment.queue) == (0, "main")
    assert get_job(node.stub, job_id).state == ACTIVE
    # When it reports progress, a log line and a property, then succeeds with an output payload
    stream.progress(assignment, total_steps=4)
    stream.progress(assignment, increment_steps=3, eta=duration(5))
    stream.log(assignment, "halfway there")
    stream.set_property(assignment, "seen_by", "remote")
    wait_for(lambda: full_job(node, job_id).progress.completed_steps == 3, what="progress 3/4")
    stream.result(assignment, message="all done", output_payload=b"output bytes")
    # Then the job succeeded with everything the worker said
    wait_for_state(node.stub, job_id, SUCCEEDED)
    job = full_job(node, job_id)
    assert (job.result_message, job.output_payload) == ("all done", b"output bytes")
    assert (job.progress.total_steps, job.progress.completed_steps) == (4, 3)
    assert [line.message for line in job.log] == ["halfway there"]
    assert job.properties["seen_by"].string_value == "remote"


def test_jobs_added_before_a_worker_connects_wait_and_then_go_to_it(
    node: NodeProcess, connect: Connect
) -> None:
    # Given a job nobody consumes: it waits, unassigned
    job_id = add_job(node.stub, "early/job")
    assert get_job(node.stub, job_id).target_instance == ""
    # When a worker for its topic connects
    stream = connect("early/*")
    # Then it receives the job
    stream.succeed(job_id)
    wait_for_state(node.stub, job_id, SUCCEEDED)


def test_a_failed_result_is_retried_after_its_delay_with_the_attempt_counted(
    node: NodeProcess, connect: Connect
) -> None:
    stream = connect("retry/**")
    first = hold(node, stream, "retry/me")
    stream.result(first, W.WORK_OUTCOME_FAILED, "try again", retry_delay=duration(0))
    second = stream.expect("assignment")

    assert (second.job_id, second.attempt, second.retry_count) == (first.job_id, first.attempt + 1, 1)
    stream.result(second)
    assert wait_for_state(node.stub, first.job_id, SUCCEEDED).retry_count == 1


def test_a_cancelled_result_ends_the_job_in_error_without_retries(
    node: NodeProcess, connect: Connect
) -> None:
    stream = connect("cancel/**")
    assignment = hold(node, stream, "cancel/me")

    stream.result(assignment, W.WORK_OUTCOME_CANCELLED, "cannot be done")

    job = wait_for_state(node.stub, assignment.job_id, ERROR)
    assert (job.result_message, job.retry_count) == ("cannot be done", 0)


def test_stop_job_reaches_the_worker_and_its_result_ends_the_job_stopped(
    node: NodeProcess, connect: Connect
) -> None:
    stream = connect("stop/**")
    assignment = hold(node, stream, "stop/me")

    assert node.stub.StopJob(J.StopJobRequest(job_id=assignment.job_id)).job.stop_requested
    stop = stream.expect("stop")
    assert (stop.job_id, stop.attempt) == (assignment.job_id, assignment.attempt)
    assert stop.reason
    stream.result(assignment, W.WORK_OUTCOME_FAILED, "stopped as asked")

    assert wait_for_state(node.stub, assignment.job_id, STOPPED).result_message == "stopped as asked"


def test_a_worker_never_has_more_jobs_than_its_concurrency(node: NodeProcess, connect: Connect) -> None:
    # Given a worker with concurrency 2 and three jobs for it
    stream = connect("flow/**", concurrency=2)
    ids = [add_job(node.stub, "flow/job", n=n) for n in range(3)]
    # Then it receives two; the third stays QUEUED, not claimed, while no slot is free
    first, second = stream.expect("assignment"), stream.expect("assignment")
    third_id = next(i for i in ids if i not in {first.job_id, second.job_id})
    stream.assert_silent(SILENCE_S)
    assert get_job(node.stub, third_id).state == QUEUED
    # When one result comes back, the third job follows
    stream.result(first)
    third = stream.expect("assignment")
    assert third.job_id == third_id
    stream.result(second)
    stream.result(third)
    for job_id in ids:
        wait_for_state(node.stub, job_id, SUCCEEDED)


def test_workers_of_the_same_pattern_share_the_jobs(node: NodeProcess, connect: Connect) -> None:
    # Given two workers for the same pattern, one slot each
    one = connect("share/**", name="one")
    two = connect("share/**", name="two")
    # When two jobs are added, each worker gets one
    ids = {add_job(node.stub, "share/job", n=n) for n in range(2)}
    a, b = one.expect("assignment"), two.expect("assignment")
    assert {a.job_id, b.job_id} == ids
    # And when the first worker leaves, the other one keeps serving the pattern
    one.result(a)
    wait_for_state(node.stub, a.job_id, SUCCEEDED)
    one.cancel()
    two.result(b)
    later = add_job(node.stub, "share/later")
    two.succeed(later)
    for job_id in (*ids, later):
        wait_for_state(node.stub, job_id, SUCCEEDED)


def test_an_attempt_that_times_out_is_stopped_and_keeps_the_slot_until_the_worker_reports(
    node: NodeProcess,
    connect: Connect,
) -> None:
    # Given a worker with one slot and a job whose attempts time out after 1 s
    stream = connect("slow/**")
    job = new_job("slow/job")
    job.timeout.FromSeconds(1)
    job_id = node.stub.AddJob(J.AddJobRequest(job=job)).job.id
    first = stream.expect("assignment")
    # When the worker does not answer in time, it is told to stop
    stop = stream.expect("stop")
    assert (stop.job_id, stop.attempt) == (job_id, first.attempt)
    # But the attempt is not over while the worker may still run it: the job stays ACTIVE, its
    # retry not counted, and the worker's only slot takes nothing else
    stream.assert_silent(0.2)
    held = get_job(node.stub, job_id)
    assert (held.state, held.retry_count) == (J.JOB_STATE_ACTIVE, 0)
    stream.result(first, message="too late")  # ends the attempt (timed out); its result does not count
    wait_for(lambda: get_job(node.stub, job_id).retry_count == 1, what="the timed-out attempt to count")
    second = stream.expect("assignment")
    assert (second.job_id, second.attempt) == (job_id, first.attempt + 1)
    stream.result(second, message="in time")
    assert wait_for_state(node.stub, job_id, SUCCEEDED).result_message == "in time"


def test_reports_about_attempts_the_worker_does_not_hold_are_ignored(
    node: NodeProcess, connect: Connect
) -> None:
    stream = connect("stale/**")
    assignment = hold(node, stream, "stale/job")

    wrong = W.WorkAssignment(job_id=assignment.job_id, attempt=assignment.attempt + 5)
    stream.result(wrong, message="not mine")
    stream.progress(wrong, total_steps=9)
    stream.result(assignment, message="mine")

    job = wait_for_state(node.stub, assignment.job_id, SUCCEEDED)
    assert job.result_message == "mine"
    assert job.progress.total_steps == 0


def test_a_broken_stream_requeues_unfinished_jobs_with_one_more_retry_and_a_new_worker_gets_them(
    node: NodeProcess,
    connect: Connect,
) -> None:
    # Given a worker holding two jobs
    stream = connect("break/**", concurrency=2)
    ids = {add_job(node.stub, "break/job", n=n) for n in range(2)}
    held = {stream.expect("assignment").job_id for _ in range(2)}
    assert held == ids
    # When its stream breaks
    stream.cancel()
    # Then both are QUEUED again with retry count 1, waiting for a consumer
    for job_id in ids:
        wait_for(
            functools.partial(_unassigned, node, job_id, 1),
            what=f"job {job_id} to be re-queued, unassigned, with retry count 1",
        )
    assert "disconnected" in get_job(node.stub, next(iter(ids))).result_message
    # And when a worker connects again, it gets them and they complete
    again = connect("break/**", concurrency=2)
    for _ in range(2):
        assignment = again.expect("assignment")
        assert assignment.retry_count == 1
        again.result(assignment)
    for job_id in ids:
        assert wait_for_state(node.stub, job_id, SUCCEEDED).retry_count == 1


def test_a_job_waiting_for_a_worker_slot_does_not_spend_a_retry_when_the_worker_goes(
    node: NodeProcess,
    connect: Connect,
) -> None:
    # Given a one-slot worker running one job while a second one waits QUEUED for the slot
    stream = connect("slot/**")
    running_id = add_job(node.stub, "slot/job", n=1)
    assert stream.expect("assignment").job_id == running_id
    waiting_id = add_job(node.stub, "slot/job", n=2)
    stream.assert_silent(SILENCE_S)
    assert get_job(node.stub, waiting_id).state == QUEUED
    # When the worker's stream breaks
    stream.cancel()
    # Then the job it ran counts a retry; the one that never reached it does not
    for job_id, retries in ((running_id, 1), (waiting_id, 0)):
        wait_for(
            functools.partial(_unassigned, node, job_id, retries),
            what=f"job {job_id} to wait, unassigned, with retry count {retries}",
        )
    again = connect("slot/**", concurrency=2)
    for _ in range(2):
        again.result(again.expect("assignment"))
    for job_id in (running_id, waiting_id):
        wait_for_state(node.stub, job_id, SUCCEEDED)


def test_a_half_closed_stream_requeues_unfinished_jobs_too(node: NodeProcess, connect: Connect) -> None:
    stream = connect("leave/**")
    job_id = hold(node, stream, "leave/job").job_id

    stream.close()

    wait_for(lambda: get_job(node.stub, job_id).state == QUEUED, what="the job to be re-queued")
    assert get_job(node.stub, job_id).retry_count == 1
    assert stream.ended.wait(5)
    assert stream.error is None, "the node ends the stream with OK"


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        ("", None, "first message must be `register`"),
        ("result", W.WorkResult(job_id="x", attempt=1), "first message must be `register`"),
        ("register", W.WorkerRegistration(topics=[]), "register.topics is empty"),
        ("register", W.WorkerRegistration(topics=["a//b"]), "topic pattern 'a//b'"),
        ("register", W.WorkerRegistration(topics=["bad/*"], concurrency=-1), "register.concurrency is -1"),
        (
            "register",
            W.WorkerRegistration(name="x" * 300, topics=["bad/*"]),
            "register.name has 300 characters",
        ),
    ],
    ids=["empty", "result-first", "no-topics", "bad-pattern", "bad-concurrency", "long-name"],
)
def test_a_bad_registration_ends_the_stream_with_invalid_argument(
    node: NodeProcess, kind: str, message: object, expected: str
) -> None:
    stream = WorkerStream(node.channel)
    stream.send(**({kind: message} if kind else {}))

    error = stream.wait_error()

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or ""), error.details()


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        ("register", W.WorkerRegistration(topics=["x"]), "`register` may only be the first message"),
        (
            "result",
            W.WorkResult(job_id="", attempt=1, outcome=W.WORK_OUTCOME_SUCCEEDED),
            "result.job_id is empty",
        ),
        (
            "result",
            W.WorkResult(job_id="j", attempt=0, outcome=W.WORK_OUTCOME_SUCCEEDED),
            "result.attempt is 0",
        ),
        ("result", W.WorkResult(job_id="j", attempt=1), "result.outcome is 0"),
        (
            "result",
            W.WorkResult(job_id="j", attempt=1, outcome=W.WORK_OUTCOME_FAILED, retry_delay=duration(-1)),
            "result.retry_delay is -1s",
        ),
        (
            "progress",
            W.WorkProgress(job_id="j", attempt=1, eta=Duration(seconds=-1, nanos=1)),
            "progress.eta (seconds -1, nanos 1) is not a valid google.protobuf.Duration",
        ),
        ("progress", W.WorkProgress(job_id="j", attempt=1, increment_steps=-2), "increment_steps is -2"),
        ("property", W.WorkProperty(job_id="j", attempt=1, name="1bad"), "property name '1bad' is invalid"),
        ("property", W.WorkProperty(job_id="j", attempt=1, name="ok"), "no value is set"),
        ("log", W.WorkLogLine(job_id="j", attempt=-1), "log.attempt is -1"),
        ("", None, "empty WorkRequest"),
    ],
    ids=[
        "register-twice",
        "no-job-id",
        "attempt-0",
        "no-outcome",
        "negative-delay",
        "malformed-eta",
        "negative-steps",
        "bad-property-name",
        "property-without-value",
        "negative-attempt",
        "empty",
    ],
)
def test_a_bad_report_ends_the_stream_with_invalid_argument_and_requeues_the_workers_jobs(
    node: NodeProcess,
    connect: Connect,
    request: pytest.FixtureRequest,
    kind: str,
    message: object,
    expected: str,
) -> None:
    # Given a worker that holds a job
    stream = connect("badreport/**")
    job_id = hold(node, stream, f"badreport/{request.node.callspec.id}").job_id
    # When it sends a malformed message
    stream.send(**({kind: message} if kind else {}))
    # Then the stream ends with INVALID_ARGUMENT naming the problem, and the job is re-queued
    error = stream.wait_error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or ""), error.details()
    wait_for(lambda: get_job(node.stub, job_id).retry_count == 1, what="the job to be re-queued")
    # (leave no job behind for the next parametrization: another worker finishes it)
    cleanup = connect("badreport/**")
    cleanup.result(cleanup.expect("assignment"))
    wait_for_state(node.stub, job_id, SUCCEEDED)


def test_node_shutdown_stops_remote_jobs_requeues_them_and_ends_the_streams_cleanly(
    nodes: NodeFactory,
) -> None:
    # Given a node with a worker that holds a job and ignores stop requests
    node = nodes.start("shutdown", settings={"server.shutdown_grace_s": 0.2})
    stream = WorkerStream.connect(node.channel, "down/**")
    job_id = add_job(node.stub, "down/job")
    stream.expect("assignment")
    # When the node shuts down
    node.send_signal(signal.SIGTERM)
    # Then the worker is told to stop, the stream ends with OK and the node exits cleanly
    assert stream.expect("stop").job_id == job_id
    assert stream.ended.wait(10)
    assert stream.error is None
    assert node.wait_exit() == 0
    # And the job is QUEUED again after a restart, its retry count unchanged
    node.start()
    job = get_job(node.stub, job_id)
    assert (job.state, job.retry_count) == (QUEUED, 0)
