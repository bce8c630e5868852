"""Proto builders for requests, made by the node's own conversions (`node.properties`, `node.client`).

Valid values go through the same code a client uses, so a test never re-implements the
encoding it checks. Requests that must be refused need values the node's conversions would
reject: build those with `raw_value` / `raw_timestamp_value`, which set proto fields as given.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2

from node import JobState, client
from node.properties import PropertyValue, value_to_proto
from node.templates import Operator

PropertyInput = PropertyValue
"""A Python property value: str, int, float, bool, bytes, datetime, or a list of these."""

__all__ = [
    "PropertyInput",
    "condition",
    "new_job",
    "prop",
    "raw_timestamp_value",
    "raw_value",
    "state_name",
    "template",
]


def state_name(state: int) -> str:
    """`SUCCEEDED` for JOB_STATE_SUCCEEDED: the node's own JobState name (for assertion messages)."""
    return JobState(state).name


def prop(value: PropertyInput) -> jobs_pb2.PropertyValue:
    """A PropertyValue from a Python value, as a client makes it (a list becomes list_value)."""
    return value_to_proto(value)


def new_job(topic: str, payload: bytes = b"", **properties: PropertyInput) -> jobs_pb2.NewJob:
    """A NewJob with typed properties, as `node.client.new_job` makes it."""
    return client.new_job(topic, properties, payload)


def raw_value(**field: Any) -> jobs_pb2.PropertyValue:
    """A PropertyValue with its fields set as given, unchecked (`raw_value(double_value=nan)`)."""
    return jobs_pb2.PropertyValue(**field)


def raw_timestamp_value(seconds: int, nanos: int = 0) -> jobs_pb2.PropertyValue:
    """A timestamp PropertyValue, unchecked (out of range or with invalid nanos, if asked)."""
    return raw_value(timestamp_value=Timestamp(seconds=seconds, nanos=nanos))


def condition(
    name: str, operator: str, value: PropertyInput | jobs_pb2.PropertyValue
) -> jobs_pb2.PropertyCondition:
    """A PropertyCondition; `operator` is one of = < <= > >=; a proto `value` is used as it is."""
    proto_value = value if isinstance(value, jobs_pb2.PropertyValue) else prop(value)
    return jobs_pb2.PropertyCondition(name=name, operator=Operator(operator).to_proto(), value=proto_value)


def template(*conditions: jobs_pb2.PropertyCondition) -> jobs_pb2.PropertyTemplate:
    """A PropertyTemplate: every condition must hold."""
    return jobs_pb2.PropertyTemplate(conditions=list(conditions))


def duration(seconds: float) -> Duration:
    """A `google.protobuf.Duration` of `seconds` (negative ones too, to send invalid values)."""
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value
