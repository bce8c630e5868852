"""Text forms of typed values for the CLI: `name=value`, `name:int=5`, `name:str[]=a,b`."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from node.errors import InvalidArgument
from node.properties import PropertyValue, Scalar
from node.templates import Condition, Operator

TYPES = ("str", "int", "double", "bool", "bytes", "time")
TYPE_HELP = (
    "NAME=VALUE is a string; give a type with NAME:TYPE=VALUE, TYPE one of "
    "str, int, double, bool, bytes (base64), time (ISO 8601); a list with NAME:TYPE[]=V1,V2"
)


def _scalar(kind: str, raw: str, where: str) -> Scalar:
    try:
        if kind == "str":
            return raw
        if kind == "int":
            return int(raw)
        if kind == "double":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if kind == "bytes":
            return base64.b64decode(raw, validate=True)
        if kind == "time":
            return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, binascii.Error) as e:
        raise InvalidArgument(f"{where}: {raw!r} is not a valid {kind}") from e
    raise InvalidArgument(f"{where}: unknown type {kind!r}; use one of {', '.join(TYPES)}")


def parse_typed_value(name_and_type: str, raw: str) -> tuple[str, PropertyValue]:
    """`name[:type[[]]]` and the raw text -> (name, typed value)."""
    name, _, kind = name_and_type.partition(":")
    kind = kind or "str"
    where = f"property {name!r}"
    if kind.endswith("[]"):
        item_kind = kind[:-2]
        items = [] if raw == "" else raw.split(",")
        return name, [_scalar(item_kind, item, where) for item in items]
    return name, _scalar(kind, raw, where)


def parse_assignment(text: str) -> tuple[str, PropertyValue]:
    """`NAME[:TYPE]=VALUE` -> (name, value)."""
    head, sep, raw = text.partition("=")
    if not sep or not head:
        raise InvalidArgument(f"property {text!r} is malformed; {TYPE_HELP}")
    return parse_typed_value(head, raw)


def parse_condition(text: str) -> Condition:
    """`NAME[:TYPE]<op>VALUE` with op one of =, <, <=, >, >=."""
    positions = [i for i, ch in enumerate(text) if ch in "<>="]
    if not positions or positions[0] == 0:
        raise InvalidArgument(
            f"condition {text!r} is malformed; write NAME=VALUE, NAME>=VALUE, NAME<VALUE, ..."
        )
    start = positions[0]
    op = text[start : start + 2] if text[start : start + 2] in ("<=", ">=") else text[start]
    name, value = parse_typed_value(text[:start], text[start + len(op) :])
    return Condition.create(name, Operator(op), value, f"condition {text!r}")


def parse_json_property(name_and_type: str, value: object, where: str) -> tuple[str, PropertyValue]:
    """A property of a JSON Lines job: plain JSON values take their JSON type (string, int,
    double, bool, list); `"name:TYPE": "text"` parses text as on the command line (for time, bytes)."""
    name, _, kind = name_and_type.partition(":")
    if kind:
        if isinstance(value, list):
            return name, [_scalar(kind.removesuffix("[]"), str(item), where) for item in value]
        if not isinstance(value, str):
            raise InvalidArgument(f"{where}: a typed property {name_and_type!r} takes its value as text")
        return parse_typed_value(name_and_type, value)
    if isinstance(value, list):
        return name, [_json_scalar(item, where) for item in value]
    return name, _json_scalar(value, where)


def _json_scalar(value: object, where: str) -> Scalar:
    if isinstance(value, str | bool | int | float):
        return value
    raise InvalidArgument(
        f"{where}: {value!r} is not a string, number, bool or list; "
        'give other types as "name:TYPE": "text", e.g. "when:time": "2026-01-01T00:00:00Z"'
    )
