"""The one place wire durations (google.protobuf.Duration) are checked and converted."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2

from node.durations import (
    MAX_DURATION_SECONDS,
    duration_from_seconds,
    duration_from_us,
    optional_seconds,
    seconds_from_proto,
)
from node.errors import InvalidArgument


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        (Duration(), 0.0),
        (Duration(seconds=2, nanos=500_000_000), 2.5),
        (Duration(nanos=-250_000_000), -0.25),
        (Duration(seconds=-3, nanos=-500_000_000), -3.5),
        (Duration(seconds=MAX_DURATION_SECONDS), float(MAX_DURATION_SECONDS)),
    ],
)
def test_a_valid_duration_becomes_its_seconds(duration: Duration, seconds: float) -> None:
    assert seconds_from_proto(duration, "d") == seconds


@pytest.mark.parametrize(
    "duration",
    [
        Duration(seconds=1, nanos=-1),  # the signs of seconds and nanos differ
        Duration(seconds=-1, nanos=1),
        Duration(nanos=1_000_000_000),  # nanos beyond one second
        Duration(seconds=MAX_DURATION_SECONDS + 1),  # beyond about 10,000 years
        Duration(seconds=-(2**63)),
    ],
)
def test_a_malformed_duration_is_invalid_argument_naming_the_field(duration: Duration) -> None:
    with pytest.raises(InvalidArgument, match=r"^job\.timeout \(seconds -?\d+, nanos -?\d+\) is not a valid"):
        seconds_from_proto(duration, "job.timeout")


def test_an_unset_duration_field_is_none_and_a_set_zero_is_zero() -> None:
    job = jobs_pb2.NewJob()
    assert optional_seconds(job, "timeout", "job.timeout") is None
    job.timeout.SetInParent()
    assert optional_seconds(job, "timeout", "job.timeout") == 0.0


def test_durations_are_made_to_the_microsecond() -> None:
    assert duration_from_seconds(1.5) == Duration(seconds=1, nanos=500_000_000)
    assert duration_from_seconds(0.0000004) == Duration()  # below a microsecond: rounded away
    assert duration_from_us(-1_250_000) == Duration(seconds=-1, nanos=-250_000_000)
