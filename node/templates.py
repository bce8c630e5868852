"""Property templates for FindJobs: conditions ANDed within a template, templates ORed.

Templates compile to SQL over the journal's JSON `properties` column, so filtering runs
inside SQLite and only matching rows reach Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument
from node.properties import json_value_from_proto, json_value_to_proto, validate_name, value_to_json


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
