"""When schedules fire: the next-time computations of every rule kind, as pure functions (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from jobmesh.v1 import schedules_pb2

from node.errors import InvalidArgument
from node.jobs.cron import CronExpression
from node.jobs.schedules import next_occurrence, next_time_us, validate_rule, validate_rules

R = schedules_pb2


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type, misc]


def micros(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000 + when.microsecond


def at(when: datetime) -> schedules_pb2.ScheduleRule:
    rule = R.ScheduleRule()
    rule.at.time.FromMicroseconds(micros(when))
    return rule


def hourly(minute: int) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(hourly=R.HourlyRule(minute=minute))


def daily(hour: int, minute: int) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(daily=R.DailyRule(hour=hour, minute=minute))


def weekly(day_of_week: int, hour: int, minute: int) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(weekly=R.WeeklyRule(day_of_week=day_of_week, hour=hour, minute=minute))


def monthly(day: int, hour: int, minute: int) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(monthly=R.MonthlyRule(day=day, hour=hour, minute=minute))


def yearly(month: int, day: int, hour: int, minute: int) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(yearly=R.YearlyRule(month=month, day=day, hour=hour, minute=minute))


def cron(expression: str) -> schedules_pb2.ScheduleRule:
    return R.ScheduleRule(cron=expression)


# 2024-05-08 is a Wednesday; 2024 is a leap year.
CASES = [
    # at: once, strictly after
    (
        "at-ahead",
        at(utc(2024, 5, 8, 12, 0, 0, 500_000)),
        utc(2024, 5, 8, 12, 0),
        utc(2024, 5, 8, 12, 0, 0, 500_000),
    ),
    ("at-passed", at(utc(2024, 5, 8, 12, 0)), utc(2024, 5, 8, 12, 0, 1), None),
    ("at-exactly-now", at(utc(2024, 5, 8, 12, 0)), utc(2024, 5, 8, 12, 0), None),
    # hourly
    ("hourly-later-this-hour", hourly(15), utc(2024, 5, 8, 10, 14, 59), utc(2024, 5, 8, 10, 15)),
    ("hourly-at-the-minute", hourly(15), utc(2024, 5, 8, 10, 15), utc(2024, 5, 8, 11, 15)),
    ("hourly-over-midnight", hourly(0), utc(2024, 12, 31, 23, 30), utc(2025, 1, 1, 0, 0)),
    # daily
    ("daily-today", daily(9, 30), utc(2024, 5, 8, 9, 29, 59), utc(2024, 5, 8, 9, 30)),
    ("daily-tomorrow", daily(9, 30), utc(2024, 5, 8, 9, 30), utc(2024, 5, 9, 9, 30)),
    ("daily-month-end", daily(0, 0), utc(2024, 2, 29, 0, 0), utc(2024, 3, 1, 0, 0)),
    # weekly: 1 Monday .. 7 Sunday
    ("weekly-next-monday", weekly(1, 8, 0), utc(2024, 5, 8, 12, 0), utc(2024, 5, 13, 8, 0)),
    ("weekly-same-day-later", weekly(3, 18, 45), utc(2024, 5, 8, 12, 0), utc(2024, 5, 8, 18, 45)),
    ("weekly-same-day-passed", weekly(3, 8, 0), utc(2024, 5, 8, 12, 0), utc(2024, 5, 15, 8, 0)),
    ("weekly-sunday", weekly(7, 0, 0), utc(2024, 5, 8, 12, 0), utc(2024, 5, 12, 0, 0)),
    # monthly: months without the day are skipped
    ("monthly-this-month", monthly(20, 6, 0), utc(2024, 5, 8), utc(2024, 5, 20, 6, 0)),
    ("monthly-skips-short-month", monthly(31, 12, 0), utc(2024, 4, 1), utc(2024, 5, 31, 12, 0)),
    ("monthly-31-after-january", monthly(31, 12, 0), utc(2024, 1, 31, 12, 0), utc(2024, 3, 31, 12, 0)),
    ("monthly-30-skips-february", monthly(30, 0, 0), utc(2024, 1, 31), utc(2024, 3, 30, 0, 0)),
    # yearly
    ("yearly-this-year", yearly(12, 25, 7, 30), utc(2024, 5, 8), utc(2024, 12, 25, 7, 30)),
    ("yearly-next-year", yearly(1, 1, 0, 0), utc(2024, 1, 1, 0, 0), utc(2025, 1, 1, 0, 0)),
    ("yearly-leap-day", yearly(2, 29, 0, 0), utc(2024, 3, 1), utc(2028, 2, 29, 0, 0)),
    # cron: minute hour day-of-month month day-of-week
    ("cron-every-minute", cron("* * * * *"), utc(2024, 5, 8, 10, 0, 30), utc(2024, 5, 8, 10, 1)),
    ("cron-strictly-after", cron("* * * * *"), utc(2024, 5, 8, 10, 1), utc(2024, 5, 8, 10, 2)),
    ("cron-steps-in-hours", cron("*/15 9-17 * * mon-fri"), utc(2024, 5, 8, 10, 7), utc(2024, 5, 8, 10, 15)),
    ("cron-friday-evening", cron("*/15 9-17 * * mon-fri"), utc(2024, 5, 10, 17, 50), utc(2024, 5, 13, 9, 0)),
    ("cron-list-and-range-step", cron("5,35 1-7/3 * * *"), utc(2024, 5, 8, 4, 35), utc(2024, 5, 8, 7, 5)),
    ("cron-new-year", cron("0 0 1 1 *"), utc(2024, 5, 8), utc(2025, 1, 1, 0, 0)),
    ("cron-month-names", cron("0 12 1 jun,sep *"), utc(2024, 6, 1, 12, 0), utc(2024, 9, 1, 12, 0)),
    ("cron-sunday-as-0", cron("30 2 * * 0"), utc(2024, 5, 8), utc(2024, 5, 12, 2, 30)),
    ("cron-sunday-as-7", cron("30 2 * * 7"), utc(2024, 5, 8), utc(2024, 5, 12, 2, 30)),
    # day-of-month and day-of-week both restricted: either matches (classic cron)
    ("cron-dom-or-dow-friday", cron("0 0 13 * fri"), utc(2024, 5, 8), utc(2024, 5, 10, 0, 0)),
    ("cron-dom-or-dow-13th", cron("0 0 13 * fri"), utc(2024, 5, 10, 0, 0), utc(2024, 5, 13, 0, 0)),
    ("cron-leap-day", cron("0 0 29 2 *"), utc(2024, 3, 1), utc(2028, 2, 29, 0, 0)),
]


@pytest.mark.parametrize(("rule", "after", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_occurrence_of_each_rule_kind(
    rule: schedules_pb2.ScheduleRule, after: datetime, expected: datetime | None
) -> None:
    validate_rule(rule, "rule")

    assert next_occurrence(rule, after) == expected


def test_schedule_with_several_rules_fires_at_the_earliest_next_occurrence() -> None:
    rules = [daily(9, 0), hourly(45), at(utc(2024, 5, 8, 10, 30))]
    start = micros(utc(2024, 5, 8, 10, 0))

    first = next_time_us(rules, start)
    assert first == micros(utc(2024, 5, 8, 10, 30))
    assert first is not None
    second = next_time_us(rules, first)
    assert second == micros(utc(2024, 5, 8, 10, 45))
    assert second is not None
    assert next_time_us(rules, second) == micros(utc(2024, 5, 8, 11, 45))


def test_schedule_whose_only_rule_is_a_past_at_has_no_next_time() -> None:
    assert next_time_us([at(utc(2024, 5, 8))], micros(utc(2024, 5, 9))) is None


def test_next_time_keeps_microseconds() -> None:
    when = utc(2030, 1, 2, 3, 4, 5, 678_901)

    assert next_time_us([at(when)], micros(utc(2030, 1, 1))) == micros(when)


def test_cron_walks_forward_through_a_whole_year_of_minutes_in_order() -> None:
    # Every occurrence of a sparse expression over a year: strictly increasing and all matching
    expression = CronExpression.parse("17 3,15 */10 * *")
    t = utc(2024, 1, 1)
    seen = []
    while t < utc(2025, 1, 1):
        t = expression.next_after(t)
        seen.append(t)
    seen.pop()  # the first one in 2025
    assert seen == sorted(set(seen))
    assert all(
        (s.minute, s.hour in (3, 15), s.day in (1, 11, 21, 31), s.second) == (17, True, True, 0) for s in seen
    )
    days_per_month = [len([s for s in seen if s.month == m]) // 2 for m in range(1, 13)]
    assert days_per_month == [4, 3, 4, 3, 4, 3, 4, 4, 3, 4, 3, 4]


BAD_RULES = [
    ("no-rule", R.ScheduleRule(), "no rule is set"),
    ("at-missing-time", R.ScheduleRule(at=R.AtRule()), "at.time is missing"),
    ("hourly-minute-60", hourly(60), "minute 60 is outside 0-59"),
    ("hourly-minute-negative", hourly(-1), "minute -1"),
    ("daily-hour-24", daily(24, 0), "hour 24 is outside 0-23"),
    ("weekly-day-0", weekly(0, 0, 0), "day_of_week"),
    ("weekly-day-8", weekly(8, 0, 0), "day_of_week"),
    ("monthly-day-0", monthly(0, 0, 0), "day 0"),
    ("monthly-day-32", monthly(32, 0, 0), "day 32"),
    ("yearly-month-13", yearly(13, 1, 0, 0), "month 13"),
    ("yearly-february-30", yearly(2, 30, 0, 0), "day (of month 2) 30"),
    ("yearly-april-31", yearly(4, 31, 0, 0), "day (of month 4) 31"),
    ("cron-4-fields", cron("* * * *"), "has 4 fields"),
    ("cron-6-fields", cron("0 * * * * *"), "has 6 fields"),
    ("cron-minute-60", cron("60 * * * *"), "minute '60' is outside 0-59"),
    ("cron-step-0", cron("*/0 * * * *"), "step '0' must be a positive number"),
    ("cron-reversed-range", cron("0 5-3 * * *"), "hour '5-3'"),
    ("cron-word", cron("0 noon * * *"), "hour value 'noon' is not a number"),
    ("cron-unknown-name", cron("0 0 * foo *"), "month value 'foo'"),
    ("cron-dow-8", cron("0 0 * * 8"), "day of week '8'"),
    ("cron-empty", cron(""), "has 0 fields"),
]


@pytest.mark.parametrize(("rule", "fragment"), [c[1:] for c in BAD_RULES], ids=[c[0] for c in BAD_RULES])
def test_invalid_rule_is_refused_with_a_message_naming_the_problem(
    rule: schedules_pb2.ScheduleRule, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_rules([daily(0, 0), rule])

    assert fragment in str(raised.value)
    assert "rules[1]" in str(raised.value) or "cron" in str(raised.value)


def test_rules_must_not_be_empty_or_too_many() -> None:
    with pytest.raises(InvalidArgument, match="at least one rule"):
        validate_rules([])
    with pytest.raises(InvalidArgument, match="at most 64"):
        validate_rules([hourly(0)] * 65)


def test_cron_that_never_matches_says_so() -> None:
    with pytest.raises(InvalidArgument, match="never matches"):
        CronExpression.parse("0 0 30 2 *").next_after(utc(2024, 1, 1))
