"""Every list pages the same way (AIP-158): page_size and page_token in, next_page_token and
total_size out. FindJobs' paging is pinned in tests/test_find_jobs.py; these are the lists
that had no paging before v1 froze: ListQueues, ListSchedules, ListTopicConsumption."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import queues_pb2, schedules_pb2, topics_pb2, topics_pb2_grpc

from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.topology import create, start_all, wait_views

Q, R, T = queues_pb2, schedules_pb2, topics_pb2


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    return module_nodes.start("paging")


def every_page(call: Callable[[Any], Any], request: Any) -> list[Any]:
    """The responses of a list, page after page, following next_page_token."""
    responses = []
    while True:
        response = call(request)
        responses.append(response)
        if not response.next_page_token:
            return responses
        request.page_token = response.next_page_token
        assert len(responses) < 100, "the pages never end"


def add_schedule(node: NodeProcess, name: str) -> str:
    when = Timestamp()
    when.FromSeconds(int(time.time()) + 3600 * 24 * 365)  # never fires during the test
    request = R.AddScheduleRequest(
        name=name, job=new_job("paging/x"), rules=[R.ScheduleRule(at=R.AtRule(time=when))]
    )
    return str(node.schedules.AddSchedule(request).schedule.id)


def token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_list_queues_returns_every_queue_once_over_its_pages(node: NodeProcess) -> None:
    # Given the main queue and six queues set over the API
    for i in range(6):
        node.queues.SetQueue(
            Q.SetQueueRequest(config=Q.QueueConfig(name=f"page-q{i}", topics=[f"paging/q{i}"]))
        )

    # When they are listed three at a time
    pages = every_page(node.queues.ListQueues, Q.ListQueuesRequest(page_size=3))

    # Then the pages hold every queue once, in the list's order, and each says how many there are
    assert [len(p.queues) for p in pages] == [3, 3, 1]
    names = [q.config.name for p in pages for q in p.queues]
    assert names == ["main", *(f"page-q{i}" for i in range(6))]
    assert {p.total_size for p in pages} == {7}
    # And the default page size takes them all at once
    single = node.queues.ListQueues(Q.ListQueuesRequest())
    assert ([q.config.name for q in single.queues], single.next_page_token) == (names, "")


def test_a_page_token_continues_after_its_item_even_when_the_list_changed(nodes: NodeFactory) -> None:
    # Given five schedules, and the first page of two
    node = nodes.start("paging-schedules")
    ids = [add_schedule(node, f"s{i}") for i in range(5)]
    first = node.schedules.ListSchedules(R.ListSchedulesRequest(page_size=2))
    assert ([s.id for s in first.schedules], first.total_size) == (ids[:2], 5)

    # When the items of that page are removed and a new one is added before the next page
    for schedule_id in ids[:2]:
        node.schedules.RemoveSchedule(R.RemoveScheduleRequest(id=schedule_id))
    newest = add_schedule(node, "s5")
    rest = every_page(
        node.schedules.ListSchedules, R.ListSchedulesRequest(page_size=2, page_token=first.next_page_token)
    )

    # Then the next pages go on after the token's item: nothing repeated, nothing skipped
    assert [[s.id for s in p.schedules] for p in rest] == [ids[2:4], [ids[4], newest]]
    assert [p.total_size for p in rest] == [4, 4]


def test_list_topic_consumption_pages_over_the_live_instances_in_view_order(nodes: NodeFactory) -> None:
    # Given three nodes that see each other
    a = create(nodes, "pa").start()
    b, c = start_all(create(nodes, "pb", seeds=[a]), create(nodes, "pc", seeds=[a]))
    views = wait_views([a, b, c], {"pa", "pb", "pc"})
    stub = topics_pb2_grpc.TopicServiceStub(b.channel)

    # When the consumption matrix is read one instance at a time
    pages = every_page(stub.ListTopicConsumption, T.ListTopicConsumptionRequest(page_size=1))

    # Then every instance comes once, in the order of the node's view
    assert [i.instance_id for p in pages for i in p.instances] == [i.id for i in views["pb"].instances]
    assert [p.total_size for p in pages] == [3, 3, 3]


@pytest.mark.parametrize(
    ("page_size", "page_token", "fragment"),
    [
        (-1, "", "page_size -1 is out of range"),
        (1001, "", "page_size 1001 is out of range"),
        (0, "not base64!", "is malformed"),
        (0, "A" * 600, "page_token has 600 characters"),
        (0, token({"list": "schedules", "after": [1, "x"]}), "does not belong to this list (queues)"),
        (0, token({"list": "queues", "after": ["main", 1]}), "is malformed"),
        (0, token({"list": "queues", "after": [[[[[0]]]]]}), "is malformed"),
        (0, token([["deep"] * 3] * 3), "does not belong to this list"),
    ],
    ids=[
        "negative-size",
        "huge-size",
        "not-base64",
        "too-long",
        "other-list",
        "wrong-types",
        "nested",
        "not-ours",
    ],
)
def test_a_bad_page_request_is_refused_with_invalid_argument(
    node: NodeProcess, page_size: int, page_token: str, fragment: str
) -> None:
    error = rpc_error(
        lambda: node.queues.ListQueues(Q.ListQueuesRequest(page_size=page_size, page_token=page_token))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.details() or ""), error.details()


def test_a_token_of_one_list_is_refused_by_another(node: NodeProcess) -> None:
    add_schedule(node, "t0")
    add_schedule(node, "t1")
    schedules_token = node.schedules.ListSchedules(R.ListSchedulesRequest(page_size=1)).next_page_token
    assert schedules_token

    error = rpc_error(lambda: node.queues.ListQueues(Q.ListQueuesRequest(page_token=schedules_token)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not belong to this list (queues)" in (error.details() or "")
