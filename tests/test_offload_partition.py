"""Offloading across a partition (netlab hosts): a worker cut off past the death timeout has its
jobs reassigned; when the partition heals, it asks the origin before it runs any more of them
(its lease lapsed) and drops the reassigned ones unrun; the late results of the jobs it was
running at the cut are rejected (fencing).

    subnet 1: origin (h1), w2 (h2)  ──br1── router ──br2──  subnet 2: w1 (h3)
"""

from __future__ import annotations

import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2

from node import JobState
from node.config import OffloadConfig
from tests.consumers import runs
from tests.support.job_calls import find_all
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.netlab import Lab
from tests.support.protos import new_job
from tests.support.topology import start_all, view, wait_views
from tests.support.waiting import wait_for

PORT = 7710
TOPIC = "offload/work"


def _node(lab: Lab, nodes: NodeFactory, name: str, subnet: int, consumer: bool) -> NodeProcess:
    host = lab.add_host(name, subnet)
    args = ["--name", name, "--host", "0.0.0.0", "--port", str(PORT)]
    if name != "origin":
        args += ["--seed", f"10.77.1.1:{PORT}"]
    return nodes.create(
        name,
        consumers=["offload/**=consumers:record_run"] if consumer else [],
        # Four slots: w1 still holds a queue of the origin's jobs when it is cut off.
        settings={"discovery.advertise_addresses": host.address, "jobs.max_parallel": 4},
        extra_args=args,
        netns=host.netns.path,
        dial_host=host.mgmt_address,
    )


def test_a_worker_partitioned_past_the_death_timeout_drops_its_reassigned_jobs_unrun_after_the_heal(
    lab: Lab, nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin and worker w1 across the router, w1 busy with the origin's jobs
    origin = _node(lab, nodes, "origin", 1, consumer=False)
    w2 = _node(lab, nodes, "w2", 1, consumer=True)
    w1 = _node(lab, nodes, "w1", 2, consumer=True)
    origin.start()
    start_all(w1)
    wait_views([origin, w1], {"origin", "w1"}, timeout=15)
    wait_for(
        lambda: any("jobmesh.capacity" in i.properties for i in view(origin).instances if i.name == "w1"),
        10.0,
        "w1's capacity",
    )
    runs_file = tmp_path / "runs.txt"
    request = jobs_pb2.AddJobsRequest(
        jobs=[new_job(TOPIC, sleep_s=0.4, runs_file=str(runs_file)) for _ in range(60)]
    )
    ids = list(origin.stub.AddJobs(request).job_ids)
    wait_for(lambda: w1.count_jobs(JobState.ACTIVE) > 0, 10.0, "w1 to run")
    start_all(w2)

    # When w1 is cut off past the death timeout, then the partition heals
    lab.cut_subnet(2)
    cut_at = time.time()
    assert w1.count_jobs(JobState.QUEUED) >= 10, "w1 holds a queue of the origin's jobs"
    try:
        wait_for(lambda: "w1" not in {i.name for i in view(origin).instances}, 10.0, "w1 to be declared dead")

        def all_moved() -> bool:
            jobs = find_all(origin.stub, jobs_pb2.FindJobsRequest(topic=TOPIC, page_size=1000))
            return all(j.state == jobs_pb2.JOB_STATE_SUCCEEDED for j in jobs) and len(jobs) == 60

        wait_for(all_moved, 30.0, "every job to succeed at the origin while w1 is cut off")
    finally:
        lab.heal_subnet(2)
    wait_views([origin, w1, w2], {"origin", "w1", "w2"}, timeout=20)
    wait_for(lambda: not w1.query_journal("SELECT 1 FROM outbox"), 15.0, "w1 to deliver its stale reports")
    wait_for(
        lambda: w1.count_jobs(JobState.QUEUED) == 0 and w1.count_jobs(JobState.ACTIVE) == 0,
        15.0,
        "w1 to settle its queue",
    )

    # Then every job ended exactly once at the origin; w1's late results changed nothing
    jobs = find_all(origin.stub, jobs_pb2.FindJobsRequest(topic=TOPIC, page_size=1000))
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert all(j.state == jobs_pb2.JOB_STATE_SUCCEEDED for j in jobs)
    finished = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
    assert sorted(n for _, n in finished) == [1] * 60
    moved = [j for j in jobs if j.target_instance == w2.instance_id]
    assert moved, "w1's unfinished jobs were reassigned to w2"
    # and w1 started none of the jobs it held queued once its lease on the origin ran out (it may
    # start jobs for one confirm window after it last heard from the origin, before the cut:
    # the origin reassigns no earlier than its grace after that)
    assert w1.process is not None
    pid = w1.process.pid
    lease_end = cut_at + 2 * OffloadConfig.for_tests().confirm_window_s  # twice: scheduling slack
    assert not [job_id for p, job_id, at in runs(runs_file) if p == pid and at >= lease_end]
    assert w1.count_jobs(JobState.DROPPED) > 0, "w1 dropped the reassigned jobs it held"
