"""Typed job properties: validation, proto conversion, and the JSON form stored in the journal.

Values are str, int, float, bool, bytes, datetime (UTC, microseconds) or a list of these.
The journal stores them as compact JSON so SQLite can filter on them (`json_extract`):
scalars as JSON scalars, bytes as `{"$b": base64}`, timestamps as `{"$t": micros}`.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument

Scalar: TypeAlias = str | int | float | bool | bytes | datetime
PropertyValue: TypeAlias = Scalar | list[Scalar]
Properties: TypeAlias = dict[str, PropertyValue]

MAX_PROPERTY_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z (what datetime holds).
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799


def validate_name(name: str, field: str) -> None:
    """Raise InvalidArgument unless `name` is a valid property name."""
    if not _NAME.fullmatch(name) or len(name) > MAX_PROPERTY_NAME_LENGTH:
        raise InvalidArgument(
            f"{field}: property name {name!r} is invalid; names match [A-Za-z_][A-Za-z0-9_.:-]* "
            f"and have at most {MAX_PROPERTY_NAME_LENGTH} characters"
        )


def datetime_to_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(micros: int) -> datetime:
    """The UTC datetime `micros` microseconds after the epoch."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


# --- proto -> stored JSON ---------------------------------------------------------------


def _scalar_from_proto(value: jobs_pb2.PropertyValue, field: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{field}: double value {number} is not finite")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "bytes_value":
        return {"$b": base64.b64encode(value.bytes_value).decode("ascii")}
    if kind == "timestamp_value":
        ts = value.timestamp_value
        if not 0 <= ts.nanos < 1_000_000_000:
            raise InvalidArgument(f"{field}: timestamp nanos {ts.nanos} is out of range (0..999999999)")
        if not MIN_TIMESTAMP_S <= ts.seconds <= MAX_TIMESTAMP_S:
            raise InvalidArgument(
                f"{field}: timestamp seconds {ts.seconds} is out of range (years 0001 to 9999 UTC)"
            )
        return {"$t": ts.seconds * 1_000_000 + ts.nanos // 1000}
    if kind == "list_value":
        raise InvalidArgument(f"{field}: lists cannot be nested")
    raise InvalidArgument(f"{field}: no value is set (set exactly one of the PropertyValue fields)")


def json_value_from_proto(value: jobs_pb2.PropertyValue, field: str) -> Any:
    """The stored JSON form of one proto value (validated)."""
    if value.WhichOneof("kind") == "list_value":
        return [
            _scalar_from_proto(item, f"{field}[{index}]")
            for index, item in enumerate(value.list_value.values)
        ]
    return _scalar_from_proto(value, field)


def value_from_proto(value: jobs_pb2.PropertyValue, field: str) -> PropertyValue:
    """The Python value of one proto value (validated)."""
    encoded = json_value_from_proto(value, field)
    if isinstance(encoded, list):
        return [_scalar_from_json(item) for item in encoded]
    return _scalar_from_json(encoded)


def encode_proto_properties(
    properties: Mapping[str, jobs_pb2.PropertyValue], field: str, max_bytes: int
) -> str | None:
    """Validate proto properties and return their stored JSON text (None when empty)."""
    if not properties:
        return None
    encoded: dict[str, Any] = {}
    for name, value in properties.items():
        validate_name(name, field)
        encoded[name] = json_value_from_proto(value, f"{field}[{name!r}]")
    return _dump_checked(encoded, field, max_bytes)


def _dump_checked(encoded: dict[str, Any], field: str, max_bytes: int) -> str:
    text = json.dumps(encoded, separators=(",", ":"), ensure_ascii=False)
    if len(text) > max_bytes:
        raise InvalidArgument(f"{field}: properties take {len(text)} bytes encoded; the limit is {max_bytes}")
    return text


def _stored_scalar_ok(value: Any) -> bool:
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict) and len(value) == 1:
        if isinstance(value.get("$b"), str):
            try:
                base64.b64decode(value["$b"], validate=True)
            except ValueError:
                return False
            return True
        micros = value.get("$t")
        return (
            type(micros) is int
            and MIN_TIMESTAMP_S * 1_000_000 <= micros <= MAX_TIMESTAMP_S * 1_000_000 + 999_999
        )
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A name twice is what no client can send (a proto map): the property index and SQLite's
    # json_extract would disagree on which value the job has.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a property name appears twice")
    return result


def check_properties_json(text: str, field: str, max_bytes: int) -> None:
    """Raise InvalidArgument unless `text` is the stored JSON form of valid properties.

    For properties that arrive already encoded (from a peer): what is stored must decode
    again on every later read, exactly like properties encoded here."""
    if len(text) > max_bytes:
        raise InvalidArgument(f"{field}: properties take {len(text)} bytes encoded; the limit is {max_bytes}")
    try:
        decoded = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{field} is not valid JSON: {str(e)[:80]}") from e
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"{field} is not a JSON object of properties")
    for name, value in decoded.items():
        validate_name(name, field)
        items = value if isinstance(value, list) else [value]
        if not all(_stored_scalar_ok(item) for item in items):
            raise InvalidArgument(f"{field}[{name!r}] is not a valid stored property value")


# --- Python values <-> stored JSON --------------------------------------------------------


def _scalar_to_json(value: object, field: str) -> Any:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidArgument(f"{field}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}: double value {value} is not finite")
        return value
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {"$t": datetime_to_micros(value)}
    raise InvalidArgument(
        f"{field}: values of type {type(value).__name__} are not supported "
        "(use str, int, float, bool, bytes, datetime or a list of these)"
    )


def value_to_json(value: object, field: str) -> Any:
    """The stored JSON form of one Python value (validated)."""
    if isinstance(value, list | tuple):
        return [_scalar_to_json(item, f"{field}[{index}]") for index, item in enumerate(value)]
    return _scalar_to_json(value, field)


def encode_properties(properties: Mapping[str, object], field: str, max_bytes: int) -> str | None:
    """Validate Python properties and return their stored JSON text (None when empty)."""
    if not properties:
        return None
    encoded: dict[str, Any] = {}
    for name, value in properties.items():
        validate_name(name, field)
        encoded[name] = value_to_json(value, f"{field}[{name!r}]")
    return _dump_checked(encoded, field, max_bytes)


def _scalar_from_json(value: Any) -> Scalar:
    if isinstance(value, dict):
        if "$b" in value:
            return base64.b64decode(value["$b"])
        return micros_to_datetime(int(value["$t"]))
    return value  # type: ignore[no-any-return]


def decode_properties(text: str | None) -> Properties:
    """Python values from stored JSON text."""
    if not text:
        return {}
    decoded: Properties = {}
    for name, value in json.loads(text).items():
        decoded[name] = (
            [_scalar_from_json(v) for v in value] if isinstance(value, list) else _scalar_from_json(value)
        )
    return decoded


# --- stored JSON -> proto -------------------------------------------------------------------


def _fill_scalar(target: jobs_pb2.PropertyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif "$b" in value:
        target.bytes_value = base64.b64decode(value["$b"])
    else:
        micros = int(value["$t"])
        target.timestamp_value.seconds, remainder = divmod(micros, 1_000_000)
        target.timestamp_value.nanos = remainder * 1000


def fill_proto_properties(target: Any, text: str | None) -> None:
    """Copy stored JSON properties into a proto map field `target`."""
    if not text:
        return
    for name, value in json.loads(text).items():
        slot = target[name]
        if isinstance(value, list):
            items = slot.list_value.values
            slot.list_value.SetInParent()
            for item in value:
                _fill_scalar(items.add(), item)
        else:
            _fill_scalar(slot, value)


def value_to_proto(value: PropertyValue, field: str = "value") -> jobs_pb2.PropertyValue:
    """A proto PropertyValue from a Python value (validated)."""
    proto = jobs_pb2.PropertyValue()
    encoded = value_to_json(value, field)
    if isinstance(encoded, list):
        proto.list_value.SetInParent()
        for item in encoded:
            _fill_scalar(proto.list_value.values.add(), item)
    else:
        _fill_scalar(proto, encoded)
    return proto


def json_value_to_proto(value: Any) -> jobs_pb2.PropertyValue:
    """A proto PropertyValue from a stored JSON form."""
    proto = jobs_pb2.PropertyValue()
    if isinstance(value, list):
        proto.list_value.SetInParent()
        for item in value:
            _fill_scalar(proto.list_value.values.add(), item)
    else:
        _fill_scalar(proto, value)
    return proto
