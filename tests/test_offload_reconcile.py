"""Reconciliation and the target's lease with real node processes (issue 13 points 3 and 9): a
target killed (-9) and restarted again and again loses no report and ends no job twice; a
target paused (SIGSTOP) past the death timeout drops the queued jobs its origin reassigned
meanwhile instead of running them once it is back (SIGCONT).

Every execution is counted by the `record_run` consumer, which appends a line per start to one
file shared by the node processes (the line names the process).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2

from node import JobState
from tests.consumers import runs
from tests.support.job_calls import find_all
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import TOPIC, wait_consumes
from tests.support.protos import new_job
from tests.support.topology import create, view, wait_views
from tests.support.waiting import wait_for

CONSUMER = "offload/**=consumers:record_run"
FINISHED = 4  # EventType.FINISHED in job_events


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
    # Given an origin that only offloads and a target running 10 ms jobs, four at a time
    runs_file = tmp_path / "runs.txt"
    origin = create(nodes, "origin").start()
    target = create(nodes, "w1", seeds=[origin], consumers=[CONSUMER], settings={"jobs.max_parallel": 4})
    target.start()
    wait_views([origin, target], {"origin", "w1"})
    wait_consumes(origin, [target])
    ids = _add(origin, 600, runs_file, sleep_s=0.01)

    # When the target is killed with SIGKILL and restarted five times while the jobs finish
    kills = 0
    for _ in range(5):
        wanted = min(len(runs(runs_file)) + 20, len(ids))
        wait_for(lambda n=wanted: len(runs(runs_file)) >= n, 30.0, "more jobs to run")
        if wanted == len(ids):
            break
        target.kill()
        kills += 1
        target.start()

    # Then every job ends SUCCEEDED at the origin, each with one terminal event; executions
    # beyond one per job are those a kill cut short (at most the target's four slots per kill)
    assert kills >= 3, "the kills came while jobs were running"
    _all_succeeded(origin, ids, timeout=60.0)
    _ended_once(origin, ids)
    executions: dict[str, int] = {}
    for _pid, job_id, _at in runs(runs_file):
        executions[job_id] = executions.get(job_id, 0) + 1
    assert set(executions) == set(ids)
    assert sum(n - 1 for n in executions.values()) <= 4 * kills


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
    ids = _add(origin, 48, runs_file, sleep_s=0.2)
    wait_for(lambda: w1.count_jobs(JobState.ACTIVE) > 0, 15.0, "w1 to run the origin's jobs")
    assert w1.count_jobs(JobState.QUEUED) >= 20
    w2 = create(nodes, "w2", seeds=[origin], consumers=[CONSUMER], settings=settings).start()
    wait_views([origin, w2], {"origin", "w1", "w2"})

    # When w1 is paused (SIGSTOP) past the death timeout, the origin moves its jobs to w2 and
    # they all succeed there, then w1 continues (SIGCONT)
    pid = w1.process.pid
    w1.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    active = f"SELECT id FROM jobs WHERE state = {int(JobState.ACTIVE)}"
    in_flight = {job_id for (job_id,) in w1.query_journal(active)}  # claims it committed before the stop
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
    assert w1.count_jobs(JobState.DROPPED) >= 20, "w1's queue was dropped, not run"
    _ended_once(origin, ids)
