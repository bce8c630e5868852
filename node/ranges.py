"""Allowed ranges of numeric settings, declared beside each field and checked in one place.

A setting declares its range in its type: `probe_interval_s: Annotated[float, POSITIVE_S] = 0.2`.
`check_ranges` walks a config dataclass tree and refuses, naming the dotted key, any number that
is not finite, not whole where an int is declared, or outside its range; a test walks every
numeric setting and fails if one declares no range, so a new timing cannot forget its bounds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from node.errors import ConfigError

MAX_DURATION_S = 100 * 365 * 24 * 3600.0
"""Upper bound of every duration setting (100 years): larger values overflow timers and dates."""
MAX_COUNT = 2**63 - 1
"""Upper bound of counts stored in SQLite (a signed 64-bit integer)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: `minimum`..`maximum`, plus `also` (e.g. -1: forever)."""

    minimum: float
    maximum: float
    above: bool = False
    """True: the minimum itself is excluded (`> minimum`)."""
    also: tuple[float, ...] = ()
    """Values allowed outside the range, with a meaning of their own (-1 = forever, all cores)."""
    unit: str = ""
    """Shown in messages: `s`, `bytes`."""

    def problem(self, value: float) -> str | None:
        """Why `value` is refused, or None."""
        if value in self.also:
            return None
        low_ok = value > self.minimum if self.above else value >= self.minimum
        if low_ok and value <= self.maximum:
            return None
        return f"it must be {self.describe()}"

    def describe(self) -> str:
        """`> 0 and <= 3153600000 s`, `-1 or 0 .. 100`."""
        unit = f" {self.unit}" if self.unit else ""
        low = f"> {_number(self.minimum)}" if self.above else f">= {_number(self.minimum)}"
        text = f"{low} and <= {_number(self.maximum)}{unit}"
        if self.also:
            text += f" (or {' or '.join(_number(v) for v in self.also)})"
        return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


POSITIVE_S = Range(0, MAX_DURATION_S, above=True, unit="s")
"""A timing that must pass: an interval, a timeout."""
NON_NEGATIVE_S = Range(0, MAX_DURATION_S, unit="s")
"""A duration where 0 means none or immediately."""
COUNT = Range(0, MAX_COUNT)
"""A count or limit where 0 is allowed (often: no limit)."""


def range_of(hint: Any) -> Range | None:
    """The Range declared in an `Annotated[...]` type hint, or None."""
    if typing.get_origin(hint) is typing.Annotated:
        for extra in typing.get_args(hint)[1:]:
            if isinstance(extra, Range):
                return extra
    return None


def is_number_hint(hint: Any) -> bool:
    """Whether a (possibly Annotated) type hint is int or float (bool excluded)."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    return base in (int, float)


def check_ranges(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first numeric setting in the dataclass tree outside its range."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        allowed = range_of(hints[f.name])
        if allowed is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{key} is {value!r}; it must be a finite number ({allowed.describe()})")
        problem = allowed.problem(value)
        if problem is not None:
            raise ConfigError(f"{key} is {_number(value)}; {problem}")
