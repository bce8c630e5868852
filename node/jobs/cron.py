"""Cron expressions (5 fields: minute hour day-of-month month day-of-week), evaluated in UTC.

Supports `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, month and weekday
names (`jan`, `mon`), and day-of-week 0 or 7 for Sunday. As in classic cron, when both
day-of-month and day-of-week are restricted, a day matches if either does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from node.errors import InvalidArgument

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_MAX_SEARCH_DAYS = 366 * 5


def _number(text: str, names: dict[str, int], field: str, expression: str) -> int:
    value = names.get(text.lower())
    if value is not None:
        return value
    if not text.isdigit():
        raise InvalidArgument(f"cron {expression!r}: {field} value {text!r} is not a number")
    return int(text)


def _parse_field(
    text: str, field: str, low: int, high: int, names: dict[str, int], expression: str
) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidArgument(
                    f"cron {expression!r}: {field} step {step_text!r} must be a positive number"
                )
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            start, end = _number(a, names, field, expression), _number(b, names, field, expression)
        else:
            start = _number(body, names, field, expression)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise InvalidArgument(f"cron {expression!r}: {field} {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """A parsed cron expression; `next_after(t)` gives the first matching minute after `t`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse five whitespace-separated fields, or raise InvalidArgument."""
        parts = text.split()
        if len(parts) != 5:
            raise InvalidArgument(
                f"cron {text!r} has {len(parts)} fields; write 5: minute hour day-of-month month day-of-week"
            )
        parsed = [
            _parse_field(part, name, low, high, names, text)
            for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
        ]
        weekdays = frozenset(d % 7 for d in parsed[4])
        return cls(
            text, parsed[0], parsed[1], parsed[2], parsed[3], weekdays, parts[2] != "*", parts[4] != "*"
        )

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after `after` (UTC)."""
        t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = t.replace(hour=0, minute=0)
        for _ in range(_MAX_SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= t:
                            return candidate
            day += timedelta(days=1)
        raise InvalidArgument(f"cron {self.text!r} never matches (e.g. 30 February)")
