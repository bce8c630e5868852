"""A seeded request mutator over the generated descriptors: every method of every service, and
hostile values for every field kind (extremes, negatives, huge strings, deep nesting, unknown
enum numbers, invalid UTF-8). The same seed gives the same requests, so a failure replays."""

from __future__ import annotations

import base64
import importlib
import pkgutil
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import jobmesh
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

F = FieldDescriptor
_INT32 = (0, -1, 1, 2**31 - 1, -(2**31))
_INT64 = (0, -1, 2**63 - 1, -(2**63), 2**53 + 1, 10**15, 315_576_000_000)  # the last: the largest Duration
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_DOUBLE = (1e308, -1e308, float("nan"), float("inf"), float("-inf"), 5e-324, -0.0, 0.5, 1e9)
_DEEP_JSON = base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()
# No '*' or '**': a pattern that wide would legitimately take the canary jobs (e.g. a worker).
_STRINGS = (
    "",
    "x" * 70_000,
    "\x00",
    "é" * 2000,
    "a/" * 600,
    "../../etc/passwd",
    "{" * 3000,
    _DEEP_JSON,
    "9" * 400,
    " ",
    "\u202e😀",
    "fuzz/a",
    "-1",
    "{nope",
)
_BYTES = (b"", b"\xff\xfe\xc0\x80", bytes(range(256)) * 400, b"\x00" * 10)
MAX_DEPTH = 4


def served_methods() -> Iterator[MethodDescriptor]:
    """Every method of every service in the generated stubs (public and node-to-node)."""
    for module_info in pkgutil.walk_packages(jobmesh.__path__, "jobmesh."):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(module_info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                yield from service.methods


def method_call(channel: grpc.Channel, method: MethodDescriptor) -> Callable[..., Any]:
    """A raw-bytes callable of `method` on `channel`, of the method's streaming kind."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kinds: dict[tuple[bool, bool], Callable[[str], Callable[..., Any]]] = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    return kinds[(method.client_streaming, method.server_streaming)](path)


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of a message descriptor."""
    return GetMessageClass(descriptor)


@dataclass(frozen=True)
class Mutation:
    """One hostile request: its bytes and what was changed (for the failure message)."""

    payload: bytes
    change: str


def _hostile_scalar(field: FieldDescriptor, rng: random.Random) -> object:
    kind = field.type
    if kind in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return rng.choice(_INT32)
    if kind in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return rng.choice(_INT64)
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return rng.choice(_UINT32)
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return rng.choice(_UINT64)
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        value = rng.choice(_DOUBLE)
        return max(min(value, 3e38), -3e38) if kind == F.TYPE_FLOAT and value == value else value
    if kind == F.TYPE_BOOL:
        return True
    if kind == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values] if field.enum_type is not None else []
        return rng.choice((-1, 65, 2**31 - 1, *known))
    if kind == F.TYPE_BYTES:
        return rng.choice(_BYTES)
    return rng.choice(_STRINGS)


def _leaves(
    descriptor: Descriptor, prefix: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every field path down to MAX_DEPTH (message fields yield themselves and their fields)."""
    for field in descriptor.fields:
        path, inner = (*prefix, field), field.message_type
        yield path
        if inner is not None and len(path) < MAX_DEPTH and not inner.GetOptions().map_entry:
            yield from _leaves(inner, path)


def field_paths(descriptor: Descriptor) -> list[tuple[FieldDescriptor, ...]]:
    """The field paths a request type's mutations go through."""
    return list(_leaves(descriptor))


def _target(message: Message, path: tuple[FieldDescriptor, ...]) -> Message:
    """The message holding the last field of `path`, created on the way (repeated: one element)."""
    for field in path[:-1]:
        if field.is_repeated:
            container = getattr(message, field.name)
            message = container[0] if len(container) else container.add()
        else:
            message = getattr(message, field.name)
    return message


def _set(message: Message, field: FieldDescriptor, rng: random.Random) -> str:
    name, entry = field.name, field.message_type
    if field.type == F.TYPE_MESSAGE and entry is not None and entry.GetOptions().map_entry:
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        mapping = getattr(message, name)
        for _ in range(rng.choice((1, 3, 2000))):
            key = _hostile_scalar(key_field, rng)
            if isinstance(key, str):
                key = f"{key[:200]}{rng.randrange(10**6)}"
            if value_field.type == F.TYPE_MESSAGE:
                mapping[key].SetInParent()
            else:
                mapping[key] = _hostile_scalar(value_field, rng)
        return f"{name}: {len(mapping)} hostile entries"
    if field.is_repeated:
        container = getattr(message, name)
        count = rng.choice((1, 5, 3000))
        for _ in range(count):
            if field.type == F.TYPE_MESSAGE:
                container.add()
            else:
                container.append(_hostile_scalar(field, rng))
        return f"{name}: {count} more elements"
    if field.type == F.TYPE_MESSAGE:
        getattr(message, name).SetInParent()
        return f"{name}: empty message"
    value = _hostile_scalar(field, rng)
    setattr(message, name, value)
    return f"{name} = {value!r:.60}"


def _invalid_utf8(field: FieldDescriptor) -> bytes:
    """A field of wire type 2 whose content is not UTF-8 (a string field gets invalid text)."""
    key = field.number << 3 | 2
    out = bytearray()
    while True:
        byte, key = key & 0x7F, key >> 7
        out.append(byte | (0x80 if key else 0))
        if not key:
            break
    return bytes(out) + b"\x02\xc3\x28"


def mutations(base: Message, rng: random.Random, per_field: int) -> Iterator[Mutation]:
    """Hostile variants of `base`: each field path `per_field` times, some with a second change."""
    descriptor: Any = base.DESCRIPTOR
    paths = field_paths(descriptor)
    for path in paths:
        for _ in range(per_field):
            request = type(base)()
            request.CopyFrom(base)
            try:
                change = _set(_target(request, path), path[-1], rng)
                if rng.random() < 0.25:
                    other = rng.choice(paths)
                    change += "; " + _set(_target(request, other), other[-1], rng)
            except (TypeError, ValueError) as e:  # a value this field's Python type refuses
                change = f"(skipped: {e})"
            yield Mutation(request.SerializeToString(), ".".join(f.name for f in path) + ": " + change)
    top: list[FieldDescriptor] = list(descriptor.fields)
    for field in top:
        if field.type == F.TYPE_STRING and not field.is_repeated:
            yield Mutation(base.SerializeToString() + _invalid_utf8(field), f"{field.name}: invalid UTF-8")
