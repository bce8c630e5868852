"""Per-job options over the wire: max_retries, retry_delay and timeout override the job's queue."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2

from tests.consumers import attempts
from tests.support.fixtures import shared_node
from tests.support.job_calls import find_all, rpc_error, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.protos import new_job

S = jobs_pb2
QUEUES = json.dumps([{"name": "timed", "topics": ["opt/timed/**"], "timeout_s": 0.3, "retries": 0}])


node = shared_node(
    "options",
    ["opt/**=consumers:fail_always", "opt/timed/**=consumers:wait_until_stopped"],
    {"jobs.retries": 5, "queues": QUEUES},
)


def add(node: NodeProcess, job: jobs_pb2.NewJob) -> jobs_pb2.Job:
    added: jobs_pb2.Job = node.stub.AddJob(S.AddJobRequest(job=job)).job
    return added


def test_max_retries_and_retry_delay_of_a_job_override_its_queue(node: NodeProcess, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    job = new_job("opt/fail", attempts_file=str(log))
    job.max_retries = 2
    job.retry_delay.FromMilliseconds(200)

    added = add(node, job)

    assert added.max_retries == 2
    done = wait_for_state(node.stub, added.id, S.JOB_STATE_GIVEN_UP)
    assert done.retry_count == 3
    times = attempts(log)
    assert len(times) == 3
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(times))


def test_zero_max_retries_means_one_attempt(node: NodeProcess, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    job = new_job("opt/fail", attempts_file=str(log))
    job.max_retries = 0

    done = wait_for_state(node.stub, add(node, job).id, S.JOB_STATE_GIVEN_UP)

    assert (done.retry_count, len(attempts(log))) == (1, 1)


def test_a_job_reports_the_timeout_that_applies_to_it(node: NodeProcess) -> None:
    own = new_job("opt/timed/own")
    own.timeout.FromMilliseconds(100)
    queue_default = new_job("opt/timed/queue")

    with_own, with_queue = add(node, own), add(node, queue_default)

    assert (with_own.timeout.ToMilliseconds(), with_queue.timeout.ToMilliseconds()) == (100, 300)
    assert not add(node, new_job("opt/none")).HasField("timeout"), "no timeout: unset"
    first = wait_for_state(node.stub, with_own.id, S.JOB_STATE_GIVEN_UP)
    second = wait_for_state(node.stub, with_queue.id, S.JOB_STATE_GIVEN_UP)
    assert first.result_message == "timed out after 0.1s"
    assert second.result_message == "timed out after 0.3s"
    assert second.finished_time.ToMicroseconds() - second.started_time.ToMicroseconds() >= 300_000
    found = find_all(node.stub, S.FindJobsRequest(topic="opt/timed/queue"))
    assert {j.timeout.ToMilliseconds() for j in found} == {300}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("max_retries", -2, "job.max_retries is -2"),
        ("retry_delay", Duration(nanos=-500_000_000), "job.retry_delay is -0.5s"),
        (
            "retry_delay",
            Duration(seconds=1, nanos=-1),
            "job.retry_delay (seconds 1, nanos -1) is not a valid",
        ),
        (
            "retry_delay",
            Duration(seconds=10**12),
            "job.retry_delay (seconds 1000000000000, nanos 0) is not a",
        ),
        ("timeout", Duration(seconds=-1), "job.timeout is -1s"),
        ("timeout", Duration(seconds=10**9), "job.timeout is 1e+09s; use a duration from 0 to"),
    ],
)
def test_invalid_per_job_option_is_refused(
    node: NodeProcess, field: str, value: int | Duration, fragment: str
) -> None:
    job = new_job("opt/bad")
    if isinstance(value, Duration):
        getattr(job, field).CopyFrom(value)
    else:
        setattr(job, field, value)

    error = rpc_error(lambda: add(node, job))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.details() or "")
    # In a batch the field is named by its index, and nothing of the batch is added
    batch = rpc_error(lambda: node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("opt/bad"), job])))
    assert batch.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment.replace("job.", "jobs[1].") in (batch.details() or "")
    assert find_all(node.stub, S.FindJobsRequest(topic="opt/bad")) == []
