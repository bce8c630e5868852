"""Property templates for FindJobs: conditions ANDed within a template, templates ORed.

Templates compile to SQL inside SQLite, so only matching rows reach Python, in two forms with
the same meaning: a predicate over the journal's JSON `properties` column (`templates_to_sql`), and
a SELECT of the matching job seqs from the property index `job_properties`
(`templates_to_seq_sql`, node/journal/property_index.py), which searches an index instead of
reading every job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument
from node.properties import json_value_from_proto, json_value_to_proto, validate_name, value_to_json


class PropertyKind(IntEnum):
    """The type of a property as the index `job_properties` stores it (column `kind`)."""

    BOOL = 1
    """true/false, stored 1/0."""
    NUMBER = 2
    """an integer or a real, compared as numbers (1 = 1.0)."""
    TEXT = 3
    LIST = 4
    """the list's JSON text as SQLite renders it (`json(...)`)."""
    BYTES = 5
    """the base64 text of `{"$b": ...}`."""
    TIMESTAMP = 6
    """the microseconds of `{"$t": ...}`."""


class Operator(Enum):
    """How a condition compares a property with its value."""

    EQUAL = "="
    LESS = "<"
    LESS_OR_EQUAL = "<="
    GREATER = ">"
    GREATER_OR_EQUAL = ">="

    @classmethod
    def from_proto(cls, value: int, field: str) -> Operator:
        """The operator for a proto ComparisonOperator, or InvalidArgument."""
        mapping: dict[int, Operator] = {
            jobs_pb2.COMPARISON_OPERATOR_EQUAL: cls.EQUAL,
            jobs_pb2.COMPARISON_OPERATOR_LESS: cls.LESS,
            jobs_pb2.COMPARISON_OPERATOR_LESS_OR_EQUAL: cls.LESS_OR_EQUAL,
            jobs_pb2.COMPARISON_OPERATOR_GREATER: cls.GREATER,
            jobs_pb2.COMPARISON_OPERATOR_GREATER_OR_EQUAL: cls.GREATER_OR_EQUAL,
        }
        if value not in mapping:
            raise InvalidArgument(
                f"{field}: operator is unspecified or unknown ({value}); set one of =, <, <=, >, >="
            )
        return mapping[value]

    def to_proto(self) -> jobs_pb2.ComparisonOperator.ValueType:
        """The proto enum value."""
        return {
            Operator.EQUAL: jobs_pb2.COMPARISON_OPERATOR_EQUAL,
            Operator.LESS: jobs_pb2.COMPARISON_OPERATOR_LESS,
            Operator.LESS_OR_EQUAL: jobs_pb2.COMPARISON_OPERATOR_LESS_OR_EQUAL,
            Operator.GREATER: jobs_pb2.COMPARISON_OPERATOR_GREATER,
            Operator.GREATER_OR_EQUAL: jobs_pb2.COMPARISON_OPERATOR_GREATER_OR_EQUAL,
        }[self]


@dataclass(frozen=True)
class Condition:
    """One condition: property `name` compared by `operator` with `value` (stored JSON form)."""

    name: str
    operator: Operator
    value: Any

    @classmethod
    def create(cls, name: str, operator: Operator, value: object, field: str = "condition") -> Condition:
        """Validate and build a condition from a Python value."""
        validate_name(name, field)
        return cls._checked(name, operator, value_to_json(value, f"{field}.value"), field)

    @classmethod
    def from_proto(cls, proto: jobs_pb2.PropertyCondition, field: str) -> Condition:
        """Validate and build a condition from its proto."""
        validate_name(proto.name, f"{field}.name")
        operator = Operator.from_proto(proto.operator, f"{field}.operator")
        if not proto.HasField("value"):
            raise InvalidArgument(f"{field}.value is missing")
        return cls._checked(proto.name, operator, json_value_from_proto(proto.value, f"{field}.value"), field)

    @classmethod
    def _checked(cls, name: str, operator: Operator, value: Any, field: str) -> Condition:
        orderable = isinstance(value, str | int | float) and not isinstance(value, bool)
        orderable = orderable or (isinstance(value, dict) and "$t" in value)
        if operator is not Operator.EQUAL and not orderable:
            raise InvalidArgument(
                f"{field}: operator {operator.value} needs a string, number or timestamp value"
            )
        return cls(name, operator, value)

    def to_proto(self) -> jobs_pb2.PropertyCondition:
        """The proto form."""
        return jobs_pb2.PropertyCondition(
            name=self.name, operator=self.operator.to_proto(), value=json_value_to_proto(self.value)
        )

    def to_sql(self) -> tuple[str, list[Any]]:
        """A SQL predicate over the `properties` column, and its parameters."""
        path = '$."' + self.name + '"'
        op = self.operator.value
        value = self.value
        if isinstance(value, bool):
            return "json_type(properties, ?) = ?", [path, "true" if value else "false"]
        if isinstance(value, int | float):
            return (
                f"(json_type(properties, ?) IN ('integer', 'real') AND json_extract(properties, ?) {op} ?)",
                [path, path, value],
            )
        if isinstance(value, str):
            return f"(json_type(properties, ?) = 'text' AND json_extract(properties, ?) {op} ?)", [
                path,
                path,
                value,
            ]
        if isinstance(value, list):
            return "(json_type(properties, ?) = 'array' AND json_extract(properties, ?) = json(?))", [
                path,
                path,
                json.dumps(value, separators=(",", ":"), ensure_ascii=False),
            ]
        if "$b" in value:
            sub = path + '."$b"'
            return "json_extract(properties, ?) = ?", [sub, value["$b"]]
        sub = path + '."$t"'
        return f"(json_type(properties, ?) = 'integer' AND json_extract(properties, ?) {op} ?)", [
            sub,
            sub,
            value["$t"],
        ]

    def to_index_sql(self) -> tuple[str, list[Any]]:
        """A SQL predicate over `job_properties` (name, kind, value) selecting what `to_sql` matches."""
        op = self.operator.value
        value = self.value
        if isinstance(value, bool):
            return f"name = ? AND kind = {PropertyKind.BOOL:d} AND value = ?", [self.name, int(value)]
        if isinstance(value, int | float):
            return f"name = ? AND kind = {PropertyKind.NUMBER:d} AND value {op} ?", [self.name, value]
        if isinstance(value, str):
            return f"name = ? AND kind = {PropertyKind.TEXT:d} AND value {op} ?", [self.name, value]
        if isinstance(value, list):
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            return f"name = ? AND kind = {PropertyKind.LIST:d} AND value = json(?)", [self.name, text]
        if "$b" in value:
            return f"name = ? AND kind = {PropertyKind.BYTES:d} AND value = ?", [self.name, value["$b"]]
        return f"name = ? AND kind = {PropertyKind.TIMESTAMP:d} AND value {op} ?", [self.name, value["$t"]]


@dataclass(frozen=True)
class Template:
    """Conditions that must all hold (AND)."""

    conditions: tuple[Condition, ...]

    @classmethod
    def from_proto(cls, proto: jobs_pb2.PropertyTemplate, field: str) -> Template:
        """Validate and build a template from its proto."""
        return cls(
            tuple(Condition.from_proto(c, f"{field}.conditions[{i}]") for i, c in enumerate(proto.conditions))
        )

    def to_sql(self) -> tuple[str, list[Any]]:
        """A SQL predicate (TRUE when there are no conditions) and its parameters."""
        if not self.conditions:
            return "1", []
        parts, params = [], []
        for condition in self.conditions:
            sql, condition_params = condition.to_sql()
            parts.append(sql)
            params.extend(condition_params)
        return "(" + " AND ".join(parts) + ")", params


def templates_to_sql(templates: Sequence[Template]) -> tuple[str, list[Any]]:
    """A SQL predicate matching any template (OR); TRUE when there are none."""
    if not templates:
        return "1", []
    parts, params = [], []
    for template in templates:
        sql, template_params = template.to_sql()
        parts.append(sql)
        params.extend(template_params)
    return "(" + " OR ".join(parts) + ")", params


def templates_to_seq_sql(
    templates: Sequence[Template], bound: tuple[str, Any] | None = None, topic: str | None = None
) -> tuple[str, list[Any]] | None:
    """A SELECT of the `job_seq` of every job that may match a template, from the property index:
    a superset of the matches, to be checked with `unsearched_sql`; None when that is every job
    (no templates, or one without conditions).

    Each template is searched by one of its conditions, its first equality if it has one (an
    equality is one key range, usually the narrowest), else its first condition; its other
    conditions are left to `unsearched_sql` on the rows read: intersecting two index ranges
    would read both whole (measured 3x slower when one is broad). Templates unite (OR).
    `bound` (a predicate on `job_seq` with one parameter, and that parameter, e.g.
    `("job_seq < ?", 1234)`) narrows each search to one side of a page; `topic` to the jobs of
    one topic (the index's key is (name, kind, value, topic, job_seq): an equality and a topic
    give the seqs in order). Without a topic the seqs come out sorted (ORDER BY job_seq).
    """
    if not templates or any(not t.conditions for t in templates):
        return None
    selects: list[str] = []
    params: list[Any] = []
    for template in templates:
        sql, condition_params = _searched(template).to_index_sql()
        params += condition_params
        if topic is not None:
            sql += " AND topic = ?"
            params.append(topic)
        if bound is not None:
            sql += f" AND {bound[0]}"
            params.append(bound[1])
        selects.append(f"SELECT job_seq FROM job_properties WHERE {sql}")
    return " UNION ".join(selects), params


def _searched(template: Template) -> Condition:
    equalities = [c for c in template.conditions if c.operator is Operator.EQUAL]
    return (equalities or list(template.conditions))[0]


def unsearched_sql(templates: Sequence[Template]) -> tuple[str, list[Any]]:
    """The JSON predicate that, on the rows `templates_to_seq_sql` gives, leaves exactly the
    matches: one template's conditions but the one searched (the index holds exactly what the
    JSON holds); with several templates all of them, since a row found for one template may
    match only another."""
    if len(templates) == 1:
        searched = _searched(templates[0])
        return Template(tuple(c for c in templates[0].conditions if c is not searched)).to_sql()
    return templates_to_sql(templates)
