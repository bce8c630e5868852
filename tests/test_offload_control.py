"""StopJob and RemoveJob at the origin of an offloaded job reach its target: a cooperative consumer
there sees is_stopped(), the job ends STOPPED or DROPPED at the origin, and a late result is fenced.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2, queues_pb2

from tests.support.job_calls import wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.topology import create, start_all, view, wait_views
from tests.support.waiting import wait_for

COOP = "offload/coop"
STUBBORN = "offload/stubborn"
STOPPED = jobs_pb2.JOB_STATE_STOPPED
DROPPED = jobs_pb2.JOB_STATE_DROPPED
ACTIVE = jobs_pb2.JOB_STATE_ACTIVE


def _cluster(nodes: NodeFactory) -> tuple[NodeProcess, NodeProcess]:
    origin = create(nodes, "origin").start()
    worker = create(
        nodes,
        "w1",
        seeds=[origin],
        consumers=[f"{COOP}=consumers:block_until_released", f"{STUBBORN}=consumers:block_ignoring_stop"],
    )
    start_all(worker)
    wait_views([origin, worker], {"origin", "w1"})

    def ready() -> bool:
        return any(
            i.id == worker.instance_id
            and COOP in i.properties.get("jobmesh.topics", "")
            and "jobmesh.capacity" in i.properties
            for i in view(origin).instances
        )

    wait_for(ready, 10.0, "the origin to see the worker's topics and capacity")
    return origin, worker


def _add(origin: NodeProcess, topic: str, tmp: Path, name: str) -> str:
    files = {
        f"{kind}_file": str(tmp / f"{name}.{kind}") for kind in ("started", "stopped", "release", "attempts")
    }
    job = origin.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(topic, b"", **files))).job
    assert job.target_instance, "the job is offloaded when it is added"
    return str(job.id)


def _worker_state(worker: NodeProcess, job_id: str) -> int | None:
    rows = worker.query_journal("SELECT state FROM jobs WHERE id = ?", (job_id,))
    return int(rows[0][0]) if rows else None


def test_stop_and_remove_at_the_origin_reach_the_target_and_end_the_job_there(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    origin, worker = _cluster(nodes)

    # A running job, stopped at the origin: the worker's consumer sees the stop, the job ends STOPPED
    stopped_id = _add(origin, COOP, tmp_path, "a")
    wait_for_state(origin.stub, stopped_id, ACTIVE, timeout=10.0)
    origin.stub.StopJob(jobs_pb2.StopJobRequest(job_id=stopped_id))
    job = wait_for_state(origin.stub, stopped_id, STOPPED, timeout=10.0)
    assert job.target_instance == worker.instance_id
    assert (tmp_path / "a.stopped").exists(), "the consumer on the worker saw is_stopped()"
    wait_for(
        lambda: _worker_state(worker, stopped_id) == STOPPED, 5.0, "the job to end STOPPED on the worker"
    )

    # A running job, removed at the origin: DROPPED at once there, dropped and stopped on the worker
    removed_id = _add(origin, COOP, tmp_path, "b")
    wait_for_state(origin.stub, removed_id, ACTIVE, timeout=10.0)
    response = origin.stub.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=removed_id))
    assert response.job.state == DROPPED
    wait_for(
        lambda: (tmp_path / "b.stopped").exists(), 10.0, "the consumer on the worker to see is_stopped()"
    )
    wait_for(lambda: _worker_state(worker, removed_id) == DROPPED, 5.0, "the job to be DROPPED on the worker")

    # A consumer that ignores the stop: removed at the origin, its late result changes nothing
    stubborn_id = _add(origin, STUBBORN, tmp_path, "c")
    wait_for_state(origin.stub, stubborn_id, ACTIVE, timeout=10.0)
    origin.stub.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=stubborn_id))
    wait_for(
        lambda: _worker_state(worker, stubborn_id) == DROPPED, 10.0, "the job to be DROPPED on the worker"
    )
    (tmp_path / "c.release").touch()
    time.sleep(1.0)
    assert wait_for_state(origin.stub, stubborn_id, DROPPED).state == DROPPED
    assert _worker_state(worker, stubborn_id) == DROPPED

    # A job still queued on the worker (suspended queue), stopped at the origin: it never runs
    worker.queues.SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))
    queued_id = _add(origin, COOP, tmp_path, "d")
    wait_for(lambda: _worker_state(worker, queued_id) == 1, 10.0, "the job to reach the worker")
    assert origin.stub.StopJob(jobs_pb2.StopJobRequest(job_id=queued_id)).job.state == STOPPED
    wait_for(lambda: _worker_state(worker, queued_id) == STOPPED, 10.0, "the job to be STOPPED on the worker")
    worker.queues.ResumeQueue(queues_pb2.ResumeQueueRequest(name="main"))
    time.sleep(0.5)
    assert not (tmp_path / "d.attempts").exists(), "a job stopped at the origin never runs on the worker"

    # Each job ended once at the origin, in the state the user chose
    ends = origin.query_journal(
        "SELECT job_id, count(*) FROM job_events WHERE type IN (4, 5, 6, 7) GROUP BY job_id"
    )
    assert dict(ends) == {stopped_id: 1, queued_id: 1}  # removals are REMOVED events, not ends
    assert wait_for_state(origin.stub, removed_id, DROPPED).state == DROPPED
