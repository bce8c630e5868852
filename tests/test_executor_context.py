"""The executor context of a consumer in a real node: progress, ETA, log, properties, async completion, stop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, add_running_job, get_job, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.waiting import wait_for
from tests.support.watching import watch

S = jobs_pb2
MAX_LOG_LINES = 3


node = shared_node(
    "context",
    [
        "ctx/progress=consumers:report_progress",
        "ctx/log=consumers:log_lines",
        "ctx/later=consumers:complete_from_another_thread",
        "ctx/wait=consumers:wait_until_stopped",
    ],
    {"jobs.max_log_lines": MAX_LOG_LINES},
)


def with_log(node: NodeProcess, job_id: str) -> jobs_pb2.Job:
    job: jobs_pb2.Job = node.stub.GetJob(S.GetJobRequest(job_id=job_id, include_log=True)).job
    return job


def micros(ts: object) -> int:
    return int(ts.ToMicroseconds())  # type: ignore[attr-defined]


def test_progress_eta_log_and_properties_are_visible_while_the_job_runs_and_after(
    node: NodeProcess, tmp_path: Path
) -> None:
    # Given a consumer that announces 4 steps (ETA 1 h), logs and counts 2 of them, then sets
    # the ETA to 60 s and waits
    release = tmp_path / "release"
    job_id = add_job(
        node.stub, "ctx/progress", steps=4, pause_after=2, pause_eta_s=60.0, release_file=str(release)
    )

    # Then GetJob shows the progress, the new ETA and the log lines while it is ACTIVE
    def paused() -> jobs_pb2.Job | None:
        job = with_log(node, job_id)
        eta_s = (micros(job.progress.eta) - time.time() * 1e6) / 1e6
        return job if job.progress.completed_steps == 2 and 30 < eta_s <= 60 else None

    active = wait_for(paused, what="2 of 4 steps and an ETA about 60 s ahead")
    assert active.state == S.JOB_STATE_ACTIVE
    assert active.progress.total_steps == 4
    assert [line.message for line in active.log] == ["step 1 of 4", "step 2 of 4"]
    assert active.log_line_count == 2
    assert all(line.HasField("time") for line in active.log)
    assert "steps_done" not in active.properties

    # When it is released and finishes
    release.touch()
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    # Then the final progress, the newest log lines (capped) and the property it set are kept
    done = with_log(node, job_id)
    assert (done.progress.total_steps, done.progress.completed_steps) == (4, 4)
    assert [line.message for line in done.log] == ["step 2 of 4", "step 3 of 4", "step 4 of 4"]
    assert done.log_line_count == 4
    assert done.properties["steps_done"].int_value == 4
    assert done.properties["release_file"].string_value == str(release)
    # And without include_log only the count comes
    brief = get_job(node.stub, job_id)
    assert (list(brief.log), brief.log_line_count) == ([], 4)

    # And every progress update and log line was a PROGRESS event, in order
    with watch(node.channel, after_seq=0, job_ids=[job_id], types=[S.JOB_EVENT_TYPE_PROGRESS]) as w:
        events = w.until(lambda events: len(events) >= 10)
    assert [(e.message, e.progress.total_steps, e.progress.completed_steps) for e in events] == [
        ("", 4, 0),
        ("step 1 of 4", 4, 0),
        ("", 4, 1),
        ("step 2 of 4", 4, 1),
        ("", 4, 2),
        ("", 4, 2),  # update_eta
        ("step 3 of 4", 4, 2),
        ("", 4, 3),
        ("step 4 of 4", 4, 3),
        ("", 4, 4),
    ]
    assert all(e.state == S.JOB_STATE_ACTIVE and e.target_instance == node.instance_id for e in events)
    init, estimated = events[0], events[2]
    started = micros(done.started_time)
    # init_progress set the ETA an hour ahead; counting a step re-estimated it from the pace so far
    assert micros(init.progress.eta) - micros(init.time) == pytest.approx(3600e6, abs=1e6)
    assert started < micros(estimated.progress.eta) < micros(init.progress.eta)


def test_log_keeps_the_newest_lines_up_to_the_limit(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "ctx/log", lines=7)

    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    job = with_log(node, job_id)
    assert [line.message for line in job.log] == ["line 5", "line 6", "line 7"]
    assert job.log_line_count == 7
    assert not job.HasField("progress")


def test_job_completed_later_from_another_thread_stays_active_until_then(
    node: NodeProcess, tmp_path: Path
) -> None:
    # Given a consumer that returned complete_later() at once and completes from its own thread
    job_id, files = add_running_job(node.stub, "ctx/later", tmp_path)

    # Then the job stays ACTIVE after the consumer returned
    assert get_job(node.stub, job_id).state == S.JOB_STATE_ACTIVE
    # And ends with the result the thread reports (a second complete() is ignored)
    files.release.touch()
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    assert job.result_message == "completed from another thread"


def test_stop_job_reaches_a_consumer_completing_later_through_is_stopped(
    node: NodeProcess, tmp_path: Path
) -> None:
    job_id, _ = add_running_job(node.stub, "ctx/later", tmp_path)

    stopping = node.stub.StopJob(S.StopJobRequest(job_id=job_id)).job

    assert stopping.stop_requested
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_STOPPED)
    assert job.result_message == "stopped before completion"


def test_stop_job_makes_is_stopped_true_for_a_running_consumer(node: NodeProcess, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    job_id = add_job(node.stub, "ctx/wait", attempts_file=str(attempts))
    wait_for(attempts.exists, what="the consumer to run")

    node.stub.StopJob(S.StopJobRequest(job_id=job_id))

    job = wait_for_state(node.stub, job_id, S.JOB_STATE_STOPPED)
    assert job.result_message == "stopped cooperatively"
    assert len(attempts.read_text().split()) == 1
