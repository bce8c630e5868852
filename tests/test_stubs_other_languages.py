"""`scripts/gen-stubs LANG` makes stubs for languages other than Python from the same protos."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN_STUBS = ROOT / "scripts" / "gen_stubs.py"
NODE_TYPES_TOOL = ROOT / "examples" / "node" / "node_modules" / ".bin" / "proto-loader-gen-types"
DEBIAN_HINT = "apt-get install protobuf-compiler protobuf-compiler-grpc (scripts/setup-polyglot does)"


def gen_stubs(lang: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_STUBS), lang, "--out", str(out)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("lang", "plugin", "expected"),
    [
        (
            "cpp",
            "grpc_cpp_plugin",
            ["jobmesh/v1/workers.pb.h", "jobmesh/v1/workers.grpc.pb.cc", "jobmesh/v1/jobs.pb.cc"],
        ),
        ("ruby", "grpc_ruby_plugin", ["jobmesh/v1/workers_pb.rb", "jobmesh/v1/workers_services_pb.rb"]),
        ("php", "grpc_php_plugin", ["Jobmesh/V1/WorkAssignment.php", "Jobmesh/V1/WorkerServiceClient.php"]),
    ],
)
def test_gen_stubs_writes_messages_and_services_for_a_protoc_language(
    tmp_path: Path, lang: str, plugin: str, expected: list[str]
) -> None:
    if shutil.which("protoc") is None or shutil.which(plugin) is None:
        pytest.skip(f"protoc and {plugin} are not installed: {DEBIAN_HINT}")

    result = gen_stubs(lang, tmp_path)

    assert result.returncode == 0, result.stderr
    missing = [name for name in expected if not (tmp_path / name).is_file()]
    assert not missing, f"not generated: {missing}"


def test_gen_stubs_writes_typescript_types_for_node(tmp_path: Path) -> None:
    if not NODE_TYPES_TOOL.exists() or shutil.which("node") is None:
        pytest.skip(
            "examples/node has no node_modules: run `npm install` there (scripts/setup-polyglot does)"
        )

    result = gen_stubs("node", tmp_path)

    assert result.returncode == 0, result.stderr
    assignment = (tmp_path / "jobmesh" / "v1" / "WorkAssignment.ts").read_text()
    assert "'job_id'?: (string);" in assignment, "field names keep their proto case"
    assert "Reports must echo it" in assignment, "the proto comments come along"


def test_gen_stubs_names_the_languages_it_knows_when_given_another(tmp_path: Path) -> None:
    result = gen_stubs("cobol", tmp_path)

    assert result.returncode != 0
    assert "unknown language 'cobol'" in result.stderr
    assert "cpp" in result.stderr
