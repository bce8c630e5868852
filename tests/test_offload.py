"""Offloading with real node processes: an origin without a consumer sends jobs to the workers that
consume their topic, mirrors their state and result, and reassigns the jobs of a worker that dies.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2, queues_pb2

from node import JobState
from tests.support.job_calls import find_all, get_job, get_payload
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import TOPIC, start_cluster, wait_consumes
from tests.support.protos import new_job
from tests.support.topology import create, names, start_all, view, wait_views
from tests.support.waiting import wait_for
from tests.support.watching import watch
from tests.support.worker_stream import WorkerStream

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED


def _add(origin: NodeProcess, count: int, **props: float) -> list[str]:
    request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC, b"", **props) for _ in range(count)])
    return list(origin.stub.AddJobs(request).job_ids)


def _all_succeeded(origin: NodeProcess, ids: list[str], timeout: float = 30.0) -> list[jobs_pb2.Job]:
    def done() -> list[jobs_pb2.Job] | None:
        jobs = find_all(
            origin.stub, jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_ALL, topic=TOPIC, page_size=1000)
        )
        mine = [j for j in jobs if j.id in set(ids)]
        return mine if len(mine) == len(ids) and all(j.state == SUCCEEDED for j in mine) else None

    return wait_for(done, timeout, f"{len(ids)} offloaded jobs to succeed at the origin")


def test_origin_with_the_topic_disabled_offloads_2000_jobs_to_two_workers_and_shows_their_results(
    nodes: NodeFactory,
) -> None:
    # Given an origin that has a consumer for the topic but its consumption disabled, and two workers
    origin = create(nodes, "origin", consumers=["offload/**=consumers:succeed"]).start()
    done = origin.cli("topics", "disable", "offload/**", "--node", origin.address)
    assert done.returncode == 0, done.stderr
    workers = [
        create(nodes, f"w{i}", seeds=[origin], consumers=["offload/**=consumers:succeed"]) for i in (1, 2)
    ]
    start_all(*workers)
    wait_views([origin, *workers], {"origin", "w1", "w2"})
    wait_consumes(origin, workers)

    # When 2,000 jobs are added at the origin
    ids = _add(origin, 1000) + _add(origin, 1000)
    jobs = _all_succeeded(origin, ids, timeout=60.0)

    # Then every one succeeded on a worker, exactly once, as the origin records it
    by_worker = {w.instance_id: w for w in workers}
    targets = {j.target_instance for j in jobs}
    assert targets == set(by_worker), f"both workers get jobs: {targets}"
    for target, worker in by_worker.items():
        ran = {row[0] for row in worker.query_journal("SELECT id FROM jobs WHERE state = 3")}
        assert ran == {j.id for j in jobs if j.target_instance == target}
        count = sum(1 for j in jobs if j.target_instance == target)
        assert 500 <= count <= 1500, f"load is spread evenly: {count} of 2000 on one worker"
    assert all(j.result_message == "done: offload/work" for j in jobs)
    finished = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
    assert len(finished) == 2000
    assert all(n == 1 for _, n in finished)
    wait_for(lambda: not origin.query_journal("SELECT 1 FROM outbox"), 5.0, "the origin's outbox to drain")
    wait_for(
        lambda: all(not w.query_journal("SELECT 1 FROM outbox") for w in workers), 5.0, "outboxes to drain"
    )


def test_payload_travels_to_the_worker_and_the_output_comes_back_byte_identical(nodes: NodeFactory) -> None:
    # 20 MB in test-sized chunks of 256 KiB (OffloadConfig.for_tests), both ways
    origin, _workers = start_cluster(nodes, "consumers:echo", workers=1)
    payload = os.urandom(20 * 1024 * 1024)

    (job_id,) = [origin.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(TOPIC, payload))).job.id]
    _all_succeeded(origin, [job_id])

    # Payloads over 1 MiB come with GetPayload, in pieces
    assert get_payload(origin.stub, job_id)[0] == payload
    assert get_payload(origin.stub, job_id, output=True)[0] == b"echo:" + payload


def test_a_topic_nobody_consumes_waits_unassigned_then_runs_when_a_consumer_appears(
    nodes: NodeFactory,
) -> None:
    origin = create(nodes, "origin").start()
    ids = _add(origin, 20)
    time.sleep(0.5)
    assert all(get_job(origin.stub, i).target_instance == "" for i in ids)

    worker = create(nodes, "late", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()
    started = time.monotonic()
    jobs = _all_succeeded(origin, ids, timeout=15.0)

    assert {j.target_instance for j in jobs} == {worker.instance_id}
    assert time.monotonic() - started < 10.0


def test_waiting_jobs_go_to_a_new_worker_before_the_origins_view_settles(nodes: NodeFactory) -> None:
    # Given an origin whose topology events settle only a minute after a change, holding jobs
    # nobody consumes there
    origin = create(nodes, "origin", settings={"discovery.settle_delay_s": 60}).start()
    ids = _add(origin, 20)

    # When a worker for their topic joins
    worker = create(nodes, "late", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()

    # Then it runs them while the origin's settled view still lacks it: placement reads the
    # members as they are, not as the last topology event published them
    jobs = _all_succeeded(origin, ids, timeout=15.0)
    assert {j.target_instance for j in jobs} == {worker.instance_id}
    assert names(view(origin)) == {"origin"}


def test_kill_9_of_a_worker_mid_run_still_ends_every_job_succeeded_exactly_once_at_the_origin(
    nodes: NodeFactory,
) -> None:
    origin, (w1, w2) = start_cluster(nodes, "consumers:sleep_briefly")
    ids = _add(origin, 200, sleep_s=0.02)
    wait_for(lambda: w1.count_jobs(JobState.SUCCEEDED) >= 10, 15.0, "w1 to finish some jobs")

    w1.kill()
    jobs = _all_succeeded(origin, ids, timeout=40.0)

    assert len(jobs) == 200
    finished = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
    assert len(finished) == 200
    assert all(n == 1 for _, n in finished), "no job ends twice"
    assert w2.instance_id in {j.target_instance for j in jobs}


def test_kill_9_of_the_origin_mid_run_and_restart_loses_no_job_and_ends_none_twice(
    nodes: NodeFactory,
) -> None:
    # Given two workers and an origin that joins through them (so it finds them again after a restart)
    w1 = create(nodes, "w1", consumers=["offload/**=consumers:sleep_briefly"]).start()
    w2 = create(nodes, "w2", seeds=[w1], consumers=["offload/**=consumers:sleep_briefly"]).start()
    origin = create(nodes, "origin", seeds=[w1]).start()
    wait_views([origin, w1, w2], {"origin", "w1", "w2"})
    wait_consumes(origin, [w1, w2])
    ids = _add(origin, 300, sleep_s=0.01)
    wait_for(lambda: origin.count_jobs(JobState.SUCCEEDED) >= 20, 15.0, "some jobs to succeed at the origin")

    # When the origin crashes while the workers keep running, and comes back
    origin.kill()
    time.sleep(0.5)
    origin.start()

    # Then every job ends SUCCEEDED at the origin, each exactly once
    jobs = _all_succeeded(origin, ids, timeout=40.0)
    assert len(jobs) == 300
    finished = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
    assert len(finished) == 300
    assert all(n == 1 for _, n in finished)


def test_topic_consumption_set_from_another_node_moves_new_jobs_off_the_origin_and_survives_a_restart(
    nodes: NodeFactory,
) -> None:
    # Given an origin that consumes the topic itself, and a worker that consumes it too
    origin = create(nodes, "origin", consumers=["offload/**=consumers:succeed"]).start()
    worker = create(nodes, "w1", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()
    wait_views([origin, worker], {"origin", "w1"})
    wait_consumes(origin, [worker])
    (local,) = _add(origin, 1)
    assert _all_succeeded(origin, [local])[0].target_instance == origin.instance_id

    # When the origin's consumption of the topic is disabled through the worker's node
    done = worker.cli("topics", "disable", "offload/**", "--instance", "origin", "--node", worker.address)
    assert done.returncode == 0, done.stderr
    wait_for(
        lambda: any(
            i.properties.get("jobmesh.topics.disabled") == "offload/**" for i in view(worker).instances
        ),
        5.0,
        "the setting to be published",
    )

    # Then new jobs go to the worker, and the matrix shows the setting from any node
    ids = _add(origin, 50)
    assert {j.target_instance for j in _all_succeeded(origin, ids)} == {worker.instance_id}
    matrix = worker.cli("topics", "--node", worker.address)
    assert matrix.returncode == 0, matrix.stderr
    lines = matrix.stdout.splitlines()
    assert lines[0].split() == ["TOPIC", "origin", "w1"]
    assert lines[1].split() == ["offload/**", "disabled", "enabled"]

    # And the setting is persisted in the origin's journal
    origin.terminate()
    origin.start()
    wait_for(
        lambda: any(
            i.properties.get("jobmesh.topics.disabled") == "offload/**" for i in view(origin).instances
        ),
        5.0,
        "the setting after a restart",
    )


def test_the_origin_shows_remote_started_progress_log_and_result_events_with_the_target(
    nodes: NodeFactory,
) -> None:
    origin, (worker,) = start_cluster(nodes, "consumers:log_lines", workers=1)

    with watch(origin.channel, after_seq=-1, topics=[TOPIC]) as watcher:
        (job_id,) = [origin.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(TOPIC, lines=3))).job.id]
        events = watcher.until(
            lambda got: any(e.type == jobs_pb2.JOB_EVENT_TYPE_FINISHED for e in got), 15.0, "FINISHED"
        )

    types = [e.type for e in events if e.job_id == job_id]
    assert types[0] == jobs_pb2.JOB_EVENT_TYPE_ADDED
    assert types[-1] == jobs_pb2.JOB_EVENT_TYPE_FINISHED
    remote = [e for e in events if e.type != jobs_pb2.JOB_EVENT_TYPE_ADDED]
    assert all(e.target_instance == worker.instance_id for e in remote)
    job = origin.stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, include_log=True)).job
    assert [line.message for line in job.log] == ["line 1", "line 2", "line 3"]
    assert job.target_instance == worker.instance_id


def test_a_worker_that_stops_consuming_a_topic_hands_its_queued_jobs_back_for_reassignment(
    nodes: NodeFactory,
) -> None:
    # Given jobs offloaded to w1, waiting there in its suspended queue
    origin, (w1,) = start_cluster(nodes, "consumers:succeed", workers=1)
    w1.queues.SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))
    ids = _add(origin, 30)
    wait_for(lambda: w1.count_jobs(JobState.QUEUED) == 30, 10.0, "the jobs to reach w1")
    w2 = create(nodes, "w2", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()
    wait_consumes(origin, [w1, w2])

    # When w1 stops consuming the topic
    done = w1.cli("topics", "disable", "offload/**", "--node", w1.address)
    assert done.returncode == 0, done.stderr

    # Then its queued jobs go back to the origin, which gives them to w2; each ends once
    jobs = _all_succeeded(origin, ids, timeout=20.0)
    assert {j.target_instance for j in jobs} == {w2.instance_id}
    finished = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
    assert sorted(n for _, n in finished) == [1] * 30
    assert w1.count_jobs(JobState.SUCCEEDED) == 0


def test_find_jobs_and_statistics_with_topology_scope_gather_every_instance_listing_each_job_once(
    nodes: NodeFactory,
) -> None:
    # Given jobs offloaded from the origin, and a job added on a worker itself
    origin, (w1, w2) = start_cluster(nodes, "consumers:succeed")
    ids = _add(origin, 40)
    _all_succeeded(origin, ids)
    own = w1.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(TOPIC))).job.id
    wait_for(lambda: get_job(w1.stub, own).state == SUCCEEDED, 10.0, "w1's own job")

    # When any node is asked with topology scope
    request = jobs_pb2.FindJobsRequest(
        type=jobs_pb2.QUERY_TYPE_ALL, topic=TOPIC, page_size=1000, scope=jobs_pb2.QUERY_SCOPE_TOPOLOGY
    )
    found = w2.stub.FindJobs(request)

    # Then every job is listed once, offloaded ones as their origin records them
    assert sorted(j.id for j in found.jobs) == sorted([*ids, own])
    assert found.total_size == 41
    assert all(j.origin_instance == origin.instance_id for j in found.jobs if j.id != own)
    local = w2.stub.FindJobs(
        jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_ALL, topic=TOPIC, page_size=1000)
    )
    assert len(local.jobs) < 41
    stats = origin.stub.GetStatistics(jobs_pb2.GetStatisticsRequest(scope=jobs_pb2.QUERY_SCOPE_TOPOLOGY))
    assert getattr(stats, "global").finished == 41  # counted once, where each job ran


def test_queued_jobs_of_a_suspended_queue_stay_at_the_origin_until_it_is_resumed(nodes: NodeFactory) -> None:
    # Given an origin without a consumer whose main queue is suspended, and a worker
    origin, workers = start_cluster(nodes, "consumers:succeed", workers=1)
    origin.queues.SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))

    # When jobs are added at the origin
    ids = _add(origin, 5)

    # Then none is sent away while the queue is suspended (several assignment rounds pass)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        jobs = [get_job(origin.stub, i) for i in ids]
        assert all(j.state == jobs_pb2.JOB_STATE_QUEUED and not j.target_instance for j in jobs)
        time.sleep(0.1)
    assert not workers[0].query_journal("SELECT 1 FROM jobs")

    # And once it is resumed they run on the worker
    origin.queues.ResumeQueue(queues_pb2.ResumeQueueRequest(name="main"))
    jobs = _all_succeeded(origin, ids)
    assert {j.target_instance for j in jobs} == {workers[0].instance_id}


def test_a_worker_node_whose_consumer_goes_away_hands_its_queued_jobs_back_for_reassignment(
    nodes: NodeFactory,
) -> None:
    # Given jobs offloaded to w1, whose only consumer is a remote worker holding one of them
    origin = create(nodes, "origin").start()
    w1 = create(nodes, "w1", seeds=[origin]).start()
    wait_views([origin, w1], {"origin", "w1"})
    stream = WorkerStream.connect(w1.channel, "offload/**", concurrency=1)
    wait_consumes(origin, [w1])
    ids = _add(origin, 6)
    stream.expect("assignment")
    # (the others wait on w1 for the worker's one slot)
    wait_for(lambda: w1.query_journal("SELECT count(*) FROM jobs")[0][0] == 6, 10.0, "every job to reach w1")

    # When the worker goes away, and another node that consumes the topic appears
    stream.cancel()
    w2 = create(nodes, "w2", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()

    # Then w1 hands every job back and they all end SUCCEEDED at the origin, run by w2
    jobs = _all_succeeded(origin, ids)
    assert {j.target_instance for j in jobs} == {w2.instance_id}


def test_a_restarted_origin_waits_out_its_startup_grace_before_reassigning_a_missing_targets_jobs(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a job running on w1, offloaded by an origin with a 3 s startup grace, and another worker w2
    release = tmp_path / "release"
    w1 = create(nodes, "w1", consumers=["offload/**=consumers:block_until_released"]).start()
    origin = create(nodes, "origin", seeds=[w1], settings={"offload.startup_grace_s": 3.0}).start()
    wait_views([origin, w1], {"origin", "w1"})
    wait_consumes(origin, [w1])
    (job_id,) = _add(origin, 1, release_file=str(release))  # type: ignore[arg-type]
    wait_for(
        lambda: get_job(origin.stub, job_id).state == jobs_pb2.JOB_STATE_ACTIVE, 10.0, "the job to start"
    )
    w2 = create(nodes, "w2", seeds=[origin], consumers=["offload/**=consumers:succeed"]).start()
    wait_views([origin, w1, w2], {"origin", "w1", "w2"})

    # When the origin restarts while w1 is frozen (gone from the view for longer than the
    # reassignment grace, but not longer than the startup grace)
    origin.terminate()
    w1.send_signal(signal.SIGSTOP)
    try:
        origin.restart()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            # Then the job is not moved to w2 meanwhile
            assert get_job(origin.stub, job_id).target_instance == w1.instance_id
            time.sleep(0.1)
    finally:
        w1.send_signal(signal.SIGCONT)

    # And when w1 is back in time, it finishes the job, which ran nowhere else
    release.touch()
    (job,) = _all_succeeded(origin, [job_id])
    assert job.target_instance == w1.instance_id
    assert not w2.query_journal("SELECT 1 FROM jobs WHERE id = ?", (job_id,))
