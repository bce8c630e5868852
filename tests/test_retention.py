"""History retention: automatic purge by age, count and state, PurgeJobs, and FindJobs afterwards."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2

from node.config import NodeConfig
from node.errors import ConfigError
from tests.support.job_calls import add_job, find_all, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for

S = jobs_pb2
CONSUMERS = [
    "keep/ok/**=consumers:succeed",
    "keep/bad/**=consumers:cancel",
    "keep/hopeless/**=consumers:fail_always",
    "keep/echo/**=consumers:log_lines",
]


def ids_in(node: NodeProcess, query_type: int, topic: str = "") -> list[str]:
    return [j.id for j in find_all(node.stub, S.FindJobsRequest(type=query_type, topic=topic))]  # type: ignore[arg-type]


def run(node: NodeProcess, topic: str, state: int, **props: object) -> str:
    job_id = add_job(node.stub, topic, **props)  # type: ignore[arg-type]
    wait_for_state(node.stub, job_id, state)
    return job_id


def orphans(node: NodeProcess) -> list[tuple[object, ...]]:
    """Payload and log rows whose job is gone."""
    return node.query_journal(
        "SELECT 'payload', job_seq FROM payloads WHERE job_seq NOT IN (SELECT seq FROM jobs) "
        "UNION ALL SELECT 'log', job_seq FROM job_log WHERE job_seq NOT IN (SELECT seq FROM jobs)"
    )


def test_retention_by_state_count_and_state_age_from_the_config(nodes: NodeFactory) -> None:
    # Given a node that keeps 2 SUCCEEDED jobs, ERROR jobs for 0.3 s, everything else for ever
    node = nodes.start(
        "by-state",
        CONSUMERS,
        {
            "jobs.retries": 0,
            "history.state_max_count": "SUCCEEDED=2",
            "history.state_max_age_s": "ERROR=0.3",
        },
    )

    # When jobs finish in each state, one after another
    succeeded = [run(node, "keep/ok/x", S.JOB_STATE_SUCCEEDED, payload=b"in") for _ in range(4)]
    errors = [run(node, "keep/bad/x", S.JOB_STATE_ERROR) for _ in range(2)]
    given_up = run(node, "keep/hopeless/x", S.JOB_STATE_GIVEN_UP)
    waiting = add_job(node.stub, "keep/nobody")

    # Then the two newest SUCCEEDED stay, ERROR jobs go once old enough, the rest stays
    wait_for(lambda: len(ids_in(node, S.QUERY_TYPE_SUCCEEDED)) == 2, what="SUCCEEDED purged to 2")
    assert ids_in(node, S.QUERY_TYPE_SUCCEEDED) == succeeded[-2:]
    wait_for(lambda: ids_in(node, S.QUERY_TYPE_ERROR) == [], what="ERROR jobs purged by age")
    assert ids_in(node, S.QUERY_TYPE_GIVEN_UP) == [given_up]
    assert ids_in(node, S.QUERY_TYPE_QUEUED) == [waiting]
    assert orphans(node) == []
    # And a purged job is gone for good
    error = rpc_error(lambda: node.stub.GetJob(S.GetJobRequest(job_id=errors[0])))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_retention_by_overall_count_and_age(nodes: NodeFactory) -> None:
    # Given a node that keeps at most 3 finished jobs of any state
    node = nodes.start("by-count", CONSUMERS, {"jobs.retries": 0, "history.max_count": 3})
    finished = [
        run(node, topic, state)
        for topic, state in [
            ("keep/ok/a", S.JOB_STATE_SUCCEEDED),
            ("keep/bad/a", S.JOB_STATE_ERROR),
            ("keep/ok/b", S.JOB_STATE_SUCCEEDED),
            ("keep/hopeless/a", S.JOB_STATE_GIVEN_UP),
            ("keep/ok/c", S.JOB_STATE_SUCCEEDED),
        ]
    ]

    wait_for(lambda: len(ids_in(node, S.QUERY_TYPE_HISTORY)) == 3, what="history purged to 3")
    assert ids_in(node, S.QUERY_TYPE_HISTORY) == finished[-3:]

    # And one that keeps finished jobs for 0.3 s only
    aged = nodes.start("by-age", CONSUMERS, {"history.max_age_s": 0.3})
    run(aged, "keep/ok/a", S.JOB_STATE_SUCCEEDED)
    waiting = add_job(aged.stub, "keep/nobody")
    wait_for(lambda: ids_in(aged, S.QUERY_TYPE_HISTORY) == [], what="history purged by age")
    assert ids_in(aged, S.QUERY_TYPE_ALL) == [waiting]


@pytest.mark.parametrize(
    "settings",
    [
        {"history.max_age_s": -1},
        {"history.max_age_s": "inf"},
        {"history.max_count": -1},
        {"history.state_max_count": "SUCCEEDED=-5"},
        {"history.state_max_age_s": "QUEUED=10"},
        {"history.state_max_age_s": "ERROR=nan"},
        {"events.max_count": -1},
        {"events.max_age_s": -0.5},
    ],
    ids=lambda settings: "-".join(f"{k}={v}" for k, v in settings.items()),
)
def test_invalid_retention_settings_are_refused(tmp_path: Path, settings: dict[str, object]) -> None:
    # A negative age would put the cutoff in the future and purge the whole history
    with pytest.raises(ConfigError) as raised:
        NodeConfig.for_tests(tmp_path).with_overrides(settings)

    assert next(iter(settings)) in str(raised.value)


def test_purge_jobs_by_state_age_and_count_then_find_jobs_still_works(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a history of many jobs in several states, and a queued job
    node = nodes.start("purger", CONSUMERS, {"jobs.retries": 0})
    many = list(
        node.stub.AddJobs(
            S.AddJobsRequest(jobs=[new_job("keep/echo/x", payload=b"p", lines=2, n=i) for i in range(600)])
        ).job_ids
    )
    errors = [run(node, "keep/bad/x", S.JOB_STATE_ERROR) for _ in range(3)]
    waiting = add_job(node.stub, "keep/nobody")
    stopped = add_job(node.stub, "keep/nobody")
    node.stub.StopJob(S.StopJobRequest(job_id=stopped))
    wait_for(lambda: len(ids_in(node, S.QUERY_TYPE_SUCCEEDED)) == 600, what="600 jobs to succeed")

    def purge(**fields: object) -> int:
        return int(node.stub.PurgeJobs(S.PurgeJobsRequest(**fields)).purged)  # type: ignore[arg-type]

    assert ids_in(node, S.QUERY_TYPE_ERROR) == errors
    # Nothing finished more than an hour ago
    assert purge(older_than=Duration(seconds=3600)) == 0
    # One state
    assert purge(states=[S.JOB_STATE_ERROR]) == 3
    assert ids_in(node, S.QUERY_TYPE_ERROR) == []
    # One state, keeping its newest: those added last (ids sort in creation order)
    by_creation = sorted(j.id for j in find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_SUCCEEDED)))
    assert purge(states=[S.JOB_STATE_SUCCEEDED], keep_newest=250) == 350
    kept = ids_in(node, S.QUERY_TYPE_SUCCEEDED)
    assert set(kept) == set(by_creation[-250:])
    assert orphans(node) == []

    # FindJobs pages through what is left, with the right totals, newest first too
    page = node.stub.FindJobs(S.FindJobsRequest(type=S.QUERY_TYPE_HISTORY, page_size=100))
    assert (len(page.jobs), page.total_size) == (100, 251)
    assert [
        j.id for j in find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_HISTORY, page_size=100))
    ] == sorted([*kept, stopped])
    newest = find_all(
        node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_SUCCEEDED, page_size=64, newest_first=True)
    )
    assert [j.id for j in newest] == sorted(kept, reverse=True)
    assert set(kept) <= set(many)

    # Everything finished, whatever its state; queued jobs stay
    assert purge() == 251
    assert ids_in(node, S.QUERY_TYPE_ALL) == [waiting]
    assert orphans(node) == []
    assert node.query_journal("SELECT count(*) FROM payloads UNION ALL SELECT count(*) FROM job_log") == [
        (0,),
        (0,),
    ]


def test_purge_jobs_refuses_bad_input(nodes: NodeFactory) -> None:
    node = nodes.start("purge-errors", CONSUMERS)
    done = run(node, "keep/ok/x", S.JOB_STATE_SUCCEEDED)
    cases = [
        (S.PurgeJobsRequest(states=[S.JOB_STATE_QUEUED]), "states[0] is 1"),
        (S.PurgeJobsRequest(states=[S.JOB_STATE_SUCCEEDED, S.JOB_STATE_ACTIVE]), "states[1] is 2"),
        (S.PurgeJobsRequest(states=[99]), "states[0] is 99"),  # type: ignore[list-item]
        (S.PurgeJobsRequest(keep_newest=-1), "keep_newest"),
        (S.PurgeJobsRequest(older_than=Duration(seconds=-5)), "older_than"),
        # Beyond what a Duration may hold: refused, not an overflow inside the node
        (
            S.PurgeJobsRequest(older_than=Duration(seconds=2**63 - 1)),
            "older_than (seconds 9223372036854775807",
        ),
        (
            S.PurgeJobsRequest(older_than=Duration(seconds=5, nanos=-1)),
            "is not a valid google.protobuf.Duration",
        ),
    ]
    for request, fragment in cases:
        error = rpc_error(lambda request=request: node.stub.PurgeJobs(request))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in (error.details() or "")

    assert ids_in(node, S.QUERY_TYPE_HISTORY) == [done], "nothing was purged"
