"""Reconciliation and the target's lease with real node processes (issue 13 points 3 and 9): a
target killed (-9) and restarted again and again loses no report and ends no job twice; a
target paused (SIGSTOP) past the death timeout drops the queued jobs its origin reassigned
meanwhile instead of running them once it is back (SIGCONT).

Every execution is counted by the `record_run` consumer, which appends a line per start to one
file shared by the node processes (the line names the process).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import grpc
import pytest
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc
from jobmesh.v1 import jobs_pb2

from node import JobState
from tests.consumers import runs
from tests.support.job_calls import find_all, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import TOPIC, start_cluster, wait_consumes
from tests.support.protos import new_job
from tests.support.topology import create, view, wait_views
from tests.support.waiting import wait_for
from tests.test_security import a_member

CONSUMER = "offload/**=consumers:record_run"
FINISHED = 4  # EventType.FINISHED in job_events
MALLORY = "mallory"
RECOVERED = re.compile(r"recovered jobs left ACTIVE by a crash: (\d+) re-queued")
"""What a restarted node logs about the jobs a kill left ACTIVE (node.node)."""


def _add(origin: NodeProcess, count: int, runs_file: Path, sleep_s: float) -> list[str]:
    jobs = [new_job(TOPIC, b"", runs_file=str(runs_file), sleep_s=sleep_s) for _ in range(count)]
    return list(origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=jobs)).job_ids)


def _states(origin: NodeProcess) -> dict[str, int]:
    request = jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_ALL, topic=TOPIC, page_size=1000)
    return {j.id: j.state for j in find_all(origin.stub, request)}


def _all_succeeded(origin: NodeProcess, ids: list[str], timeout: float) -> None:
    def done() -> bool:
        states = _states(origin)
        return all(states.get(i) == jobs_pb2.JOB_STATE_SUCCEEDED for i in ids)

    wait_for(done, timeout, f"{len(ids)} jobs to succeed at the origin")


def _ended_once(origin: NodeProcess, ids: list[str]) -> None:
    """Exactly one terminal (FINISHED) event per job at the origin."""
    rows = origin.query_journal(
        f"SELECT job_id, count(*) FROM job_events WHERE type = {FINISHED} GROUP BY job_id"
    )
    assert sorted(job_id for job_id, _ in rows) == sorted(ids)
    assert {n for _, n in rows} == {1}


def test_a_target_killed_and_restarted_five_times_while_short_jobs_finish_loses_no_report(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin that only offloads and a target running 10 ms jobs, four at a time; the
    # origin's reassignment grace outlasts the target's restarts (a reassignment would explain
    # more executions than the kills; test_a_target_paused_... covers that path)
    runs_file = tmp_path / "runs.txt"
    origin = create(nodes, "origin", settings={"offload.reassign_grace_s": 60}).start()
    target = create(nodes, "w1", seeds=[origin], consumers=[CONSUMER], settings={"jobs.max_parallel": 4})
    target.start()
    wait_views([origin, target], {"origin", "w1"})
    wait_consumes(origin, [target])
    ids = _add(origin, 600, runs_file, sleep_s=0.01)

    # When the target is killed with SIGKILL and restarted five times while the jobs finish
    kills = 0
    for _ in range(5):
        wanted = min(len(runs(runs_file)) + 20, len(ids))

        def ran(n: int = wanted) -> bool:
            return len(runs(runs_file)) >= n

        wait_for(ran, 30.0, "more jobs to run")
        if wanted == len(ids):
            break
        target.kill()
        kills += 1
        target.start()

    # Then every job ends SUCCEEDED at the origin, each with one terminal event; executions
    # beyond one per job are those a kill cut short: the jobs each restart found ACTIVE (its
    # four slots, and a job whose result was still being committed when the next one started)
    assert kills >= 3, "the kills came while jobs were running"
    _all_succeeded(origin, ids, timeout=60.0)
    _ended_once(origin, ids)
    executions: dict[str, int] = {}
    for _pid, job_id, _at in runs(runs_file):
        executions[job_id] = executions.get(job_id, 0) + 1
    assert set(executions) == set(ids)
    logs = [path.read_text() for path in target.log_dir.glob(f"{target.data_dir.name}-run*.log")]
    recovered = [int(n) for text in logs for n in RECOVERED.findall(text)]
    assert len(recovered) <= kills  # a restart that found nothing ACTIVE logs nothing
    assert sum(n - 1 for n in executions.values()) <= sum(recovered)


def test_a_target_paused_past_the_death_timeout_drops_its_reassigned_queued_jobs_unrun(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin that only offloads and worker w1, four slots, holding a queue of its jobs
    runs_file = tmp_path / "runs.txt"
    origin = create(nodes, "origin").start()
    settings = {"jobs.max_parallel": 4}
    w1 = create(nodes, "w1", seeds=[origin], consumers=[CONSUMER], settings=settings).start()
    wait_views([origin, w1], {"origin", "w1"})
    wait_consumes(origin, [w1])
    # (0.5 s jobs: w1 still holds a queue after w2's start, even on a slow machine)
    ids = _add(origin, 48, runs_file, sleep_s=0.5)
    wait_for(lambda: w1.count_jobs(JobState.ACTIVE) > 0, 15.0, "w1 to run the origin's jobs")
    w2 = create(nodes, "w2", seeds=[origin], consumers=[CONSUMER], settings=settings).start()
    wait_views([origin, w2], {"origin", "w1", "w2"})

    # When w1 is paused (SIGSTOP) past the death timeout, the origin moves its jobs to w2 and
    # they all succeed there, then w1 continues (SIGCONT)
    assert w1.process is not None
    pid = w1.process.pid
    w1.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    active = f"SELECT id FROM jobs WHERE state = {int(JobState.ACTIVE)}"
    in_flight = {job_id for (job_id,) in w1.query_journal(active)}  # claims it committed before the stop
    queued = {
        job_id for (job_id,) in w1.query_journal(f"SELECT id FROM jobs WHERE state = {int(JobState.QUEUED)}")
    }
    assert len(queued) >= 10, "w1 held a queue when it was paused"
    try:
        wait_for(lambda: "w1" not in {i.name for i in view(origin).instances}, 15.0, "w1 to be declared dead")
        _all_succeeded(origin, ids, timeout=60.0)
    finally:
        w1.send_signal(signal.SIGCONT)
    wait_for(
        lambda: w1.count_jobs(JobState.QUEUED) == 0 and w1.count_jobs(JobState.ACTIVE) == 0,
        15.0,
        "w1 to settle its queue",
    )

    # Then w1 started none of its queued jobs: it asked the origin first and dropped them unrun;
    # only jobs in flight at the pause (claimed before it) may have started after it
    started_after_pause = {job_id for p, job_id, at in runs(runs_file) if p == pid and at >= paused_at}
    assert started_after_pause <= in_flight
    dropped = {
        job_id for (job_id,) in w1.query_journal(f"SELECT id FROM jobs WHERE state = {int(JobState.DROPPED)}")
    }
    assert dropped == queued, "w1's queue at the pause was dropped, not run"
    _ended_once(origin, ids)


def test_reconcile_answers_only_a_jobs_origin_or_target_and_refuses_bad_questions(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin whose job runs on w1, and another member of the cluster
    origin, (w1,) = start_cluster(nodes, "consumers:block_until_released", workers=1)
    release = tmp_path / "release"
    request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC, release_file=str(release))])
    (job_id,) = origin.stub.AddJobs(request).job_ids
    wait_for_state(origin.stub, job_id, jobs_pb2.JOB_STATE_ACTIVE)
    wait_for(lambda: w1.count_jobs(JobState.ACTIVE) == 1, 10.0, "the job to run on w1")
    (epoch,) = w1.query_journal("SELECT epoch FROM jobs WHERE id = ?", (job_id,))[0]
    mallory = a_member(nodes, MALLORY)
    asked = transfer_pb2.ReconcileJob(job_id=job_id, epoch=epoch, state=jobs_pb2.JOB_STATE_QUEUED)

    def ask(
        node: NodeProcess, role: int, *jobs: transfer_pb2.ReconcileJob, sender: str = MALLORY
    ) -> list[int]:
        channel = mallory.create_sync_channel(node.address)
        try:
            stub = transfer_pb2_grpc.TransferServiceStub(channel)
            question = transfer_pb2.ReconcileRequest(sender_id=sender, role=role, jobs=jobs)  # type: ignore[arg-type]
            return [a.status for a in stub.Reconcile(question, timeout=10).answers]
        finally:
            channel.close()

    # When the member asks w1 as if it were the job's origin, and the origin as if it were its target
    as_origin = ask(w1, transfer_pb2.RECONCILE_ROLE_ORIGIN, asked)
    as_target = ask(origin, transfer_pb2.RECONCILE_ROLE_TARGET, asked)

    # Then neither tells it anything it could use: unknown at w1, not its job at the origin
    assert as_origin == [transfer_pb2.RECONCILE_STATUS_UNKNOWN]
    assert as_target == [transfer_pb2.RECONCILE_STATUS_REASSIGNED]
    assert not w1.query_journal("SELECT 1 FROM outbox WHERE peer = ?", (MALLORY,)), "no report went to it"

    # And speaking in the origin's name or asking malformed questions is refused with a clear status
    with pytest.raises(grpc.RpcError) as refused:
        ask(w1, transfer_pb2.RECONCILE_ROLE_ORIGIN, asked, sender=origin.instance_id)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = {
        "role": (transfer_pb2.RECONCILE_ROLE_UNSPECIFIED, [asked]),
        "jobs (count)": (transfer_pb2.RECONCILE_ROLE_ORIGIN, []),
        "epoch": (
            transfer_pb2.RECONCILE_ROLE_ORIGIN,
            [transfer_pb2.ReconcileJob(job_id=job_id, epoch=2**63 - 1)],
        ),
        "asked twice": (transfer_pb2.RECONCILE_ROLE_ORIGIN, [asked, asked]),
        "job_id": (transfer_pb2.RECONCILE_ROLE_ORIGIN, [transfer_pb2.ReconcileJob(job_id="", epoch=1)]),
    }
    for field, (role, jobs) in bad.items():
        with pytest.raises(grpc.RpcError) as invalid:
            ask(w1, role, *jobs)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (invalid.value.details() or ""), field
    too_many = [
        transfer_pb2.ReconcileJob(job_id=f"j{n}", epoch=1, state=jobs_pb2.JOB_STATE_QUEUED)
        for n in range(1001)
    ]
    with pytest.raises(grpc.RpcError) as invalid:
        ask(w1, transfer_pb2.RECONCILE_ROLE_ORIGIN, *too_many)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # And the job still runs at w1 for its origin, and ends there once released
    assert w1.count_jobs(JobState.ACTIVE) == 1
    release.touch()
    wait_for_state(origin.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    _ended_once(origin, [job_id])
