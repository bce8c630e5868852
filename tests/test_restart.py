"""Durability across restarts and crashes: real node processes, SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobmesh.v1 import jobs_pb2

from tests.consumers import attempts
from tests.support.job_calls import add_job, add_running_job, find_all, get_job, wait_for_state
from tests.support.launcher import RUN_FILE, NodeFactory
from tests.support.protos import new_job
from tests.support.waiting import wait_for

S = jobs_pb2


def test_graceful_restart_keeps_queued_and_history_jobs_and_the_instance_id(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a node that has finished some jobs and holds others it has no consumer for
    node = nodes.start("keeper", ["keep/ok=consumers:succeed"])
    instance_id = node.instance_id
    done = [add_job(node.stub, "keep/ok", n=i) for i in range(2)]
    waiting = [add_job(node.stub, "keep/later", payload=b"p%d" % i, n=i) for i in range(3)]
    history = {job_id: wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED) for job_id in done}
    before = {job_id: get_job(node.stub, job_id, include_payloads=True) for job_id in waiting}

    # When it is stopped with SIGTERM
    assert node.terminate() == 0
    assert not (node.data_dir / RUN_FILE).exists(), "a clean shutdown removes node.json"

    # And started again on the same data dir
    node.start()

    # Then it is the same instance, its history is intact and its waiting jobs still wait
    assert node.instance_id == instance_id
    for job_id, job in history.items():
        assert get_job(node.stub, job_id) == job
    for job_id, job in before.items():
        assert get_job(node.stub, job_id, include_payloads=True) == job
    assert {j.id for j in find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_QUEUED))} == set(waiting)
    assert {j.id for j in find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_HISTORY))} == set(done)


def test_queued_jobs_run_when_a_restart_brings_their_consumer(nodes: NodeFactory) -> None:
    # Given jobs added while no consumer existed for their topic
    node = nodes.start("late-consumer")
    waiting = [add_job(node.stub, "late/topic", payload=b"x") for _ in range(3)]
    assert all(get_job(node.stub, j).target_instance == "" for j in waiting), "no consumer: unassigned"

    # When the node restarts with a consumer for that topic
    node.terminate()
    node.consumers = ("late/**=consumers:echo",)
    node.start()

    # Then they are assigned and run, with their payloads
    for job_id in waiting:
        job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
        assert job.target_instance == node.instance_id
        assert get_job(node.stub, job_id, include_payloads=True).output_payload == b"echo:x"


def test_job_active_at_kill_9_runs_again_after_restart_and_succeeds(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a job whose consumer is blocked in its first attempt
    node = nodes.start("crashy", ["crash/**=consumers:block_until_released"])
    job_id, files = add_running_job(node.stub, "crash/job", tmp_path)
    assert get_job(node.stub, job_id).state == S.JOB_STATE_ACTIVE
    first_pid = node.info["pid"]

    # When the node is killed with SIGKILL, and restarted after the consumer's blocker is gone
    assert node.kill() == -9
    assert (node.data_dir / RUN_FILE).exists(), "a crash leaves node.json behind"
    files.release.touch()
    node.start()

    # Then the job runs again and succeeds, counting the attempt the crash cut short
    assert node.info["pid"] != first_pid
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    assert job.retry_count == 1
    assert job.result_message == "released"
    assert len(attempts(files.attempts)) == 2
    assert "re-queued" in node.log_text()


def test_job_stopped_while_active_ends_stopped_when_a_crash_interrupts_it(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an active job whose consumer ignores the stop request that was made
    node = nodes.start("stop-crash", ["crash/**=consumers:block_ignoring_stop"])
    job_id, files = add_running_job(node.stub, "crash/stubborn", tmp_path)
    assert node.stub.StopJob(S.StopJobRequest(job_id=job_id)).job.stop_requested

    # When the node is killed and restarted
    node.kill()
    node.start()

    # Then the job is STOPPED, not run again
    job = get_job(node.stub, job_id)
    assert job.state == S.JOB_STATE_STOPPED
    assert job.HasField("finished_time")
    assert len(attempts(files.attempts)) == 1


def test_job_active_at_kill_9_without_retries_left_is_given_up(nodes: NodeFactory, tmp_path: Path) -> None:
    # Given a node allowing no retries and a job blocked in its only attempt
    node = nodes.start("no-retries", ["crash/**=consumers:block_until_released"], {"jobs.retries": 0})
    job_id, files = add_running_job(node.stub, "crash/once", tmp_path)

    # When the node is killed and restarted
    node.kill()
    node.start()

    # Then the job is GIVEN_UP (it may be what crashed the node), not run again
    job = get_job(node.stub, job_id)
    assert job.state == S.JOB_STATE_GIVEN_UP
    assert job.retry_count == 1
    assert "no retries left" in job.result_message
    assert len(attempts(files.attempts)) == 1


def test_jobs_acknowledged_before_kill_9_are_all_there_after_restart(nodes: NodeFactory) -> None:
    # Given a batch the node acknowledged
    node = nodes.start("acked")
    ids = list(
        node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("acked/x", i=i) for i in range(500)])).job_ids
    )
    single = add_job(node.stub, "acked/y", payload=b"last")

    # When the node is killed right after the acknowledgement, and restarted
    node.kill()
    node.start()

    # Then every acknowledged job is there, queued, with its properties and payload
    found = find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_QUEUED, topic="acked/x", page_size=1000))
    assert [j.id for j in found] == ids
    assert [j.properties["i"].int_value for j in found] == list(range(500))
    assert get_job(node.stub, single, include_payloads=True).payload == b"last"


def test_second_node_on_the_same_data_dir_is_refused(nodes: NodeFactory) -> None:
    # Given a running node
    first = nodes.start("shared-dir")
    job_id = add_job(first.stub, "shared/x")

    # When a second node is started on its data dir
    second = nodes.create("intruder", data_dir=first.data_dir)
    second.spawn()
    code = second.wait_exit()
    second.expected_exit = code

    # Then it exits with an error that names the data dir
    assert code != 0
    output = second.log_text()
    assert str(first.data_dir) in output
    assert "in use" in output
    # And the first node keeps serving, and can still be found through its node.json
    info = json.loads((first.data_dir / RUN_FILE).read_text())
    assert info["pid"] == first.info["pid"]
    assert get_job(first.stub, job_id).state == S.JOB_STATE_QUEUED


def test_node_json_describes_the_running_node(nodes: NodeFactory) -> None:
    node = nodes.start("described", extra_args=["--name", "described-node"])

    info = json.loads((node.data_dir / RUN_FILE).read_text())

    assert info["name"] == "described-node"
    assert info["address"] == f"127.0.0.1:{info['port']}"
    assert info["pid"] == node.process.pid  # type: ignore[union-attr]
    with node.client_transport().create_sync_channel(info["address"]) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)


def test_graceful_shutdown_reports_not_serving_and_requeues_an_unfinished_job(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a node with a short shutdown grace, running a job that will not finish in it
    node = nodes.start(
        "graceful", ["grace/**=consumers:block_until_released"], {"server.shutdown_grace_s": 0.5}
    )
    job_id, files = add_running_job(node.stub, "grace/job", tmp_path)
    health = health_pb2_grpc.HealthStub(node.channel)

    # When it gets SIGTERM
    node.send_signal(signal.SIGTERM)

    # Then it tells health checkers it is going away, and exits cleanly after the grace
    wait_for(
        lambda: (
            health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        ),
        what="health NOT_SERVING",
    )
    assert node.wait_exit() == 0
    # And after a restart the job runs again; the interrupted attempt is not counted as a failure
    files.release.touch()
    node.start()
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    assert job.retry_count == 0
