"""Idempotent add: a client-chosen dedup_key returns the existing job instead of a second one."""

from __future__ import annotations

import threading

import grpc
from jobmesh.v1 import jobs_pb2

from tests.support.fixtures import shared_node
from tests.support.job_calls import find_all, rpc_error, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.protos import new_job

S = jobs_pb2
THREADS = 20


node = shared_node("dedup", ["dedup/done/**=consumers:succeed"])


def keyed(topic: str, key: str, **properties: object) -> jobs_pb2.NewJob:
    job = new_job(topic, **properties)  # type: ignore[arg-type]
    job.dedup_key = key
    return job


def add(node: NodeProcess, job: jobs_pb2.NewJob) -> jobs_pb2.AddJobResponse:
    response: jobs_pb2.AddJobResponse = node.stub.AddJob(S.AddJobRequest(job=job))
    return response


def jobs_of(node: NodeProcess, topic: str) -> list[jobs_pb2.Job]:
    return find_all(node.stub, S.FindJobsRequest(topic=topic))


def test_concurrent_adds_with_one_key_create_exactly_one_job(node: NodeProcess) -> None:
    # Given 20 clients that add "the same" job at the same moment, each with its own properties
    barrier = threading.Barrier(THREADS)
    responses: list[jobs_pb2.AddJobResponse] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        try:
            barrier.wait()
            response = add(node, keyed("dedup/race", "order-42", client=index))
            with lock:
                responses.append(response)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every client gets the same job; exactly one of them created it
    assert errors == []
    assert len({r.job.id for r in responses}) == 1
    assert sorted(r.deduplicated for r in responses) == [False] + [True] * (THREADS - 1)
    (job,) = jobs_of(node, "dedup/race")
    creator = next(r for r in responses if not r.deduplicated)
    assert job.id == creator.job.id
    assert job.dedup_key == "order-42"
    assert job.properties["client"] == creator.job.properties["client"], "the first job's properties are kept"
    assert all(r.job.properties["client"] == creator.job.properties["client"] for r in responses)


def test_concurrent_adds_with_different_keys_each_create_their_job(node: NodeProcess) -> None:
    barrier = threading.Barrier(THREADS)
    responses: list[jobs_pb2.AddJobResponse] = []

    def client(index: int) -> None:
        barrier.wait()
        responses.append(add(node, keyed("dedup/many", f"key-{index % 5}")))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    jobs = jobs_of(node, "dedup/many")
    assert sorted(j.dedup_key for j in jobs) == [f"key-{i}" for i in range(5)]
    assert {r.job.id for r in responses} == {j.id for j in jobs}
    assert sum(not r.deduplicated for r in responses) == 5


def test_add_jobs_deduplicates_within_the_batch_and_against_existing_jobs(node: NodeProcess) -> None:
    existing = add(node, keyed("dedup/batch", "b-old")).job.id

    response = node.stub.AddJobs(
        S.AddJobsRequest(
            jobs=[
                keyed("dedup/batch", "b-new"),
                keyed("dedup/batch", "b-old"),
                keyed("dedup/batch", "b-new"),
                new_job("dedup/batch"),
                new_job("dedup/batch"),
            ]
        )
    )

    ids = list(response.job_ids)
    assert list(response.deduplicated) == [False, True, True, False, False]
    assert ids[1] == existing
    assert ids[2] == ids[0]
    assert len({ids[0], ids[3], ids[4], existing}) == 4, "jobs without a key are never deduplicated"
    assert sorted(j.id for j in jobs_of(node, "dedup/batch")) == sorted({*ids, existing})


def test_a_finished_job_still_deduplicates_until_it_is_deleted(node: NodeProcess) -> None:
    # Given a job with a key that has finished
    first = add(node, keyed("dedup/done/x", "once"))
    wait_for_state(node.stub, first.job.id, S.JOB_STATE_SUCCEEDED)

    # Then adding it again returns the finished job
    again = add(node, keyed("dedup/done/x", "once"))
    assert (again.deduplicated, again.job.id, again.job.state) == (True, first.job.id, S.JOB_STATE_SUCCEEDED)

    # And once it is deleted from history, the key creates a new job
    assert node.stub.RemoveJob(S.RemoveJobRequest(job_id=first.job.id)).deleted
    fresh = add(node, keyed("dedup/done/x", "once"))
    assert not fresh.deduplicated
    assert fresh.job.id != first.job.id


def test_an_overlong_dedup_key_is_refused(node: NodeProcess) -> None:
    error = rpc_error(lambda: add(node, keyed("dedup/long", "k" * 257)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dedup_key has 257 characters" in (error.details() or "")
    assert add(node, keyed("dedup/long", "k" * 256)).job.dedup_key == "k" * 256
