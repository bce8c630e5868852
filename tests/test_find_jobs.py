"""FindJobs on a real node process: query types, topic filter, property templates, paging."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, find_all, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.protos import PropertyInput, condition, new_job, prop, state_name, template

S = jobs_pb2  # short names in the tables below

CONSUMERS = (
    "find/ok=consumers:succeed",
    "find/hopeless=consumers:fail_always",
    "find/error=consumers:raise_error",
    "find/active=consumers:block_until_released",
)


@dataclass(frozen=True)
class Population:
    """One job in every state, by state; plus the file that releases the ACTIVE one."""

    by_state: dict[jobs_pb2.JobState.ValueType, str]
    release_file: Path


node = shared_node("find", CONSUMERS, {"jobs.retries": 1})


@pytest.fixture(scope="module")
def population(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    """Jobs in each of the seven states (find/idle has no consumer, so its jobs stay QUEUED)."""
    files = tmp_path_factory.mktemp("population")
    stub = node.stub
    release = files / "release"
    started = files / "started"
    by_state = {
        S.JOB_STATE_QUEUED: add_job(stub, "find/idle"),
        S.JOB_STATE_ACTIVE: add_job(
            stub, "find/active", release_file=str(release), started_file=str(started)
        ),
        S.JOB_STATE_SUCCEEDED: add_job(stub, "find/ok"),
        S.JOB_STATE_STOPPED: add_job(stub, "find/idle"),
        S.JOB_STATE_GIVEN_UP: add_job(stub, "find/hopeless"),
        S.JOB_STATE_ERROR: add_job(stub, "find/error"),
        S.JOB_STATE_DROPPED: add_job(stub, "find/idle"),
    }
    stub.StopJob(S.StopJobRequest(job_id=by_state[S.JOB_STATE_STOPPED]))
    stub.RemoveJob(S.RemoveJobRequest(job_id=by_state[S.JOB_STATE_DROPPED]))
    for state, job_id in by_state.items():
        wait_for_state(stub, job_id, state)
    yield Population(by_state, release)
    release.touch()  # let the active job finish so the node stops at once
    wait_for_state(stub, by_state[S.JOB_STATE_ACTIVE], S.JOB_STATE_SUCCEEDED)


QUERY_STATES = {
    S.QUERY_TYPE_UNSPECIFIED: set(range(1, 8)),
    S.QUERY_TYPE_ALL: set(range(1, 8)),
    S.QUERY_TYPE_ACTIVE: {S.JOB_STATE_ACTIVE},
    S.QUERY_TYPE_QUEUED: {S.JOB_STATE_QUEUED},
    S.QUERY_TYPE_HISTORY: {
        S.JOB_STATE_SUCCEEDED,
        S.JOB_STATE_STOPPED,
        S.JOB_STATE_GIVEN_UP,
        S.JOB_STATE_ERROR,
        S.JOB_STATE_DROPPED,
    },
    S.QUERY_TYPE_CANCELLED: {
        S.JOB_STATE_STOPPED,
        S.JOB_STATE_GIVEN_UP,
        S.JOB_STATE_ERROR,
        S.JOB_STATE_DROPPED,
    },
    S.QUERY_TYPE_SUCCEEDED: {S.JOB_STATE_SUCCEEDED},
    S.QUERY_TYPE_STOPPED: {S.JOB_STATE_STOPPED},
    S.QUERY_TYPE_GIVEN_UP: {S.JOB_STATE_GIVEN_UP},
    S.QUERY_TYPE_ERROR: {S.JOB_STATE_ERROR},
    S.QUERY_TYPE_DROPPED: {S.JOB_STATE_DROPPED},
}


@pytest.mark.parametrize(
    ("query_type", "states"),
    list(QUERY_STATES.items()),
    ids=[S.QueryType.Name(q).removeprefix("QUERY_TYPE_") for q in QUERY_STATES],
)
def test_query_type_selects_exactly_its_states(
    node: NodeProcess,
    population: Population,
    query_type: jobs_pb2.QueryType.ValueType,
    states: set[jobs_pb2.JobState.ValueType],
) -> None:
    # Given one job in every state (other tests may add more jobs to this node)
    # When FindJobs asks for one query type
    found = find_all(node.stub, S.FindJobsRequest(type=query_type))

    # Then every job found is in one of the type's states, and of the population
    # exactly the jobs in those states are found
    assert {state_name(j.state) for j in found} <= {state_name(s) for s in states}
    ours = {job.id for job in found} & set(population.by_state.values())
    assert ours == {population.by_state[s] for s in states}


def test_topic_filter_matches_the_exact_topic_only(node: NodeProcess) -> None:
    ids = [add_job(node.stub, "find/topic/a") for _ in range(2)]
    add_job(node.stub, "find/topic/b")
    add_job(node.stub, "find/topic/a/child")

    found = find_all(node.stub, S.FindJobsRequest(type=S.QUERY_TYPE_ALL, topic="find/topic/a"))

    assert [j.id for j in found] == ids
    assert find_all(node.stub, S.FindJobsRequest(topic="find/topic")) == []
    assert find_all(node.stub, S.FindJobsRequest(topic="find/topic/nothing-here")) == []


def test_topic_filter_combines_with_the_query_type(node: NodeProcess) -> None:
    queued = add_job(node.stub, "find/topic-state")
    stopped = add_job(node.stub, "find/topic-state")
    node.stub.StopJob(S.StopJobRequest(job_id=stopped))

    def ids(query_type: jobs_pb2.QueryType.ValueType) -> list[str]:
        return [
            j.id for j in find_all(node.stub, S.FindJobsRequest(type=query_type, topic="find/topic-state"))
        ]

    assert ids(S.QUERY_TYPE_QUEUED) == [queued]
    assert ids(S.QUERY_TYPE_STOPPED) == [stopped]
    assert ids(S.QUERY_TYPE_HISTORY) == [stopped]
    assert ids(S.QUERY_TYPE_ALL) == [queued, stopped]
    assert ids(S.QUERY_TYPE_SUCCEEDED) == []


# --- property templates ----------------------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T1 = datetime(2024, 6, 1, 12, 0, 0, 500, tzinfo=UTC)
T2 = datetime(2025, 1, 1, tzinfo=UTC)

# Label -> properties. The jobs sit on a topic without a consumer, so they stay QUEUED.
TEMPLATE_JOBS: dict[str, dict[str, PropertyInput]] = {
    "a": {"n": 5, "name": "alpha", "when": T0, "flag": True, "tags": ["x", "y"], "blob": b"\x00\x01"},
    "b": {"n": 7.5, "name": "beta", "when": T1, "flag": False, "tags": ["x"], "blob": b"\x02"},
    "c": {"n": 10, "name": "gamma", "when": T2, "tags": [1, 2], "dotted.name": "yes"},
    "d": {"n": "5", "name": "5", "when": "2024-01-01", "flag": "true", "tags": "x", "blob": "AAE="},
    "e": {},
}

C = condition
TEMPLATE_CASES: list[tuple[str, list[jobs_pb2.PropertyTemplate], str]] = [
    ("int equals int, not the string '5'", [template(C("n", "=", 5))], "a"),
    ("double equals int numerically", [template(C("n", "=", 5.0))], "a"),
    ("int equals double numerically", [template(C("n", "=", 10.0))], "c"),
    ("double property equals double", [template(C("n", "=", 7.5))], "b"),
    ("less than, mixed int/double", [template(C("n", "<", 7.5))], "a"),
    ("less or equal", [template(C("n", "<=", 7.5))], "ab"),
    ("greater than int", [template(C("n", ">", 7))], "bc"),
    ("greater or equal", [template(C("n", ">=", 10))], "c"),
    ("greater than a double", [template(C("n", ">", 7.4999))], "bc"),
    ("string equals", [template(C("name", "=", "beta"))], "b"),
    ("string equals a digit string, not the number", [template(C("name", "=", "5"))], "d"),
    ("string greater than", [template(C("name", ">", "alpha"))], "bc"),
    ("string less or equal ('5' sorts before letters)", [template(C("name", "<=", "beta"))], "abd"),
    ("string compares as string, not number", [template(C("n", "=", "5"))], "d"),
    ("timestamp equals", [template(C("when", "=", T1))], "b"),
    ("timestamp less than", [template(C("when", "<", T1))], "a"),
    ("timestamp greater or equal", [template(C("when", ">=", T1))], "bc"),
    ("timestamp ordering ignores strings", [template(C("when", "<=", T2))], "abc"),
    ("bool true", [template(C("flag", "=", True))], "a"),
    ("bool false", [template(C("flag", "=", False))], "b"),
    ("string list equals", [template(C("tags", "=", ["x", "y"]))], "a"),
    ("one-element list is not its scalar", [template(C("tags", "=", ["x"]))], "b"),
    ("list order matters", [template(C("tags", "=", ["y", "x"]))], ""),
    ("int list equals", [template(C("tags", "=", [1, 2]))], "c"),
    ("bytes equals, not their base64 string", [template(C("blob", "=", b"\x00\x01"))], "a"),
    ("other bytes", [template(C("blob", "=", b"\x02"))], "b"),
    ("dotted property name", [template(C("dotted.name", "=", "yes"))], "c"),
    ("missing property matches nothing", [template(C("nope", "=", 1))], ""),
    ("AND within a template", [template(C("n", ">", 1), C("name", "=", "gamma"))], "c"),
    (
        "AND with a false condition",
        [template(C("n", ">", 1), C("name", "=", "alpha"), C("flag", "=", False))],
        "",
    ),
    ("OR across templates", [template(C("name", "=", "alpha")), template(C("name", "=", "gamma"))], "ac"),
    (
        "OR of ANDs",
        [template(C("n", "<", 6), C("flag", "=", True)), template(C("n", ">", 6), C("when", ">", T1))],
        "ac",
    ),
    ("empty template matches everything", [template()], "abcde"),
    ("no templates match everything", [], "abcde"),
]


@pytest.fixture(scope="module")
def template_jobs(node: NodeProcess) -> dict[str, str]:
    """Label -> job id of TEMPLATE_JOBS, added on topic find/templates."""
    response = node.stub.AddJobs(
        S.AddJobsRequest(
            jobs=[
                S.NewJob(topic="find/templates", properties={name: prop(v) for name, v in props.items()})
                for props in TEMPLATE_JOBS.values()
            ]
        )
    )
    return dict(zip(TEMPLATE_JOBS, response.job_ids, strict=True))


@pytest.mark.parametrize(
    ("templates", "expected"), [(t, e) for _, t, e in TEMPLATE_CASES], ids=[d for d, _, _ in TEMPLATE_CASES]
)
def test_property_templates_select_matching_jobs(
    node: NodeProcess,
    template_jobs: dict[str, str],
    templates: list[jobs_pb2.PropertyTemplate],
    expected: str,
) -> None:
    response = node.stub.FindJobs(
        S.FindJobsRequest(type=S.QUERY_TYPE_ALL, topic="find/templates", templates=templates)
    )

    labels = {job_id: label for label, job_id in template_jobs.items()}
    assert "".join(labels[j.id] for j in response.jobs) == expected
    assert response.total_size == len(expected)


def test_timestamp_condition_has_microsecond_precision(
    node: NodeProcess, template_jobs: dict[str, str]
) -> None:
    # T1 has 500 microseconds; one microsecond less is a different instant
    just_before = datetime(2024, 6, 1, 12, 0, 0, 499, tzinfo=UTC)

    def names(op: str, value: datetime) -> list[str]:
        request = S.FindJobsRequest(topic="find/templates", templates=[template(C("when", op, value))])
        return [j.properties["name"].string_value for j in node.stub.FindJobs(request).jobs]

    assert names("=", just_before) == []
    assert names(">", just_before) == ["beta", "gamma"]


# --- paging ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seven_jobs(node: NodeProcess) -> list[str]:
    response = node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("find/paging", index=i) for i in range(7)]))
    return list(response.job_ids)


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
def test_paging_walks_every_job_once_in_order(
    node: NodeProcess, seven_jobs: list[str], newest_first: bool
) -> None:
    # Given seven jobs on one topic
    request = S.FindJobsRequest(
        type=S.QUERY_TYPE_QUEUED, topic="find/paging", page_size=3, newest_first=newest_first
    )
    pages: list[list[str]] = []
    tokens: list[str] = []

    # When the pages of 3 are fetched by following next_page_token
    while True:
        response = node.stub.FindJobs(request)
        assert response.total_size == 7, "total_size counts over all pages"
        pages.append([j.id for j in response.jobs])
        tokens.append(response.next_page_token)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token

    # Then they are 3 + 3 + 1, in creation order (or reversed), each job once
    expected = list(reversed(seven_jobs)) if newest_first else seven_jobs
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == expected
    assert all(tokens[:-1])
    assert tokens[-1] == ""
    assert [int(j.properties["index"].int_value) for j in node.stub.FindJobs(request).jobs] == (
        [0] if newest_first else [6]
    )


def test_a_page_that_exactly_fills_the_page_size_has_no_next_token(
    node: NodeProcess, seven_jobs: list[str]
) -> None:
    response = node.stub.FindJobs(S.FindJobsRequest(topic="find/paging", page_size=7))

    assert [j.id for j in response.jobs] == seven_jobs
    assert response.next_page_token == ""
    assert response.total_size == 7


def test_default_page_size_returns_up_to_100_jobs(node: NodeProcess) -> None:
    node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("find/many") for _ in range(101)]))

    response = node.stub.FindJobs(S.FindJobsRequest(topic="find/many"))

    assert len(response.jobs) == 100
    assert response.total_size == 101
    assert response.next_page_token
    rest = node.stub.FindJobs(S.FindJobsRequest(topic="find/many", page_token=response.next_page_token))
    assert len(rest.jobs) == 1
    assert rest.jobs[0].id not in {j.id for j in response.jobs}


def test_total_size_counts_only_matching_jobs(node: NodeProcess) -> None:
    # Given five jobs of which three match a template
    node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("find/count", even=i % 2 == 0) for i in range(5)]))
    request = S.FindJobsRequest(topic="find/count", page_size=1, templates=[template(C("even", "=", True))])

    # When one page of one job is asked for
    response = node.stub.FindJobs(request)

    # Then total_size counts all three matches
    assert len(response.jobs) == 1
    assert response.total_size == 3
    assert node.stub.FindJobs(S.FindJobsRequest(topic="find/count", page_size=1)).total_size == 5
