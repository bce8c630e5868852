"""A job's way through a real node process: added, consumed, and ended by each kind of result."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2

from tests.consumers import attempts
from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for

RETRIES = 2

CONSUMERS = (
    "life/succeed=consumers:succeed",
    "life/silent=consumers:succeed_silently",
    "life/flaky=consumers:fail_then_succeed",
    "life/hopeless=consumers:fail_always",
    "life/cancel=consumers:cancel",
    "life/raise=consumers:raise_error",
    "life/wrong-type=consumers:return_wrong_type",
    "life/async=consumers:async_succeed",
    "life/class=consumers:ClassConsumer",
    "life/echo=consumers:echo",
    "life/batch/*=consumers:succeed",
)


node = shared_node("lifecycle", CONSUMERS, {"jobs.retries": RETRIES})


def micros(ts: Timestamp) -> int:
    return int(ts.ToMicroseconds())


def test_add_job_is_consumed_and_succeeds_with_its_bookkeeping_set(node: NodeProcess, tmp_path: Path) -> None:
    # Given a node with a consumer for life/succeed
    log = tmp_path / "attempts"

    # When a job is added through AddJob
    added = node.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job("life/succeed", attempts_file=str(log)))).job

    # Then the response is the committed job, assigned to this node
    assert added.id
    assert added.topic == "life/succeed"
    assert added.origin_instance == node.instance_id
    assert added.target_instance == node.instance_id
    assert added.queue
    assert added.max_retries == RETRIES
    assert added.HasField("created_time")
    assert added.properties["attempts_file"].string_value == str(log)
    # And the consumer runs it exactly once, to SUCCEEDED
    job = wait_for_state(node.stub, added.id, jobs_pb2.JOB_STATE_SUCCEEDED)
    assert len(attempts(log)) == 1
    assert job.result_message == "done: life/succeed"
    assert job.retry_count == 0
    assert job.origin_instance == job.target_instance == node.instance_id
    assert job.HasField("started_time")
    assert job.HasField("finished_time")
    assert not job.HasField("not_before_time")
    assert micros(job.created_time) <= micros(job.started_time) <= micros(job.finished_time)
    assert not job.stop_requested


def test_add_jobs_returns_ids_in_request_order_and_every_job_succeeds(
    node: NodeProcess, tmp_path: Path
) -> None:
    topics = ["life/batch/a", "life/batch/b", "life/batch/c", "life/batch/a"]
    logs = [tmp_path / f"attempts-{i}" for i in range(len(topics))]

    response = node.stub.AddJobs(
        jobs_pb2.AddJobsRequest(
            jobs=[
                new_job(topic, index=i, attempts_file=str(log))
                for i, (topic, log) in enumerate(zip(topics, logs, strict=True))
            ]
        )
    )

    ids = list(response.job_ids)
    assert len(ids) == len(topics)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "job ids are time-ordered (UUIDv7) and returned in request order"
    for index, (job_id, topic, log) in enumerate(zip(ids, topics, logs, strict=True)):
        job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
        assert job.topic == topic
        assert job.properties["index"].int_value == index
        assert job.origin_instance == job.target_instance == node.instance_id
        assert job.HasField("started_time")
        assert job.HasField("finished_time")
        assert len(attempts(log)) == 1


def test_consumer_returning_none_succeeds_with_empty_message(node: NodeProcess) -> None:
    job = wait_for_state(node.stub, add_job(node.stub, "life/silent"), jobs_pb2.JOB_STATE_SUCCEEDED)

    assert job.result_message == ""
    assert job.retry_count == 0


def test_failed_attempts_are_retried_until_the_job_succeeds(node: NodeProcess, tmp_path: Path) -> None:
    # Given a consumer that fails the first two attempts (within the node's 2 retries)
    log = tmp_path / "attempts"

    job_id = add_job(node.stub, "life/flaky", failures=2, attempts_file=str(log))

    # Then it runs three times and ends SUCCEEDED, counting the two failed attempts
    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    assert len(attempts(log)) == 3
    assert job.retry_count == 2
    assert job.result_message == "succeeded on attempt 3"


def test_failing_consumer_is_given_up_after_its_retries(node: NodeProcess, tmp_path: Path) -> None:
    # Given a node allowing 2 retries and a consumer that always fails
    log = tmp_path / "attempts"

    job_id = add_job(node.stub, "life/hopeless", attempts_file=str(log))

    # Then the first attempt and both retries run, and the job is GIVEN_UP
    # with every failed attempt counted (retries + 1)
    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_GIVEN_UP)
    assert len(attempts(log)) == RETRIES + 1
    assert job.retry_count == RETRIES + 1
    assert job.max_retries == RETRIES
    assert job.result_message == f"attempt {RETRIES + 1} failed"
    assert job.HasField("finished_time")


def test_retry_waits_for_the_delay_the_consumer_asked_for(node: NodeProcess, tmp_path: Path) -> None:
    # Given a consumer that fails once asking for a 0.3 s delay (the preset's default is 0.05 s)
    log = tmp_path / "attempts"

    job_id = add_job(node.stub, "life/flaky", failures=1, delay_s=0.3, attempts_file=str(log))

    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    first, second = attempts(log)
    assert second - first >= 0.3
    assert job.retry_count == 1


def test_cancelled_job_ends_in_error_without_retry(node: NodeProcess, tmp_path: Path) -> None:
    log = tmp_path / "attempts"

    job = wait_for_state(
        node.stub, add_job(node.stub, "life/cancel", attempts_file=str(log)), jobs_pb2.JOB_STATE_ERROR
    )

    assert job.result_message == "input cannot be processed"
    assert job.retry_count == 0
    assert len(attempts(log)) == 1


def test_consumer_exception_ends_in_error_with_the_exception_text(node: NodeProcess, tmp_path: Path) -> None:
    log = tmp_path / "attempts"

    job_id = add_job(node.stub, "life/raise", reason="bad pixel", attempts_file=str(log))

    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_ERROR)
    assert job.result_message == "consumer exploded: bad pixel"
    assert job.retry_count == 0
    assert len(attempts(log)) == 1


def test_consumer_returning_a_non_result_ends_in_error_that_says_so(node: NodeProcess) -> None:
    job = wait_for_state(node.stub, add_job(node.stub, "life/wrong-type"), jobs_pb2.JOB_STATE_ERROR)

    assert "returned int" in job.result_message
    assert "JobResult" in job.result_message


def test_async_consumer_runs_and_succeeds(node: NodeProcess) -> None:
    job = wait_for_state(node.stub, add_job(node.stub, "life/async"), jobs_pb2.JOB_STATE_SUCCEEDED)

    assert job.result_message == "async done: life/async"


def test_consumer_class_is_instantiated_and_its_process_method_runs(node: NodeProcess) -> None:
    job = wait_for_state(node.stub, add_job(node.stub, "life/class"), jobs_pb2.JOB_STATE_SUCCEEDED)

    assert job.result_message == "from a class"


def test_input_payload_reaches_consumer_and_output_payload_comes_back(node: NodeProcess) -> None:
    # Given a job with an input payload, for a consumer that echoes it as its output
    payload = bytes(range(256)) * 4

    job_id = add_job(node.stub, "life/echo", payload=payload)

    # Then the output payload comes back with GetJob(include_payloads=True)
    wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    full = get_job(node.stub, job_id, include_payloads=True)
    assert full.payload == payload
    assert full.output_payload == b"echo:" + payload
    assert full.payload_size == len(payload)
    assert full.output_payload_size == len(payload) + 5
    # And without include_payloads only the sizes are sent
    brief = get_job(node.stub, job_id)
    assert brief.payload == b""
    assert brief.output_payload == b""
    assert (brief.payload_size, brief.output_payload_size) == (full.payload_size, full.output_payload_size)


def test_job_without_payloads_reports_empty_payloads(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "life/echo")

    wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    job = get_job(node.stub, job_id, include_payloads=True)
    assert job.payload == b""
    assert job.payload_size == 0
    assert job.output_payload == b"echo:"


def test_typed_properties_reach_the_consumer_as_python_values(node: NodeProcess) -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

    job_id = add_job(
        node.stub,
        "life/echo",
        text="héllo",
        count=-(2**63),
        ratio=0.25,
        flag=False,
        raw=b"\x00\xff",
        when=when,
        mixed=["a", 1, 2.5, True, b"\x01", when],
        empty=[],
    )

    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    expected = {
        "text": "héllo",
        "count": -(2**63),
        "ratio": 0.25,
        "flag": False,
        "raw": b"\x00\xff",
        "when": when,
        "mixed": ["a", 1, 2.5, True, b"\x01", when],
        "empty": [],
    }
    assert job.result_message == repr(sorted((name, repr(value)) for name, value in expected.items()))


def test_properties_round_trip_through_the_journal_with_their_types(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "life/echo", n=3, d=3.0, s="3", b=True, raw=b"3", items=[1, "1"])

    props = wait_for(lambda: get_job(node.stub, job_id).properties, what="the job").items()
    kinds = {name: value.WhichOneof("kind") for name, value in props}
    assert kinds == {
        "n": "int_value",
        "d": "double_value",
        "s": "string_value",
        "b": "bool_value",
        "raw": "bytes_value",
        "items": "list_value",
    }
    job = get_job(node.stub, job_id)
    assert [v.WhichOneof("kind") for v in job.properties["items"].list_value.values] == [
        "int_value",
        "string_value",
    ]


def test_retrying_a_given_up_job_grants_all_its_retries_again(node: NodeProcess, tmp_path: Path) -> None:
    # Given a job that used up its retries
    log = tmp_path / "attempts"
    job_id = add_job(node.stub, "life/hopeless", attempts_file=str(log))
    assert wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_GIVEN_UP).retry_count == RETRIES + 1

    # When a user retries it
    retried = node.stub.RetryJob(jobs_pb2.RetryJobRequest(job_id=job_id)).job

    # Then its retry count starts from zero, so it gets the first attempt and all retries again
    assert retried.retry_count == 0
    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_GIVEN_UP)
    assert job.retry_count == RETRIES + 1
    assert len(attempts(log)) == 2 * (RETRIES + 1)
