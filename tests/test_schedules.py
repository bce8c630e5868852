"""ScheduleService on real node processes: each occurrence adds exactly one job, across restarts and crashes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from jobmesh.v1 import jobs_pb2, schedules_pb2

from tests.support.fixtures import shared_node
from tests.support.job_calls import find_all, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for

S = jobs_pb2
R = schedules_pb2
CONSUMERS = ["sched/**=consumers:succeed"]


# A node shared by the tests that need no restart (each uses its own topics).
node = shared_node("scheduler", CONSUMERS)


def at(when_s: float) -> schedules_pb2.ScheduleRule:
    rule = R.ScheduleRule()
    rule.at.time.FromMicroseconds(round(when_s * 1e6))
    return rule


def add_schedule(
    node: NodeProcess, topic: str, *rules: schedules_pb2.ScheduleRule, name: str = "", **props: object
) -> schedules_pb2.Schedule:
    schedule: schedules_pb2.Schedule = node.schedules.AddSchedule(
        R.AddScheduleRequest(name=name, job=new_job(topic, **props), rules=rules)  # type: ignore[arg-type]
    ).schedule
    return schedule


def get_schedule(node: NodeProcess, schedule_id: str) -> schedules_pb2.Schedule:
    schedule: schedules_pb2.Schedule = node.schedules.GetSchedule(
        R.GetScheduleRequest(id=schedule_id)
    ).schedule
    return schedule


def fired(node: NodeProcess, schedule_id: str, count: int) -> schedules_pb2.Schedule:
    """Wait until the schedule has added `count` jobs."""

    def check() -> schedules_pb2.Schedule | None:
        schedule = get_schedule(node, schedule_id)
        assert schedule.fired_count <= count, f"fired {schedule.fired_count} times, expected {count}"
        return schedule if schedule.fired_count == count else None

    return wait_for(check, what=f"the schedule to fire {count} times")


def jobs_of(node: NodeProcess, topic: str) -> list[jobs_pb2.Job]:
    return find_all(node.stub, S.FindJobsRequest(topic=topic))


def sleep_until(when_s: float) -> None:
    """Wait for a wall-clock time the test chose (schedules are about wall-clock time)."""
    time.sleep(max(0.0, when_s - time.time()))


def micros(ts: object) -> int:
    return int(ts.ToMicroseconds())  # type: ignore[attr-defined]


def test_at_schedule_fires_once_at_its_time(node: NodeProcess) -> None:
    # Given a schedule for a moment ahead (its dedup_key is ignored: every occurrence is a new job)
    when = time.time() + 0.4
    request = R.AddScheduleRequest(name="once", job=new_job("sched/once", n=1), rules=[at(when)])
    request.job.dedup_key = "ignored"
    schedule = node.schedules.AddSchedule(request).schedule
    assert (schedule.name, schedule.fired_count, schedule.suspended) == ("once", 0, False)
    assert micros(schedule.next_time) == round(when * 1e6)
    assert not schedule.HasField("last_time")
    assert schedule.job.dedup_key == ""
    assert jobs_of(node, "sched/once") == []

    # When its time comes
    done = fired(node, schedule.id, 1)

    # Then it added exactly one job, at or after its time, and has nothing left to do
    (job,) = jobs_of(node, "sched/once")
    assert done.last_job_id == job.id
    assert micros(job.created_time) >= round(when * 1e6)
    assert micros(done.last_time) >= round(when * 1e6)
    assert not done.HasField("next_time")
    assert job.properties["n"].int_value == 1
    assert wait_for_state(node.stub, job.id, S.JOB_STATE_SUCCEEDED).result_message == "done: sched/once"


def test_schedule_with_several_rules_fires_at_each(node: NodeProcess) -> None:
    now = time.time()

    schedule = add_schedule(node, "sched/twice", at(now + 0.5), at(now + 0.2))

    assert micros(schedule.next_time) == round((now + 0.2) * 1e6)
    done = fired(node, schedule.id, 2)
    assert not done.HasField("next_time")
    assert len(jobs_of(node, "sched/twice")) == 2


def test_past_at_schedule_fires_at_once(node: NodeProcess) -> None:

    schedule = add_schedule(node, "sched/late", at(time.time() - 3600))

    fired(node, schedule.id, 1)
    assert len(jobs_of(node, "sched/late")) == 1


@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_occurrence_due_while_the_node_is_down_fires_exactly_once_after_restart(
    nodes: NodeFactory, stop: str
) -> None:
    # Given a schedule due in a moment, and the node going down before that
    node = nodes.start(f"down-{stop}", CONSUMERS)
    when = time.time() + 0.3
    schedule = add_schedule(node, "sched/missed", at(when))
    getattr(node, stop)()
    assert node.query_journal("SELECT fired_count FROM schedules") == [(0,)], "went down too late"

    # When the time passes while it is down, and it starts again
    sleep_until(when + 0.1)
    node.start()

    # Then the missed occurrence fires once
    done = fired(node, schedule.id, 1)
    (job,) = jobs_of(node, "sched/missed")
    assert done.last_job_id == job.id
    wait_for_state(node.stub, job.id, S.JOB_STATE_SUCCEEDED)
    if stop == "kill":
        # And a crash right after that does not fire it again
        node.kill()
        node.start()
        assert get_schedule(node, schedule.id).fired_count == 1
        assert len(jobs_of(node, "sched/missed")) == 1


def test_recurring_schedule_fires_once_for_all_occurrences_missed_during_downtime(nodes: NodeFactory) -> None:
    # Given an hourly schedule on a node that was down for three hours (its next occurrence
    # moved into the past in its journal, as if the clock had run on)
    node = nodes.start("downtime", CONSUMERS)
    now = datetime.now(UTC)
    minute = (now.minute + 30) % 60
    schedule = add_schedule(node, "sched/hourly", R.ScheduleRule(hourly=R.HourlyRule(minute=minute)))
    next_us = micros(schedule.next_time)
    assert 0 < next_us - now.timestamp() * 1e6 <= 3600e6
    node.terminate()
    three_hours_ago = int((now - timedelta(hours=3)).timestamp() * 1e6)
    conn = sqlite3.connect(node.data_dir / "journal.sqlite")
    with conn:
        conn.execute("UPDATE schedules SET next_us = ? WHERE id = ?", (three_hours_ago, schedule.id))
    conn.close()

    # When it starts
    node.start()

    # Then it fires once, not three times, and moves on to the next occurrence after now
    done = fired(node, schedule.id, 1)
    assert len(jobs_of(node, "sched/hourly")) == 1
    following = micros(done.next_time)
    assert following == next_us or following == next_us + 3600 * 10**6
    assert following > time.time() * 1e6


def test_suspended_schedule_skips_its_occurrences_and_resumes_from_now(nodes: NodeFactory) -> None:
    node = nodes.start("suspend", CONSUMERS)
    when = time.time() + 0.5
    once = add_schedule(node, "sched/skipped", at(when))
    daily = add_schedule(node, "sched/daily", R.ScheduleRule(daily=R.DailyRule(hour=3, minute=0)))

    # When both are suspended (persisted across a restart) and the `at` time passes
    for schedule in (once, daily):
        suspended = node.schedules.SuspendSchedule(R.SuspendScheduleRequest(id=schedule.id)).schedule
        assert suspended.suspended
    node.restart()
    assert all(get_schedule(node, s.id).suspended for s in (once, daily))
    sleep_until(when + 0.3)

    # Then nothing fired
    assert get_schedule(node, once.id).fired_count == 0
    assert jobs_of(node, "sched/skipped") == []

    # And on resume the missed `at` occurrence is skipped, the daily one continues from now
    resumed_once = node.schedules.ResumeSchedule(R.ResumeScheduleRequest(id=once.id)).schedule
    resumed_daily = node.schedules.ResumeSchedule(R.ResumeScheduleRequest(id=daily.id)).schedule
    assert not resumed_once.suspended
    assert not resumed_once.HasField("next_time")
    assert not resumed_daily.suspended
    assert micros(resumed_daily.next_time) == micros(daily.next_time)
    assert jobs_of(node, "sched/skipped") == []


def test_removed_schedule_is_gone_and_its_jobs_stay(node: NodeProcess) -> None:
    first = add_schedule(node, "sched/removed", at(time.time() - 1), name="first")
    second = add_schedule(node, "sched/kept", R.ScheduleRule(cron="0 0 1 1 *"), name="second")
    fired(node, first.id, 1)
    listed = [s.id for s in node.schedules.ListSchedules(R.ListSchedulesRequest()).schedules]
    assert listed[-2:] == [first.id, second.id], "oldest first"

    node.schedules.RemoveSchedule(R.RemoveScheduleRequest(id=first.id))

    assert [s.id for s in node.schedules.ListSchedules(R.ListSchedulesRequest()).schedules] == [
        *listed[:-2],
        second.id,
    ]
    for call, request in (
        (node.schedules.GetSchedule, R.GetScheduleRequest(id=first.id)),
        (node.schedules.RemoveSchedule, R.RemoveScheduleRequest(id=first.id)),
        (node.schedules.SuspendSchedule, R.SuspendScheduleRequest(id=first.id)),
    ):
        error = rpc_error(lambda call=call, request=request: call(request))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert first.id in (error.details() or "")
    assert len(jobs_of(node, "sched/removed")) == 1


def job_with(topic: str = "sched/x", **changes: object) -> jobs_pb2.NewJob:
    job = new_job(topic)
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_schedule_rpcs_refuse_bad_input_and_the_node_keeps_serving(node: NodeProcess) -> None:
    before = node.schedules.ListSchedules(R.ListSchedulesRequest()).schedules
    daily = R.ScheduleRule(daily=R.DailyRule(hour=1, minute=2))
    bad_property = new_job("sched/x")
    bad_property.properties["1bad"].string_value = "x"

    def add(
        job: jobs_pb2.NewJob | None, *rules: schedules_pb2.ScheduleRule, name: str = ""
    ) -> Callable[[], object]:
        return lambda: node.schedules.AddSchedule(R.AddScheduleRequest(name=name, job=job, rules=rules))

    cases = [
        (add(None, daily), "job is missing"),
        (add(job_with()), "at least one rule"),
        (add(job_with(), R.ScheduleRule()), "no rule is set"),
        (add(job_with(), daily, R.ScheduleRule(hourly=R.HourlyRule(minute=75))), "rules[1]: minute 75"),
        (add(job_with(), R.ScheduleRule(weekly=R.WeeklyRule(day_of_week=0))), "day_of_week"),
        (add(job_with(), R.ScheduleRule(yearly=R.YearlyRule(month=2, day=30))), "day (of month 2) 30"),
        (add(job_with(), R.ScheduleRule(cron="61 * * * *")), "minute '61'"),
        (add(job_with(), R.ScheduleRule(cron="0 0 30 2 *")), "never matches"),
        (add(job_with(), R.ScheduleRule(at=R.AtRule())), "at.time is missing"),
        (add(job_with(""), daily), "topic is empty"),
        (add(job_with("a//b"), daily), "a//b"),
        (add(bad_property, daily), "1bad"),
        (add(job_with(max_retries=-5), daily), "max_retries is -5"),
        (add(job_with(timeout=timedelta(seconds=-1)), daily), "job.timeout is -1s"),
        (add(job_with(), daily, name="n" * 201), "name has more than 200"),
        (lambda: node.schedules.GetSchedule(R.GetScheduleRequest(id="")), "id is empty"),
        (lambda: node.schedules.RemoveSchedule(R.RemoveScheduleRequest()), "id is empty"),
        (lambda: node.schedules.SuspendSchedule(R.SuspendScheduleRequest()), "id is empty"),
        (lambda: node.schedules.ResumeSchedule(R.ResumeScheduleRequest()), "id is empty"),
    ]
    for call, fragment in cases:
        error = rpc_error(call)
        assert (error.code(), fragment in (error.details() or "")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            True,
        ), (
            fragment,
            error.code(),
            error.details(),
        )
    unknown = rpc_error(lambda: node.schedules.ResumeSchedule(R.ResumeScheduleRequest(id="nope")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    # Nothing was stored, and the node still schedules
    assert node.schedules.ListSchedules(R.ListSchedulesRequest()).schedules == before
    fired(node, add_schedule(node, "sched/fine", at(time.time())).id, 1)


def test_a_schedule_whose_job_became_invalid_does_not_block_the_others(nodes: NodeFactory) -> None:
    # Given two schedules due while the node is down, one with a 500-byte payload
    node = nodes.start("outgrown", CONSUMERS)
    when = time.time() + 0.3
    big = node.schedules.AddSchedule(
        R.AddScheduleRequest(job=new_job("sched/big", payload=b"x" * 500), rules=[at(when)])
    ).schedule
    fine = add_schedule(node, "sched/fine", at(when))
    node.terminate()
    sleep_until(when + 0.05)

    # When the node comes back with a payload limit the big job no longer fits
    node.settings["jobs.max_payload_bytes"] = 100
    node.start()

    # Then the other schedule fires, and the big one's occurrence is skipped with a warning
    fired(node, fine.id, 1)
    assert len(jobs_of(node, "sched/fine")) == 1

    def passed_over() -> schedules_pb2.Schedule | None:
        schedule = get_schedule(node, big.id)
        return None if schedule.HasField("next_time") else schedule

    skipped = wait_for(passed_over, what="the big schedule's occurrence to pass")
    assert skipped.fired_count == 0
    assert jobs_of(node, "sched/big") == []
    assert f"schedule {big.id} (): occurrence skipped, its job is invalid now" in node.log_text()
