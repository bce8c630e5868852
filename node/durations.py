"""Durations at the API boundary: `google.protobuf.Duration` on the wire, seconds inside.

Every duration of the public protos is a Duration (issue: no `double *_s` fields); these helpers
are the one place that checks a wire value and converts it.
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from node.errors import InvalidArgument

# The range google.protobuf.Duration documents: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999


def seconds_from_proto(duration: Duration, field: str) -> float:
    """The seconds of a wire Duration; InvalidArgument naming `field` when it is malformed."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS
        or not -_MAX_NANOS <= nanos <= _MAX_NANOS
        or (seconds < 0 < nanos)
        or (nanos < 0 < seconds)
    ):
        raise InvalidArgument(
            f"{field} (seconds {seconds}, nanos {nanos}) is not a valid google.protobuf.Duration"
        )
    return seconds + nanos / 1e9


def optional_seconds(message: Message, name: str, field: str) -> float | None:
    """The seconds of the Duration field `name` of `message`, or None when it is unset."""
    if not message.HasField(name):
        return None
    return seconds_from_proto(getattr(message, name), field)


def duration_from_seconds(seconds: float) -> Duration:
    """A Duration of `seconds` (rounded to microseconds, the journal's unit)."""
    return duration_from_us(round(seconds * 1e6))


def duration_from_us(microseconds: int) -> Duration:
    """A Duration of `microseconds`."""
    duration = Duration()
    duration.FromMicroseconds(microseconds)
    return duration
