"""The protos are the product's public face: every element documented, enums well-formed."""

from __future__ import annotations

import re
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTOS = sorted(PROTO_ROOT.rglob("*.proto"))

# Paths into FileDescriptorProto (see descriptor.proto field numbers).
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_ENUM_VALUE, _METHOD = 2, 2


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "protos.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(p.relative_to(PROTO_ROOT)) for p in PROTOS),
        ]
    )
    assert code == 0, "protoc failed"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(proto: descriptor_pb2.FileDescriptorProto) -> list[tuple[str, tuple[int, ...]]]:
    """(name, source path) of every service, method, message, field, enum and enum value."""
    found: list[tuple[str, tuple[int, ...]]] = []

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        found.append((f"{prefix}{e.name}", path))
        for i, v in enumerate(e.value):
            found.append((f"{prefix}{e.name}.{v.name}", (*path, _ENUM_VALUE, i)))

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        if m.options.map_entry:
            return
        name = f"{prefix}{m.name}"
        found.append((name, path))
        for i, f in enumerate(m.field):
            found.append((f"{name}.{f.name}", (*path, _FIELD, i)))
        for i, nested in enumerate(m.nested_type):
            message(nested, (*path, _NESTED, i), f"{name}.")
        for i, e in enumerate(m.enum_type):
            enum(e, (*path, _NESTED_ENUM, i), f"{name}.")

    for i, s in enumerate(proto.service):
        found.append((s.name, (_SERVICE, i)))
        for j, method in enumerate(s.method):
            found.append((f"{s.name}.{method.name}", (_SERVICE, i, _METHOD, j)))
    for i, m in enumerate(proto.message_type):
        message(m, (_MESSAGE, i), "")
    for i, e in enumerate(proto.enum_type):
        enum(e, (_ENUM, i), "")
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    descriptors = _descriptor_set(tmp_path_factory.mktemp("protos"))
    return [f for f in descriptors.file if f.package.startswith("jobmesh.")]


# The public contract, and the node-to-node protocol outside its compatibility promise.
PUBLIC, PEER = "jobmesh.v1", "jobmesh.peer.v1"


def test_every_proto_is_in_a_versioned_jobmesh_package(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    assert files, "no protos found"
    for f in files:
        assert f.package in (PUBLIC, PEER), f"{f.name}: package {f.package}"
        folder = f.package.replace(".", "/") + "/"
        assert f.name.startswith(folder), f"{f.name} must live in protos/{folder}"


def test_the_peer_protocol_says_it_is_outside_the_compatibility_promise(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    peer = [f for f in files if f.package == PEER]
    assert {f.name for f in peer} == {
        f"jobmesh/peer/v1/{name}.proto" for name in ("cluster", "gather", "membership", "transfer")
    }
    for f in peer:
        header = (PROTO_ROOT / f.name).read_text().split("\nsyntax =")[0]
        assert "OUTSIDE the public compatibility promise" in " ".join(header.split()), (
            f"{f.name}: its header must say it is outside the compatibility promise"
        )


_DURATION_SUFFIXES = ("_s", "_ms", "_us", "_seconds", "_millis")


def test_public_durations_are_google_protobuf_durations(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    # A duration is a Duration, not a number with a unit in its name (timeout_s, eta_ms, ...)
    bad = [
        f"{f.name}: {m.name}.{field.name}"
        for f in files
        if f.package == PUBLIC
        for m in _messages(f)
        for field in m.field
        if field.name.endswith(_DURATION_SUFFIXES)
    ]
    assert not bad, "durations that are not google.protobuf.Duration:\n" + "\n".join(bad)


def test_every_public_list_pages(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    # AIP-158: every List/Find method takes page_size and page_token and answers with
    # next_page_token and total_size.
    messages = {f".{f.package}.{m.name}": m for f in files for m in f.message_type}
    bad = []
    for f in files:
        for service in f.service if f.package == PUBLIC else ():
            for method in service.method:
                if not method.name.startswith(("List", "Find")):
                    continue
                request = {field.name for field in messages[method.input_type].field}
                response = {field.name for field in messages[method.output_type].field}
                if not {"page_size", "page_token"} <= request:
                    bad.append(f"{service.name}.{method.name}: request needs page_size and page_token")
                if not {"next_page_token", "total_size"} <= response:
                    bad.append(f"{service.name}.{method.name}: response needs next_page_token and total_size")
    assert not bad, "lists that do not page:\n" + "\n".join(bad)


def test_every_service_method_message_field_and_enum_value_has_a_comment(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    missing = []
    for f in files:
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location}
        missing += [f"{f.name}: {name}" for name, path in _elements(f) if not comments.get(path)]
    assert not missing, "undocumented proto elements:\n" + "\n".join(missing)


def test_enum_zero_values_are_unspecified(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for f in files:
        enums = list(f.enum_type) + [e for m in f.message_type for e in m.enum_type]
        for e in enums:
            zero = [v.name for v in e.value if v.number == 0]
            assert zero, f"{e.name}: needs a zero value"
            assert zero[0].endswith("_UNSPECIFIED"), f"{e.name}: zero value must be *_UNSPECIFIED"


def test_field_numbers_and_names_are_unique_per_message(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    for f in files:
        for m in f.message_type:
            numbers = [field.number for field in m.field]
            assert len(numbers) == len(set(numbers)), f"{m.name}: duplicate field numbers"
            reserved = {n for r in m.reserved_range for n in range(r.start, r.end)}
            assert not reserved & set(numbers), f"{m.name}: a field reuses a reserved number"


# --- naming (Google's proto style: what generated code in every language expects) -------------

_UPPER_CAMEL = re.compile(r"[A-Z][A-Za-z0-9]*")
_LOWER_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def _upper_snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).upper()


def _messages(f: descriptor_pb2.FileDescriptorProto) -> list[descriptor_pb2.DescriptorProto]:
    found: list[descriptor_pb2.DescriptorProto] = []

    def walk(m: descriptor_pb2.DescriptorProto) -> None:
        if not m.options.map_entry:
            found.append(m)
        for nested in m.nested_type:
            walk(nested)

    for m in f.message_type:
        walk(m)
    return found


def test_services_rpcs_messages_and_enums_are_upper_camel_case(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    bad = []
    for f in files:
        for s in f.service:
            if not (_UPPER_CAMEL.fullmatch(s.name) and s.name.endswith("Service")):
                bad.append(f"service {s.name} (UpperCamelCase, ending in Service)")
            bad += [f"rpc {s.name}.{m.name}" for m in s.method if not _UPPER_CAMEL.fullmatch(m.name)]
        bad += [f"message {m.name}" for m in _messages(f) if not _UPPER_CAMEL.fullmatch(m.name)]
        enums = list(f.enum_type) + [e for m in _messages(f) for e in m.enum_type]
        bad += [f"enum {e.name}" for e in enums if not _UPPER_CAMEL.fullmatch(e.name)]
    assert not bad, "names that are not UpperCamelCase:\n" + "\n".join(bad)


def test_fields_are_lower_snake_case(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    bad = [
        f"{f.name}: {m.name}.{field.name}"
        for f in files
        for m in _messages(f)
        for field in m.field
        if not _LOWER_SNAKE.fullmatch(field.name)
    ]
    bad += [
        f"{f.name}: {m.name} oneof {o.name}"
        for f in files
        for m in _messages(f)
        for o in m.oneof_decl
        if not _LOWER_SNAKE.fullmatch(o.name) and not o.name.startswith("_")  # `_x`: proto3 optional
    ]
    assert not bad, "fields that are not lower_snake_case:\n" + "\n".join(bad)


def test_enum_values_are_upper_snake_case_and_prefixed_with_their_enum(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    # Enum values share their package's namespace (C++ and proto3 scoping), so each carries
    # its enum's name as a prefix: JobState -> JOB_STATE_QUEUED.
    bad = []
    for f in files:
        for e in list(f.enum_type) + [e for m in _messages(f) for e in m.enum_type]:
            prefix = _upper_snake(e.name) + "_"
            bad += [
                f"{e.name}.{v.name} (want {prefix}...)"
                for v in e.value
                if not (_UPPER_SNAKE.fullmatch(v.name) and v.name.startswith(prefix))
            ]
    assert not bad, "badly named enum values:\n" + "\n".join(bad)


def test_field_numbers_are_unique_in_nested_messages_too(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    for f in files:
        for m in _messages(f):
            numbers = [field.number for field in m.field]
            assert len(numbers) == len(set(numbers)), f"{f.name}: {m.name}: duplicate field numbers"
            reserved = {n for r in m.reserved_range for n in range(r.start, r.end)}
            assert not reserved & set(numbers), f"{f.name}: {m.name}: a field reuses a reserved number"
            assert not set(m.reserved_name) & {field.name for field in m.field}, (
                f"{f.name}: {m.name}: a field reuses a reserved name"
            )
