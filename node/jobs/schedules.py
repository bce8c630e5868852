"""Schedule rules: when a scheduled job fires (at, hourly, daily, weekly, monthly, yearly, cron).

All times are UTC. A schedule with several rules fires at the earliest next occurrence of any.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from jobmesh.v1 import schedules_pb2

from node.errors import InvalidArgument
from node.jobs.cron import CronExpression
from node.properties import MAX_TIMESTAMP_S, micros_to_datetime

MAX_RULES = 64


def _check(value: int, low: int, high: int, what: str, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: {what} {value} is outside {low}-{high}")
    return value


def validate_rule(rule: schedules_pb2.ScheduleRule, field: str) -> None:
    """Raise InvalidArgument unless `rule` is complete and in range."""
    kind = rule.WhichOneof("rule")
    if kind is None:
        raise InvalidArgument(
            f"{field}: no rule is set (set one of at, hourly, daily, weekly, monthly, yearly, cron)"
        )
    if kind == "at":
        time = rule.at.time
        if time.seconds <= 0:
            raise InvalidArgument(f"{field}.at.time is missing")
        # A later time cannot be a datetime (year 9999 is the last) and would fail when computed.
        if time.seconds > MAX_TIMESTAMP_S or not 0 <= time.nanos <= 999_999_999:
            raise InvalidArgument(
                f"{field}.at.time (seconds {time.seconds}, nanos {time.nanos}) is not a time "
                "up to 9999-12-31T23:59:59Z"
            )
        return
    if kind == "cron":
        CronExpression.parse(rule.cron)
        return
    body = getattr(rule, kind)
    _check(body.minute, 0, 59, "minute", field)
    if kind != "hourly":
        _check(body.hour, 0, 23, "hour", field)
    if kind == "weekly":
        _check(body.day_of_week, 1, 7, "day_of_week (1 Monday .. 7 Sunday)", field)
    if kind in ("monthly", "yearly"):
        _check(body.day, 1, 31, "day", field)
    if kind == "yearly":
        _check(body.month, 1, 12, "month", field)
        # 2024 is a leap year: February 29 exists, February 30 never does.
        _check(body.day, 1, calendar.monthrange(2024, body.month)[1], f"day (of month {body.month})", field)


def validate_rules(rules: Sequence[schedules_pb2.ScheduleRule]) -> None:
    """Raise InvalidArgument unless there are 1..MAX_RULES valid rules."""
    if not rules:
        raise InvalidArgument("rules is empty; a schedule needs at least one rule")
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"rules has {len(rules)} rules; at most {MAX_RULES}")
    for index, rule in enumerate(rules):
        validate_rule(rule, f"rules[{index}]")


def _next_day_match(
    start: datetime, matches: object, hour: int, minute: int, after: datetime
) -> datetime | None:
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(366 * 8 + 1):  # leap years: Feb 29 recurs within 8 years
        if matches(day):  # type: ignore[operator]
            candidate = day.replace(hour=hour, minute=minute)
            if candidate > after:
                return candidate
        day += timedelta(days=1)
    return None


def next_occurrence(rule: schedules_pb2.ScheduleRule, after: datetime) -> datetime | None:
    """The first occurrence of `rule` strictly after `after` (None: never again)."""
    kind = rule.WhichOneof("rule")
    if kind == "at":
        at = micros_to_datetime(rule.at.time.seconds * 1_000_000 + rule.at.time.nanos // 1000)
        return at if at > after else None
    if kind == "cron":
        return CronExpression.parse(rule.cron).next_after(after)
    if kind == "hourly":
        candidate = after.replace(minute=rule.hourly.minute, second=0, microsecond=0)
        return candidate if candidate > after else candidate + timedelta(hours=1)
    if kind == "daily":
        return _next_day_match(after, lambda d: True, rule.daily.hour, rule.daily.minute, after)
    if kind == "weekly":
        w = rule.weekly
        return _next_day_match(after, lambda d: d.isoweekday() == w.day_of_week, w.hour, w.minute, after)
    if kind == "monthly":
        m = rule.monthly
        return _next_day_match(after, lambda d: d.day == m.day, m.hour, m.minute, after)
    if kind == "yearly":
        y = rule.yearly
        return _next_day_match(
            after, lambda d: d.month == y.month and d.day == y.day, y.hour, y.minute, after
        )
    return None


def next_time_us(rules: Sequence[schedules_pb2.ScheduleRule], after_us: int) -> int | None:
    """The earliest next occurrence of any rule after `after_us` (microseconds; None: never)."""
    after = micros_to_datetime(after_us).astimezone(UTC)
    times = [t for t in (next_occurrence(r, after) for r in rules) if t is not None]
    if not times:
        return None
    first = min(times)
    return int(first.timestamp()) * 1_000_000 + first.microsecond


def encode_rules(rules: Sequence[schedules_pb2.ScheduleRule]) -> bytes:
    """Rules as stored in the journal."""
    return schedules_pb2.AddScheduleRequest(rules=rules).SerializeToString()


def decode_rules(data: bytes) -> list[schedules_pb2.ScheduleRule]:
    """Rules from their stored form."""
    return list(schedules_pb2.AddScheduleRequest.FromString(data).rules)
