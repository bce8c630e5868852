"""A seeded fuzz test over every method of every service (issue 14 item 9).

Valid requests are mutated field by field with hostile values; every answer must be an expected
status (never UNKNOWN or INTERNAL), the node logs no traceback and no ERROR line, the canary jobs
stay intact, and after a restart every read method still succeeds over everything stored.
Replay a failure with `FUZZ_SEED=<seed printed by the failing run>`.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from jobmesh.peer.v1 import transfer_pb2
from jobmesh.v1 import (
    jobs_pb2,
    queues_pb2,
    schedules_pb2,
    topics_pb2,
    topics_pb2_grpc,
    topology_pb2,
    topology_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

from node.security.scopes import PEER, REQUIRED_SCOPE
from node.transfer.chunks import crc32
from tests.support.fuzzing import Mutation, message_class, method_call, mutations, served_methods
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import condition, new_job, template
from tests.test_security import a_member

BUDGET_S = 40.0
"""The fuzzing stops starting new requests after this long (the whole test stays under a minute)."""
STREAM_WAIT_S = 0.4
"""A streaming call is given this long, then its deadline ends it (DEADLINE_EXCEEDED is fine)."""
PER_FIELD = 6
MAX_PER_STREAM_METHOD = 12
CANARIES = 5
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,  # forwarded to a peer a hostile request named
}
STREAM_EXPECTED = EXPECTED | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# Methods the fuzzing client (the node's local admin) may not call at all: a joining node's
# bootstrap certificate calls Join, a member node's own certificate calls Renew.
NOT_FOR_CLIENTS = {"jobmesh.peer.v1.ClusterService.Join", "jobmesh.peer.v1.ClusterService.Renew"}
METHODS = sorted(served_methods(), key=lambda m: m.full_name)
PEER_ONLY = (
    frozenset(name.lstrip("/").replace("/", ".") for name, scope in REQUIRED_SCOPE.items() if scope == PEER)
    - NOT_FOR_CLIENTS
)
"""Methods only nodes call (the scope table's): fuzzed from a member's certificate (instance
"fuzz-peer", the sender of the valid frames), where a message in another instance's name is
PERMISSION_DENIED."""


def fuzz_seed() -> int:
    """FUZZ_SEED, or a new seed each run (printed, and named in every failure)."""
    return int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))


def daily_rule() -> schedules_pb2.ScheduleRule:
    rule = schedules_pb2.ScheduleRule()
    rule.daily.hour = 3
    return rule


def full_job(topic: str) -> jobs_pb2.NewJob:
    """A job using every NewJob field, so each one gets mutated from a valid value."""
    job = new_job(topic, b"in", n=1, when=datetime(2030, 1, 1, tzinfo=UTC), tags=["a", "b"])
    job.dedup_key, job.max_retries = "d", 2
    job.retry_delay.FromSeconds(1)
    job.timeout.FromSeconds(5)
    return job


def exchange_frame() -> transfer_pb2.ExchangeRequest:
    """A valid frame with a job, a report and a control (of jobs this node does not have)."""
    job = transfer_pb2.OffloadedJob(
        job_id="fuzz-peer-job",
        epoch=1,
        topic="fuzz/p",
        properties_json='{"n":1}',
        created_us=1_700_000_000_000_000,
    )
    job.payload_crc32 = crc32(job.payload)
    report = transfer_pb2.JobReport(
        job_id="fuzz-other",
        epoch=1,
        report_seq=1,
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        output_crc32=crc32(b""),
    )
    report.log_lines.add(line=1, time_us=1_700_000_000_000_000, message="m")
    control = transfer_pb2.JobControl(job_id="fuzz-other", epoch=1)
    return transfer_pb2.ExchangeRequest(
        sender_id="fuzz-peer", last_seq=1, jobs=[job], reports=[report], controls=[control]
    )


def valid_base(method: MethodDescriptor) -> Message:
    """A valid request of the method to mutate (an empty one where that is valid)."""
    bases: dict[str, Callable[[], Message]] = {
        "AddJob": lambda: jobs_pb2.AddJobRequest(job=full_job("fuzz/a")),
        "AddJobs": lambda: jobs_pb2.AddJobsRequest(jobs=[full_job("fuzz/a")]),
        "FindJobs": lambda: jobs_pb2.FindJobsRequest(
            topic="fuzz/a", templates=[template(condition("n", ">=", 1))], page_size=5
        ),
        "WatchJobs": lambda: jobs_pb2.WatchJobsRequest(
            topics=["fuzz/**"], types=[jobs_pb2.JOB_EVENT_TYPE_ADDED], after_seq=0
        ),
        "AddSchedule": lambda: schedules_pb2.AddScheduleRequest(
            name="s", job=full_job("fuzz/a"), rules=[daily_rule()]
        ),
        "SetQueue": lambda: queues_pb2.SetQueueRequest(config=queue_config()),
        "SetTopicConsumption": lambda: topics_pb2.SetTopicConsumptionRequest(
            topic="fuzz/t/**", setting=topics_pb2.CONSUMPTION_SETTING_DISABLED
        ),
        "Work": lambda: workers_pb2.WorkRequest(
            register=workers_pb2.WorkerRegistration(name="w", topics=["fuzz/w"], concurrency=1)
        ),
        "Exchange": exchange_frame,
    }
    if method.name in bases:
        return bases[method.name]()
    request = message_class(method.input_type)()
    for field in ("job_id", "name", "id"):
        if field in request.DESCRIPTOR.fields_by_name:
            setattr(request, field, "fuzz-missing")
    return request


def queue_config() -> queues_pb2.QueueConfig:
    config = queues_pb2.QueueConfig(name="fuzz-q", topics=["fuzz/q/**"], max_parallel=2, retries=1, ranking=1)
    config.retry_backoff, config.keep_jobs = 2.0, True
    config.retry_delay.FromSeconds(1)
    config.retry_delay_max.FromSeconds(10)
    config.timeout.FromSeconds(30)
    return config


def call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    """The status a raw request gets (streams: after STREAM_WAIT_S at most)."""
    stub = method_call(channel, method)
    streaming = method.client_streaming or method.server_streaming
    request = iter([payload]) if method.client_streaming else payload
    try:
        result = stub(request, timeout=STREAM_WAIT_S if streaming else 15)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        return code
    return grpc.StatusCode.OK


def add_canaries(node: NodeProcess) -> dict[str, jobs_pb2.Job]:
    """Queued jobs of a topic nothing consumes and no hostile value names."""
    response = node.stub.AddJobs(
        jobs_pb2.AddJobsRequest(
            jobs=[new_job("canary/keep", bytes([i]) * 100, i=i) for i in range(CANARIES)]
        ),
        timeout=10,
    )
    return {job_id: get_job(node, job_id) for job_id in response.job_ids}


def get_job(node: NodeProcess, job_id: str) -> jobs_pb2.Job:
    response: jobs_pb2.GetJobResponse = node.stub.GetJob(
        jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=True), timeout=10
    )
    return response.job


def pages(list_call: Callable[[str], Message]) -> Iterator[Message]:
    """Every page of a list (the AIP-158 fields), to decode everything stored."""
    token = ""
    while True:
        page = list_call(token)
        yield page
        token = page.next_page_token  # type: ignore[attr-defined]
        if not token:
            return


def read_everything(node: NodeProcess, canaries: dict[str, jobs_pb2.Job]) -> None:
    """Every read method of the public API, over all that is stored; raises on any failure."""
    channel = node.channel
    for page in pages(
        lambda t: node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1000, page_token=t), timeout=15)
    ):
        for job in page.jobs:  # type: ignore[attr-defined]
            node.stub.GetJob(
                jobs_pb2.GetJobRequest(job_id=job.id, include_payloads=True, include_log=True), timeout=10
            )
    node.stub.GetStatistics(jobs_pb2.GetStatisticsRequest(), timeout=10)
    list(pages(lambda t: node.queues.ListQueues(queues_pb2.ListQueuesRequest(page_token=t), timeout=10)))
    for page in pages(
        lambda t: node.schedules.ListSchedules(schedules_pb2.ListSchedulesRequest(page_token=t), timeout=10)
    ):
        for schedule in page.schedules:  # type: ignore[attr-defined]
            node.schedules.GetSchedule(schedules_pb2.GetScheduleRequest(id=schedule.id), timeout=10)
    topics = topics_pb2_grpc.TopicServiceStub(channel)
    list(
        pages(
            lambda t: topics.ListTopicConsumption(
                topics_pb2.ListTopicConsumptionRequest(page_token=t), timeout=10
            )
        )
    )
    workers = workers_pb2_grpc.WorkerServiceStub(channel)
    list(pages(lambda t: workers.ListWorkers(workers_pb2.ListWorkersRequest(page_token=t), timeout=10)))
    topology_pb2_grpc.TopologyServiceStub(channel).GetTopology(topology_pb2.GetTopologyRequest(), timeout=10)
    history = node.stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=0), timeout=2)
    with pytest.raises(grpc.RpcError) as ended:  # all history, then live: the deadline ends it
        for _ in history:
            pass
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended.value.details()
    for job_id, before in canaries.items():
        assert get_job(node, job_id) == before, f"canary {job_id} changed"


@pytest.fixture
def node(nodes: NodeFactory) -> NodeProcess:
    return nodes.start("fuzz", ["fuzz/a=consumers:succeed"])


def test_hostile_requests_to_every_method_get_expected_statuses_and_break_no_read(
    nodes: NodeFactory, node: NodeProcess
) -> None:
    seed = fuzz_seed()
    print(f"fuzz seed {seed} (replay: FUZZ_SEED={seed})")
    rng = random.Random(seed)
    canaries = add_canaries(node)
    deadline = time.monotonic() + BUDGET_S
    unexpected: list[str] = []
    codes: Counter[str] = Counter()
    sent = 0
    plan: list[tuple[MethodDescriptor, Mutation]] = []
    for method in METHODS:
        variants = list(mutations(valid_base(method), rng, PER_FIELD))
        if method.client_streaming or method.server_streaming:
            variants = rng.sample(variants, min(len(variants), MAX_PER_STREAM_METHOD))
        plan += [(method, m) for m in variants]
    rng.shuffle(plan)
    member = a_member(nodes, "fuzz-peer").create_sync_channel(node.address)
    for method, mutation in plan:
        if time.monotonic() > deadline:
            break
        from_peer = method.full_name in PEER_ONLY
        code = call(member if from_peer else node.channel, method, mutation.payload)
        sent += 1
        codes[code.name] += 1
        streaming = method.client_streaming or method.server_streaming
        expected = STREAM_EXPECTED if streaming else EXPECTED
        if from_peer:
            expected = expected | {grpc.StatusCode.PERMISSION_DENIED}  # speaking for another instance
        if method.full_name in NOT_FOR_CLIENTS:
            expected = {
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            }  # undecodable first
        if code not in expected:
            unexpected.append(f"{method.full_name} [{mutation.change}] -> {code.name}")

    member.close()
    print(f"fuzz seed {seed}: {sent} of {len(plan)} requests sent; statuses {dict(codes)}")
    assert unexpected == [], f"seed {seed}: unexpected statuses:\n" + "\n".join(unexpected[:30])
    assert sent >= min(len(plan), 300), f"seed {seed}: only {sent} requests in {BUDGET_S}s"
    read_everything(node, canaries)
    node.restart()
    read_everything(node, canaries)
    log = node.log_text()
    assert "Traceback" not in log, f"seed {seed}: the node logged a traceback"
    assert " ERROR " not in log, f"seed {seed}: the node logged an ERROR line"
