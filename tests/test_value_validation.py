"""Values are checked before they are stored (issue 14 items 2 and 3): INVALID_ARGUMENT naming
the field, for clients and for peers alike, and nothing refused leaves state that breaks a read."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from jobmesh.peer.v1 import transfer_pb2, transfer_pb2_grpc
from jobmesh.v1 import jobs_pb2, queues_pb2, schedules_pb2, topics_pb2, topics_pb2_grpc

from node.transfer.chunks import crc32
from node.transport import Transport
from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.waiting import wait_for
from tests.test_security import a_member

Call = Callable[[NodeProcess], Message]


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    return module_nodes.start("validation", ["ok/topic=consumers:succeed"])


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def token_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def at_rule(seconds: int) -> schedules_pb2.ScheduleRule:
    rule = schedules_pb2.ScheduleRule()
    rule.at.time.seconds = seconds
    return rule


def set_queue(**config: Any) -> Call:
    return lambda n: n.queues.SetQueue(
        queues_pb2.SetQueueRequest(config=queues_pb2.QueueConfig(name="v", topics=["v/**"], **config)),
        timeout=10,
    )


def set_setting(value: int) -> Call:
    request = topics_pb2.SetTopicConsumptionRequest(topic="v/**", setting=value)  # type: ignore[arg-type]
    return lambda n: topics_pb2_grpc.TopicServiceStub(n.channel).SetTopicConsumption(request, timeout=10)


def find(**fields: object) -> Call:
    return lambda n: n.stub.FindJobs(jobs_pb2.FindJobsRequest(**fields), timeout=10)  # type: ignore[arg-type]


CLIENT_CASES: list[tuple[str, Call, str]] = [
    ("huge-max-parallel", set_queue(max_parallel=1e308), "max_parallel is 1e+308"),
    ("huge-ranking-ok-int32-but-retries-negative", set_queue(retries=-2), "retries is -2"),
    ("huge-backoff", set_queue(retry_backoff=1e9), "retry_backoff is 1000000000.0"),
    (
        "too-many-queue-topics",
        lambda n: n.queues.SetQueue(
            queues_pb2.SetQueueRequest(
                config=queues_pb2.QueueConfig(name="v", topics=[f"t{i}" for i in range(300)])
            ),
            timeout=10,
        ),
        "at most 256 topic patterns",
    ),
    (
        "schedule-at-year-10000",
        lambda n: n.schedules.AddSchedule(
            schedules_pb2.AddScheduleRequest(
                name="s", job=jobs_pb2.NewJob(topic="ok/topic"), rules=[at_rule(2**40)]
            ),
            timeout=10,
        ),
        "rules[0].at.time",
    ),
    ("consumption-minus-one", set_setting(-1), "setting -1 is not a known ConsumptionSetting"),
    ("consumption-65", set_setting(65), "setting 65 is not a known ConsumptionSetting"),
    (
        "token-deeply-nested",
        find(page_token=token_of({"list": [[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]})),
        "page_token",
    ),
    (
        "token-nested-past-the-limit",
        find(page_token=base64.urlsafe_b64encode(b"[" * 5000).decode()),
        "page_token",
    ),
    (
        "token-of-another-list",
        find(page_token=token_of({"list": "queues", "after": [1, "a"]})),
        "this list (jobs)",
    ),
    ("token-with-a-huge-seq", find(page_token=token_of({"list": "jobs:0", "after": [2**70]})), "page_token"),
]


@pytest.mark.parametrize(("name", "call", "expected"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_a_value_out_of_range_is_invalid_argument_naming_it(
    node: NodeProcess, name: str, call: Call, expected: str
) -> None:
    error = refusal(lambda: call(node))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert expected in (error.details() or "")


def test_a_refused_queue_is_not_stored_and_every_list_still_reads(node: NodeProcess) -> None:
    refusal(lambda: set_queue(max_parallel=1e308)(node))

    listed = node.queues.ListQueues(queues_pb2.ListQueuesRequest(), timeout=10)

    assert "v" not in [q.config.name for q in listed.queues]


def test_a_find_jobs_token_is_refused_with_another_query(node: NodeProcess) -> None:
    for _ in range(3):
        add_job(node.stub, "ok/topic")
    first = node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1), timeout=10)
    assert first.next_page_token

    same = node.stub.FindJobs(
        jobs_pb2.FindJobsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    other = refusal(
        lambda: node.stub.FindJobs(
            jobs_pb2.FindJobsRequest(topic="ok/topic", page_token=first.next_page_token), timeout=10
        )
    )

    assert first.jobs[0].id not in [j.id for j in same.jobs]
    assert other.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another query" in (other.details() or "")


# --- peer data: the same checks, through the real TransferService ---------------------------


def offloaded(job_id: str, **fields: object) -> transfer_pb2.OffloadedJob:
    values: dict[str, object] = {
        "epoch": 1,
        "topic": "ok/topic",
        "max_retries": 1,
        "created_us": 1_700_000_000_000_000,
    }
    values.update(fields)
    job = transfer_pb2.OffloadedJob(job_id=job_id, **values)  # type: ignore[arg-type]
    job.payload_crc32 = crc32(job.payload)
    return job


@pytest.fixture(scope="module")
def member(module_nodes: NodeFactory) -> Transport:
    """A member of the node's cluster, instance "peer-validation" (only nodes send frames)."""
    return a_member(module_nodes, "peer-validation")


def exchange(
    node: NodeProcess, frame: transfer_pb2.ExchangeRequest, member: Transport
) -> list[transfer_pb2.ExchangeResponse]:
    channel = member.create_sync_channel(node.address)
    try:
        return list(transfer_pb2_grpc.TransferServiceStub(channel).Exchange(iter([frame]), timeout=10))
    finally:
        channel.close()


def report(**fields: object) -> transfer_pb2.JobReport:
    values: dict[str, object] = {
        "job_id": "r1",
        "epoch": 1,
        "report_seq": 1,
        "state": jobs_pb2.JOB_STATE_SUCCEEDED,
    }
    values.update(fields)
    return transfer_pb2.JobReport(**values)  # type: ignore[arg-type]


PEER_CASES: list[tuple[str, transfer_pb2.ExchangeRequest, str]] = [
    ("empty-topic", transfer_pb2.ExchangeRequest(jobs=[offloaded("p1", topic="")]), "jobs[0].topic"),
    (
        "created-at-min-int64",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p2", created_us=-(2**63))]),
        "jobs[0].created_us",
    ),
    (
        "retries-min-int32",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p3", max_retries=-(2**31))]),
        "jobs[0].max_retries",
    ),
    (
        "properties-not-json",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p4", properties_json="{nope")]),
        "jobs[0].properties_json is not valid JSON",
    ),
    (
        "properties-not-the-model",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p5", properties_json='{"a":{"x":1}}')]),
        "jobs[0].properties_json['a']",
    ),
    (
        "properties-bad-name",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p6", properties_json='{"a b":1}')]),
        "property name 'a b'",
    ),
    (
        "properties-nested",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p7", properties_json="[" * 3000)]),
        "not valid JSON",
    ),
    (
        "epoch-max-int64",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p8", epoch=2**63 - 1)]),
        "jobs[0].epoch",
    ),
    (
        "negative-timeout",
        transfer_pb2.ExchangeRequest(jobs=[offloaded("p9", timeout_us=-1)]),
        "jobs[0].timeout",
    ),
    ("report-unknown-state", transfer_pb2.ExchangeRequest(reports=[report(state=99)]), "reports[0].state 99"),
    (
        "report-negative-retries",
        transfer_pb2.ExchangeRequest(reports=[report(retry_count=-5)]),
        "reports[0].retry_count",
    ),
    (
        "report-time-out-of-range",
        transfer_pb2.ExchangeRequest(reports=[report(finished_us=2**62)]),
        "reports[0].finished_us",
    ),
    (
        "no-sender",
        transfer_pb2.ExchangeRequest(sender_id="", jobs=[offloaded("p10")]),
        "may speak only for itself",
    ),
]


@pytest.mark.parametrize(("name", "frame", "expected"), PEER_CASES, ids=[c[0] for c in PEER_CASES])
def test_peer_data_failing_the_client_checks_is_refused_and_not_stored(
    node: NodeProcess, member: Transport, name: str, frame: transfer_pb2.ExchangeRequest, expected: str
) -> None:
    if name != "no-sender":
        frame.sender_id = "peer-validation"
    frame.last_seq = 1

    error = refusal(lambda: exchange(node, frame, member))

    # A frame without a sender is not in the caller's own name: refused before it is read.
    code = grpc.StatusCode.PERMISSION_DENIED if name == "no-sender" else grpc.StatusCode.INVALID_ARGUMENT
    assert error.code() == code, error.details()
    assert expected in (error.details() or "")
    ids = [j.job_id for j in frame.jobs]
    assert node.query_journal(f"SELECT id FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids) == []


def test_valid_peer_data_is_taken_and_every_read_works_after_refusals_and_a_restart(
    node: NodeProcess, member: Transport
) -> None:
    for _, frame, _ in PEER_CASES[:7]:
        frame.sender_id, frame.last_seq = "peer-validation", 1
        refusal(lambda frame=frame: exchange(node, frame, member))  # type: ignore[misc]
    good = offloaded("peer-good", properties_json='{"n":1,"t":{"$t":5},"b":{"$b":"eA=="},"l":["a",2]}')

    frame = transfer_pb2.ExchangeRequest(sender_id="peer-validation", last_seq=7, jobs=[good])
    acked = exchange(node, frame, member)
    node.restart()

    assert [a.last_seq for a in acked] == [7]
    job = node.stub.GetJob(jobs_pb2.GetJobRequest(job_id="peer-good"), timeout=10).job
    assert job.properties["l"].list_value.values[1].int_value == 2
    assert node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1000), timeout=10).total_size >= 1
    assert node.queues.ListQueues(queues_pb2.ListQueuesRequest(), timeout=10).queues
    wait_for_state(node.stub, add_job(node.stub, "ok/topic"), jobs_pb2.JOB_STATE_SUCCEEDED)
    log = node.log_text()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert log.count("transfer frame(s) refused") <= 3  # rate-limited, not one line per frame


def test_consumption_settings_that_cannot_be_published_are_refused_not_stored(nodes: NodeFactory) -> None:
    node = nodes.start("consumption-limit", [])
    topics = topics_pb2_grpc.TopicServiceStub(node.channel)
    refusals: list[str] = []
    kept = 0
    for i in range(120):
        request = topics_pb2.SetTopicConsumptionRequest(
            topic=f"t{i}/{'x' * 200}/**", setting=topics_pb2.CONSUMPTION_SETTING_DISABLED
        )
        try:
            kept = len(topics.SetTopicConsumption(request, timeout=10).instance.settings)
        except grpc.RpcError as e:
            refusals.append(f"{e.code().name}: {e.details()}")

    node.restart()  # stored settings are published at start: all of them must still fit

    def settings_listed() -> int:
        listed = topics_pb2_grpc.TopicServiceStub(node.channel).ListTopicConsumption(
            topics_pb2.ListTopicConsumptionRequest(), timeout=10
        )
        return len(listed.instances[0].settings) if listed.instances else 0

    assert refusals
    assert all(r.startswith("INVALID_ARGUMENT") and "discovery.max_properties_bytes" in r for r in refusals)
    assert kept == 120 - len(refusals)
    wait_for(lambda: settings_listed() == kept, what=f"{kept} settings listed after the restart")
