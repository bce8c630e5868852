"""The suite's own helpers (tests/support): the deadline wait, the leak guards, the proto builders.

Every other test leans on these; a wait that passed too early, a guard that never fired or a
builder that encoded values differently from a client would make those tests lie.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import UTC, datetime

import pytest
from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument
from node.properties import value_from_proto
from tests.support.leaks import leaked_tasks, leaked_threads
from tests.support.protos import condition, new_job, prop, raw_timestamp_value, raw_value, state_name
from tests.support.waiting import async_wait_for, wait_for


def test_wait_for_returns_the_first_truthy_value_and_keeps_polling_through_not_ready_errors() -> None:
    calls: list[int] = []

    def condition_() -> str | None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("not there yet")
        return "ready" if len(calls) >= 3 else None

    assert wait_for(condition_, 5, "three calls") == "ready"
    assert len(calls) == 3


def test_wait_for_fails_at_the_deadline_naming_what_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for the impossible; last value: 0"):
        wait_for(lambda: 0, 0.2, "the impossible")
    assert 0.2 <= time.monotonic() - started < 2.0


def test_wait_for_lets_other_errors_through_at_once() -> None:
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        wait_for(lambda: empty["missing"], 5)


async def test_async_wait_for_awaits_coroutine_conditions_and_calls_plain_ones() -> None:
    ticks: list[int] = []

    async def counted() -> int | None:
        ticks.append(1)
        return len(ticks) if len(ticks) >= 2 else None

    assert await async_wait_for(counted, 5, "two ticks") == 2
    assert await async_wait_for(lambda: "plain", 5) == "plain"
    with pytest.raises(AssertionError, match="waiting for never"):
        await async_wait_for(lambda: None, 0.1, "never")


def test_the_thread_guard_names_a_thread_that_outlives_the_grace_period() -> None:
    before = set(threading.enumerate())
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="still-here", daemon=True)
    thread.start()
    try:
        assert leaked_threads(before, within_s=0.1) == ["still-here"]
    finally:
        stop.set()
        thread.join()
    assert leaked_threads(before, within_s=0.1) == []


async def test_the_task_guard_names_a_task_that_outlives_the_grace_period() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(10), name="still-running")
    try:
        assert await leaked_tasks(within_s=0.1) == ["still-running"]
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await leaked_tasks(within_s=0.1) == []


@pytest.mark.parametrize(
    "value",
    ["text", 7, -(2**63), 2.5, True, b"\x00\xff", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), [1, "a"]],
    ids=repr,
)
def test_prop_encodes_as_the_node_decodes(value: object) -> None:
    assert value_from_proto(prop(value), "value") == value  # type: ignore[arg-type]


def test_builders_refuse_what_a_client_cannot_send_and_raw_values_carry_it_anyway() -> None:
    with pytest.raises(InvalidArgument):
        prop(float("nan"))
    with pytest.raises(InvalidArgument):
        new_job("t", n=2**63)
    assert math.isnan(raw_value(double_value=float("nan")).double_value)
    assert raw_timestamp_value(5, -1).timestamp_value.nanos == -1
    unchecked = condition("n", "=", raw_value(double_value=float("inf")))
    assert unchecked.value.double_value == float("inf")
    assert unchecked.operator == jobs_pb2.COMPARISON_OPERATOR_EQUAL


def test_new_job_carries_topic_payload_and_typed_properties() -> None:
    job = new_job("a/b", b"in", n=1, name="x")
    assert (job.topic, job.payload) == ("a/b", b"in")
    assert {k: value_from_proto(v, k) for k, v in job.properties.items()} == {"n": 1, "name": "x"}
    assert condition("n", ">=", 3).operator == jobs_pb2.COMPARISON_OPERATOR_GREATER_OR_EQUAL
    assert state_name(jobs_pb2.JOB_STATE_GIVEN_UP) == "GIVEN_UP"
