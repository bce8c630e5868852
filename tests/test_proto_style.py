"""The protos are the product's public face: every element documented, enums well-formed."""

from __future__ import annotations

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


def test_every_proto_is_in_a_versioned_jobmesh_package(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    assert files, "no protos found"
    for f in files:
        assert f.package == "jobmesh.v1", f"{f.name}: package {f.package}"
        assert f.name.startswith("jobmesh/v1/"), f"{f.name} must live in protos/jobmesh/v1/"


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
