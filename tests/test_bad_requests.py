"""Malformed requests get a precise status and message, and the node keeps serving."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import condition, new_job, prop, raw_timestamp_value, raw_value, template
from tests.support.worker_stream import WorkerStream

S = jobs_pb2
MAX_PAYLOAD = 1000
INVALID = grpc.StatusCode.INVALID_ARGUMENT


node = shared_node("strict", ["bad/ok=consumers:succeed"], {"jobs.max_payload_bytes": MAX_PAYLOAD})


@pytest.fixture
def still_serving(node: NodeProcess) -> Callable[[], None]:
    """Check that the node still adds and runs jobs normally."""

    def check() -> None:
        job_id = add_job(node.stub, "bad/ok", payload=b"fine")
        assert wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED).result_message == "done: bad/ok"

    return check


def with_property(name: str, value: jobs_pb2.PropertyValue, topic: str = "bad/props") -> jobs_pb2.NewJob:
    job = jobs_pb2.NewJob(topic=topic)
    job.properties[name].CopyFrom(value)
    return job


def nested_list() -> jobs_pb2.PropertyValue:
    value = prop(["a"])
    value.list_value.values.add().list_value.values.add().string_value = "deep"
    return value


def empty_in_list() -> jobs_pb2.PropertyValue:
    value = prop([1])
    value.list_value.values.add()
    return value


MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the end of Timestamp's range
MIN_TIMESTAMP_S = -62_135_596_800  # 0001-01-01T00:00:00Z


@dataclass(frozen=True)
class BadJob:
    """A NewJob that must be refused, and what the message must say."""

    id: str
    job: jobs_pb2.NewJob
    fragments: tuple[str, ...]


BAD_JOBS = [
    BadJob("empty-topic", new_job(""), ("topic is empty",)),
    BadJob("double-slash", new_job("a//b"), ("topic 'a//b' is invalid",)),
    BadJob("only-slashes", new_job("//"), ("'//'", "invalid")),
    BadJob("space", new_job("a b"), ("'a b'", "letters, digits")),
    BadJob("leading-slash", new_job("/a/b"), ("'/a/b'", "invalid")),
    BadJob("trailing-slash", new_job("a/b/"), ("'a/b/'", "invalid")),
    BadJob("wildcard", new_job("a/*"), ("'a/*'", "invalid")),
    BadJob("too-long", new_job("t" * 513), ("513 characters", "limit is 512")),
    BadJob(
        "payload-too-big", new_job("bad/x", payload=b"x" * (MAX_PAYLOAD + 1)), ("1001 bytes", "limit is 1000")
    ),
    BadJob("empty-value", with_property("p", jobs_pb2.PropertyValue()), ("['p']", "no value is set")),
    BadJob("nested-list", with_property("p", nested_list()), ("['p'][1]", "cannot be nested")),
    BadJob("empty-value-in-list", with_property("p", empty_in_list()), ("['p'][1]", "no value is set")),
    BadJob("nan", with_property("p", raw_value(double_value=float("nan"))), ("['p']", "not finite")),
    BadJob("infinity", with_property("p", raw_value(double_value=float("-inf"))), ("['p']", "not finite")),
    BadJob(
        "timestamp-after-9999",
        with_property("t", raw_timestamp_value(MAX_TIMESTAMP_S + 1)),
        ("['t']", "range"),
    ),
    BadJob(
        "timestamp-before-0001",
        with_property("t", raw_timestamp_value(MIN_TIMESTAMP_S - 1)),
        ("['t']", "range"),
    ),
    BadJob("timestamp-negative-nanos", with_property("t", raw_timestamp_value(5, -1)), ("['t']", "nanos")),
    BadJob("timestamp-nanos-overflow", with_property("t", raw_timestamp_value(5, 10**9)), ("['t']", "nanos")),
    BadJob("name-with-space", with_property("bad name", prop(1)), ("'bad name'", "is invalid")),
    BadJob("name-starting-with-digit", with_property("1st", prop(1)), ("'1st'", "is invalid")),
    BadJob("empty-name", with_property("", prop(1)), ("''", "is invalid")),
    BadJob("name-too-long", with_property("n" * 129, prop(1)), ("at most 128",)),
]


@pytest.mark.parametrize("bad", BAD_JOBS, ids=[b.id for b in BAD_JOBS])
def test_add_job_refuses_an_invalid_job_with_a_message_naming_the_field(
    node: NodeProcess, still_serving: Callable[[], None], bad: BadJob
) -> None:
    error = rpc_error(lambda: node.stub.AddJob(S.AddJobRequest(job=bad.job)))

    assert error.code() == INVALID, error.details()
    assert error.details().startswith("job."), error.details()
    for fragment in bad.fragments:
        assert fragment in error.details()
    still_serving()


@pytest.mark.parametrize("position", [0, 2])
@pytest.mark.parametrize("bad", BAD_JOBS[:1] + BAD_JOBS[8:10], ids=lambda b: b.id)
def test_add_jobs_with_one_invalid_job_adds_none_and_names_it(
    node: NodeProcess, still_serving: Callable[[], None], bad: BadJob, position: int
) -> None:
    # Given a batch of good jobs with one bad job at `position`
    topic = f"bad/batch-{bad.id}-{position}"
    jobs = [new_job(topic, i=i) for i in range(3)]
    jobs[position] = bad.job

    # When it is added
    error = rpc_error(lambda: node.stub.AddJobs(S.AddJobsRequest(jobs=jobs)))

    # Then the call fails naming jobs[position], and none of the good jobs was added
    assert error.code() == INVALID
    assert error.details().startswith(f"jobs[{position}]."), error.details()
    assert node.stub.FindJobs(S.FindJobsRequest(topic=topic)).total_size == 0
    still_serving()


def test_payload_at_the_limit_is_accepted(node: NodeProcess) -> None:
    job_id = add_job(node.stub, "bad/limit", payload=b"y" * MAX_PAYLOAD)

    assert get_job(node.stub, job_id, include_payloads=True).payload == b"y" * MAX_PAYLOAD


def test_add_job_without_a_job_is_invalid(node: NodeProcess, still_serving: Callable[[], None]) -> None:
    error = rpc_error(lambda: node.stub.AddJob(S.AddJobRequest()))

    assert error.code() == INVALID
    assert "job is missing" in error.details()
    still_serving()


def test_add_jobs_over_the_batch_limit_is_resource_exhausted(
    node: NodeProcess, still_serving: Callable[[], None]
) -> None:
    jobs = [jobs_pb2.NewJob(topic="bad/too-many")] * 10_001

    error = rpc_error(lambda: node.stub.AddJobs(S.AddJobsRequest(jobs=jobs)))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "10001 jobs in one call" in error.details()
    assert "at most 10000" in error.details()
    assert node.stub.FindJobs(S.FindJobsRequest(topic="bad/too-many")).total_size == 0
    still_serving()


def test_query_at_the_template_limits_is_served(node: NodeProcess) -> None:
    # 256 templates, or 256 conditions in one template, are the most a query may have
    many_templates = [template(condition("n", "=", i)) for i in range(256)]
    many_conditions = [template(*[condition("n", ">", i) for i in range(256)])]

    for templates in (many_templates, many_conditions):
        response = node.stub.FindJobs(S.FindJobsRequest(topic="bad/limits", templates=templates))
        assert response.total_size == 0


def test_empty_add_jobs_adds_nothing(node: NodeProcess) -> None:
    assert list(node.stub.AddJobs(S.AddJobsRequest()).job_ids) == []


@pytest.mark.parametrize("method", ["GetJob", "StopJob", "RemoveJob", "RetryJob"])
def test_empty_job_id_is_invalid(node: NodeProcess, still_serving: Callable[[], None], method: str) -> None:
    request_type = getattr(S, f"{method}Request")

    error = rpc_error(lambda: getattr(node.stub, method)(request_type(job_id="")))

    assert error.code() == INVALID
    assert "job_id is empty" in error.details()
    still_serving()


def test_unknown_job_id_is_not_found_and_named(node: NodeProcess, still_serving: Callable[[], None]) -> None:
    error = rpc_error(lambda: get_job(node.stub, "no-such-job"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-job'" in error.details()
    still_serving()


def page_token(content: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(content).encode()).decode()


def malformed(cond: jobs_pb2.PropertyCondition) -> list[jobs_pb2.PropertyTemplate]:
    return [template(condition("ok", "=", 1)), template(condition("ok", "=", 2), cond)]


BAD_QUERIES: list[tuple[str, jobs_pb2.FindJobsRequest, tuple[str, ...]]] = [
    (
        "unspecified-operator",
        S.FindJobsRequest(templates=malformed(S.PropertyCondition(name="n", value=prop(1)))),
        ("templates[1].conditions[1].operator", "unspecified"),
    ),
    (
        "unknown-operator",
        S.FindJobsRequest(
            templates=malformed(
                S.PropertyCondition(name="n", operator=99, value=prop(1))  # type: ignore[arg-type]
            )
        ),
        ("templates[1].conditions[1].operator", "unknown (99)"),
    ),
    (
        "missing-value",
        S.FindJobsRequest(
            templates=malformed(S.PropertyCondition(name="n", operator=S.COMPARISON_OPERATOR_EQUAL))
        ),
        ("templates[1].conditions[1].value is missing",),
    ),
    (
        "empty-value",
        S.FindJobsRequest(
            templates=malformed(
                S.PropertyCondition(name="n", operator=S.COMPARISON_OPERATOR_EQUAL, value=S.PropertyValue())
            )
        ),
        ("templates[1].conditions[1].value", "no value is set"),
    ),
    (
        "less-than-bool",
        S.FindJobsRequest(templates=malformed(condition("flag", "<", True))),
        ("templates[1].conditions[1]", "operator < needs a string, number or timestamp"),
    ),
    (
        "greater-than-bytes",
        S.FindJobsRequest(templates=malformed(condition("raw", ">", b"x"))),
        ("operator > needs",),
    ),
    (
        "less-than-list",
        S.FindJobsRequest(templates=malformed(condition("tags", "<=", ["a"]))),
        ("operator <= needs",),
    ),
    (
        "nan-value",
        S.FindJobsRequest(templates=malformed(condition("n", "=", raw_value(double_value=float("nan"))))),
        ("templates[1].conditions[1].value", "not finite"),
    ),
    (
        "invalid-name",
        S.FindJobsRequest(templates=malformed(condition("a b", "=", 1))),
        ("templates[1].conditions[1].name", "'a b'"),
    ),
    (
        "timestamp-out-of-range",
        S.FindJobsRequest(
            templates=malformed(
                S.PropertyCondition(
                    name="t", operator=S.COMPARISON_OPERATOR_LESS, value=raw_timestamp_value(10**15)
                )
            )
        ),
        ("templates[1].conditions[1].value", "range"),
    ),
    (
        "too-many-templates",
        S.FindJobsRequest(templates=[template(condition("n", "=", i)) for i in range(1000)]),
        ("templates: 1000 templates", "at most 256"),
    ),
    (
        "too-many-conditions",
        S.FindJobsRequest(templates=[template(*[condition("n", ">", i) for i in range(1000)])]),
        ("templates: 1000 conditions in all", "at most 256"),
    ),
    ("negative-page-size", S.FindJobsRequest(page_size=-1), ("page_size -1 is out of range",)),
    ("huge-page-size", S.FindJobsRequest(page_size=10_001), ("page_size 10001 is out of range",)),
    ("unknown-query-type", S.FindJobsRequest(type=42), ("type 42",)),  # type: ignore[arg-type]
    ("garbage-page-token", S.FindJobsRequest(page_token="not a token!"), ("page_token", "malformed")),
    ("base64-of-junk-page-token", S.FindJobsRequest(page_token="aGVsbG8="), ("page_token", "malformed")),
    ("page-token-of-wrong-json", S.FindJobsRequest(page_token=page_token([1])), ("page_token", "malformed")),
    ("page-token-with-text-seq", S.FindJobsRequest(page_token=page_token({"after": "x"})), ("page_token",)),
    ("page-token-with-bool-seq", S.FindJobsRequest(page_token=page_token({"after": True})), ("page_token",)),
    ("page-token-beyond-int64", S.FindJobsRequest(page_token=page_token({"after": 2**70})), ("page_token",)),
]


@pytest.mark.parametrize(
    ("request_", "fragments"), [q[1:] for q in BAD_QUERIES], ids=[q[0] for q in BAD_QUERIES]
)
def test_find_jobs_refuses_a_malformed_query_with_a_message_naming_the_field(
    node: NodeProcess,
    still_serving: Callable[[], None],
    request_: jobs_pb2.FindJobsRequest,
    fragments: tuple[str, ...],
) -> None:
    error = rpc_error(lambda: node.stub.FindJobs(request_))

    assert error.code() == INVALID, error.details()
    for fragment in fragments:
        assert fragment in error.details()
    still_serving()


def test_valid_page_token_from_a_response_is_accepted(node: NodeProcess) -> None:
    node.stub.AddJobs(S.AddJobsRequest(jobs=[new_job("bad/paged") for _ in range(2)]))
    first = node.stub.FindJobs(S.FindJobsRequest(topic="bad/paged", page_size=1))

    second = node.stub.FindJobs(
        S.FindJobsRequest(topic="bad/paged", page_size=1, page_token=first.next_page_token)
    )

    assert len(second.jobs) == 1
    assert second.jobs[0].id != first.jobs[0].id


def test_oversized_properties_are_refused(nodes: NodeFactory) -> None:
    small = nodes.start("small-props", settings={"jobs.max_properties_bytes": 64})

    error = rpc_error(lambda: small.stub.AddJob(S.AddJobRequest(job=new_job("p/x", text="z" * 100))))

    assert error.code() == INVALID
    assert "job.properties" in error.details()
    assert "the limit is 64" in error.details()
    assert add_job(small.stub, "p/x", text="short")


def test_a_worker_output_over_the_payload_limit_ends_the_job_in_error(node: NodeProcess) -> None:
    # Given a worker on a node whose payload limit is 1000 bytes
    worker = WorkerStream.connect(node.channel, "bad/output/**", chunked_payloads=True)
    job_id = add_job(node.stub, "bad/output/job")
    # When it succeeds with a larger output
    worker.result(worker.take(job_id), output_payload=b"o" * (MAX_PAYLOAD + 1))
    # Then the job ends in ERROR saying why, without the output; the worker stays connected
    job = wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_ERROR)
    assert "output payload is 1001 bytes" in job.result_message
    assert "jobs.max_payload_bytes" in job.result_message
    assert job.output_payload_size == 0
    # And an output at the limit is kept
    other = add_job(node.stub, "bad/output/job")
    worker.result(worker.take(other), output_payload=b"o" * MAX_PAYLOAD)
    assert wait_for_state(node.stub, other, jobs_pb2.JOB_STATE_SUCCEEDED).output_payload_size == MAX_PAYLOAD
    worker.cancel()
