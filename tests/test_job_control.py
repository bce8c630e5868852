"""StopJob, RemoveJob and RetryJob on a real node process."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from tests.consumers import attempts
from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, rpc_error, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.waiting import wait_for

S = jobs_pb2

CONSUMERS = (
    "ctl/cooperative=consumers:wait_until_stopped",
    "ctl/stubborn=consumers:block_ignoring_stop",
    "ctl/blocking=consumers:block_until_released",
    "ctl/second-chance=consumers:cancel_first_attempt",
    "ctl/ok=consumers:succeed",
    "ctl/echo=consumers:echo",
)


node = shared_node("control", CONSUMERS)


def started(node: NodeProcess, topic: str, files: Path) -> str:
    """Add a job on `topic` and wait until its consumer runs it; returns its id."""
    marker = files / "started"
    job_id = add_job(
        node.stub,
        topic,
        started_file=str(marker),
        release_file=str(files / "release"),
        attempts_file=str(files / "attempts"),
    )
    wait_for(marker.exists, what=f"the consumer of {topic} to start")
    assert get_job(node.stub, job_id).state == S.JOB_STATE_ACTIVE
    return job_id


# --- stop ------------------------------------------------------------------------------------


def test_stopping_a_queued_job_makes_it_stopped_at_once(node: NodeProcess) -> None:
    # Given a job that waits for a consumer nobody provides
    job_id = add_job(node.stub, "ctl/idle/stop")

    # When it is stopped
    job = node.stub.StopJob(S.StopJobRequest(job_id=job_id)).job

    # Then it is STOPPED in the response and from then on
    assert job.state == S.JOB_STATE_STOPPED
    assert job.HasField("finished_time")
    assert job.result_message == "stopped by a user"
    assert get_job(node.stub, job_id).state == S.JOB_STATE_STOPPED


def test_stopping_an_active_job_asks_its_consumer_which_ends_it_stopped(
    node: NodeProcess, tmp_path: Path
) -> None:
    # Given a running job whose consumer checks is_stopped()
    job_id = started(node, "ctl/cooperative", tmp_path)

    # When it is stopped
    response = node.stub.StopJob(S.StopJobRequest(job_id=job_id)).job

    # Then it is still ACTIVE, with the stop requested, until the consumer returns
    assert response.state == S.JOB_STATE_ACTIVE
    assert response.stop_requested
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_STOPPED)
    assert job.result_message == "stopped cooperatively"
    assert not job.stop_requested
    assert job.HasField("finished_time")
    assert len(attempts(tmp_path / "attempts")) == 1, "a stopped job is not retried"


def test_active_job_that_succeeds_despite_a_stop_request_keeps_its_success(
    node: NodeProcess, tmp_path: Path
) -> None:
    job_id = started(node, "ctl/stubborn", tmp_path)
    assert node.stub.StopJob(S.StopJobRequest(job_id=job_id)).job.stop_requested

    (tmp_path / "release").touch()

    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_STOPPED)
    assert job.state == S.JOB_STATE_SUCCEEDED
    assert job.result_message == "released; the stop request was ignored"


def test_stopping_a_finished_job_is_a_failed_precondition(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctl/ok")
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    error = rpc_error(lambda: node.stub.StopJob(S.StopJobRequest(job_id=job_id)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SUCCEEDED" in error.details()
    assert job_id in error.details()
    assert get_job(node.stub, job_id).state == S.JOB_STATE_SUCCEEDED


# --- remove ----------------------------------------------------------------------------------


def test_removing_a_queued_job_drops_it_and_removing_it_again_deletes_it(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctl/idle/remove")

    # When a queued job is removed, it is kept in history as DROPPED
    first = node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))
    assert not first.deleted
    assert first.job.state == S.JOB_STATE_DROPPED
    assert first.job.result_message == "removed by a user"
    assert get_job(node.stub, job_id).state == S.JOB_STATE_DROPPED

    # When it is removed again (now history), it is deleted for good
    second = node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))
    assert second.deleted
    assert not second.HasField("job")
    error = rpc_error(lambda: get_job(node.stub, job_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert job_id in error.details()
    assert rpc_error(lambda: node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    found = node.stub.FindJobs(S.FindJobsRequest(topic="ctl/idle/remove"))
    assert found.total_size == 0


def test_removing_an_active_job_drops_it_and_stops_its_consumer(node: NodeProcess, tmp_path: Path) -> None:
    # Given a running job whose consumer honours stop requests
    job_id = started(node, "ctl/blocking", tmp_path)

    # When it is removed
    response = node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))

    # Then it is DROPPED at once, and stays DROPPED after its consumer gives up
    assert not response.deleted
    assert response.job.state == S.JOB_STATE_DROPPED
    job = get_job(node.stub, job_id)
    assert job.state == S.JOB_STATE_DROPPED
    assert job.HasField("finished_time")
    assert len(attempts(tmp_path / "attempts")) == 1


def test_removing_a_finished_job_deletes_it_with_its_payloads(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctl/echo", payload=b"data")
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    response = node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))

    assert response.deleted
    assert (
        rpc_error(lambda: get_job(node.stub, job_id, include_payloads=True)).code()
        == grpc.StatusCode.NOT_FOUND
    )


# --- retry -----------------------------------------------------------------------------------


def test_retrying_a_finished_job_runs_it_again_with_a_fresh_retry_count(
    node: NodeProcess, tmp_path: Path
) -> None:
    # Given a job whose first attempt was cancelled (ERROR)
    log = tmp_path / "attempts"
    job_id = add_job(node.stub, "ctl/second-chance", attempts_file=str(log))
    wait_for_state(node.stub, job_id, S.JOB_STATE_ERROR)

    # When it is retried
    retried = node.stub.RetryJob(S.RetryJobRequest(job_id=job_id)).job

    # Then it is queued again with its result cleared, runs once more and succeeds
    assert retried.state == S.JOB_STATE_QUEUED
    assert retried.retry_count == 0
    assert retried.result_message == ""
    assert not retried.HasField("finished_time")
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    assert job.result_message == "retried and succeeded"
    assert job.retry_count == 0
    assert len(attempts(log)) == 2


@pytest.mark.parametrize("how", ["stopped", "dropped"])
def test_user_ended_jobs_can_be_retried(node: NodeProcess, how: str) -> None:
    # Given a job stopped or dropped while it waited for a consumer
    job_id = add_job(node.stub, "ctl/idle/retry")
    if how == "stopped":
        node.stub.StopJob(S.StopJobRequest(job_id=job_id))
    else:
        node.stub.RemoveJob(S.RemoveJobRequest(job_id=job_id))

    job = node.stub.RetryJob(S.RetryJobRequest(job_id=job_id)).job

    assert job.state == S.JOB_STATE_QUEUED
    assert get_job(node.stub, job_id).state == S.JOB_STATE_QUEUED


def test_retrying_a_succeeded_job_replaces_its_output(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctl/echo", payload=b"in")
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    retried = node.stub.RetryJob(S.RetryJobRequest(job_id=job_id)).job

    assert retried.output_payload_size == 0
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    job = get_job(node.stub, job_id, include_payloads=True)
    assert (job.payload, job.output_payload) == (b"in", b"echo:in")


def test_retrying_a_queued_job_is_a_failed_precondition(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctl/idle/retry-queued")

    error = rpc_error(lambda: node.stub.RetryJob(S.RetryJobRequest(job_id=job_id)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "QUEUED" in error.details()
    assert "not finished" in error.details()
    assert get_job(node.stub, job_id).state == S.JOB_STATE_QUEUED


def test_retrying_an_active_job_is_a_failed_precondition(node: NodeProcess, tmp_path: Path) -> None:
    job_id = started(node, "ctl/blocking", tmp_path)

    error = rpc_error(lambda: node.stub.RetryJob(S.RetryJobRequest(job_id=job_id)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ACTIVE" in error.details()
    (tmp_path / "release").touch()
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    assert len(attempts(tmp_path / "attempts")) == 1


@pytest.mark.parametrize("method", ["GetJob", "StopJob", "RemoveJob", "RetryJob"])
def test_unknown_job_id_is_not_found(node: NodeProcess, method: str) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    request = {
        "GetJob": S.GetJobRequest,
        "StopJob": S.StopJobRequest,
        "RemoveJob": S.RemoveJobRequest,
        "RetryJob": S.RetryJobRequest,
    }[method](job_id=missing)

    error = rpc_error(lambda: getattr(node.stub, method)(request))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()
