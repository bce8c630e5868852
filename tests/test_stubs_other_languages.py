"""`scripts/gen-stubs LANG` makes stubs for languages other than Python from the same protos."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polyglot import install_command

ROOT = Path(__file__).resolve().parent.parent
GEN_STUBS = ROOT / "scripts" / "gen_stubs.py"
NODE_EXAMPLE = ROOT / "examples" / "node"
NODE_TYPES_TOOL = NODE_EXAMPLE / "node_modules" / ".bin" / "proto-loader-gen-types"

# A script, not a package: loaded from its file for its constants.
_spec = importlib.util.spec_from_file_location("gen_stubs", GEN_STUBS)
assert _spec is not None
assert _spec.loader is not None
gen_stubs = sys.modules["gen_stubs"] = importlib.util.module_from_spec(_spec)  # dataclasses need it there
_spec.loader.exec_module(gen_stubs)


def run_gen_stubs(lang: str, out: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(GEN_STUBS), lang, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def require_tools(*tools: str, group: str = "stubs") -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; install: {install_command(group)}")


@pytest.mark.parametrize(
    ("lang", "plugin", "group", "expected"),
    [
        (
            "cpp",
            "grpc_cpp_plugin",
            "stubs",
            ["jobmesh/v1/workers.pb.h", "jobmesh/v1/workers.grpc.pb.cc", "jobmesh/v1/jobs.pb.cc"],
        ),
        (
            "ruby",
            "grpc_ruby_plugin",
            "stubs",
            ["jobmesh/v1/workers_pb.rb", "jobmesh/v1/workers_services_pb.rb"],
        ),
        (
            "php",
            "grpc_php_plugin",
            "stubs",
            ["Jobmesh/V1/WorkAssignment.php", "Jobmesh/V1/WorkerServiceClient.php"],
        ),
        # Debian names grpc-java's protoc-gen-grpc-java grpc_java_plugin: either is found.
        ("java", "grpc_java_plugin", "java", ["io/jobmesh/v1/Job.java", "io/jobmesh/v1/JobServiceGrpc.java"]),
        ("go", "protoc-gen-go-grpc", "go", ["go.mod", "jobmesh/v1/jobs.pb.go", "jobmesh/v1/jobs_grpc.pb.go"]),
    ],
)
def test_gen_stubs_writes_messages_and_services_for_a_protoc_language(
    tmp_path: Path, lang: str, plugin: str, group: str, expected: list[str]
) -> None:
    require_tools("protoc", plugin, group=group)

    result = run_gen_stubs(lang, tmp_path)

    assert result.returncode == 0, result.stderr
    missing = [name for name in expected if not (tmp_path / name).is_file()]
    assert not missing, f"not generated: {missing}"


def test_go_stubs_are_the_package_of_their_module_path(tmp_path: Path) -> None:
    require_tools("protoc", "protoc-gen-go", "protoc-gen-go-grpc", group="go")

    result = run_gen_stubs("go", tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "go.mod").read_text().startswith(f"module {gen_stubs.GO_MODULE}\n")
    # Every proto's go_package is the module path plus the directory the file is generated in.
    for proto in gen_stubs.proto_files():
        go_package = re.search(r'^option go_package = "([^";]+);(\w+)";$', proto.read_text(), re.MULTILINE)
        assert go_package, f"{proto.name} has no go_package with a package name"
        directory = proto.parent.relative_to(gen_stubs.PROTO_ROOT)
        assert go_package[1] == f"{gen_stubs.GO_MODULE}/{directory}"
        generated = tmp_path / directory / f"{proto.stem}.pb.go"
        assert f"package {go_package[2]}\n" in generated.read_text()


@pytest.mark.parametrize(
    ("lang", "plugin", "package"),
    [
        ("cpp", "grpc_cpp_plugin", "protobuf-compiler-grpc"),
        ("php", "grpc_php_plugin", "protobuf-compiler-grpc"),
        ("ruby", "grpc_ruby_plugin", "protobuf-compiler-grpc"),
        ("java", "grpc_java_plugin", "protobuf-compiler-grpc-java-plugin"),
        ("go", "protoc-gen-go", "protoc-gen-go"),
    ],
)
def test_a_missing_plugin_is_named_with_the_debian_package_that_contains_it(
    tmp_path: Path, lang: str, plugin: str, package: str
) -> None:
    require_tools("protoc", "dpkg")
    # Given a PATH with protoc but none of the gRPC plugins
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "protoc").symlink_to(shutil.which("protoc") or "")

    result = run_gen_stubs(lang, tmp_path / "out", path=str(bin_dir))

    # Then the message names the plugin and the Debian package to install
    assert result.returncode != 0
    assert plugin in result.stderr
    assert f"apt-get install {package}" in result.stderr
    # And that package really contains the plugin
    files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=30)
    if files.returncode != 0:
        pytest.skip(
            f"{package} is not installed, so its files cannot be checked; install: apt-get install {package}"
        )
    assert f"/usr/bin/{plugin}" in files.stdout.split()


@pytest.mark.parametrize(
    ("lang", "plugin"), [("csharp", "grpc_csharp_plugin"), ("objc", "grpc_objective_c_plugin")]
)
def test_a_plugin_debian_does_not_package_is_said_so_with_where_it_comes_from(
    tmp_path: Path, lang: str, plugin: str
) -> None:
    require_tools("protoc")
    if shutil.which(plugin) is not None:
        pytest.skip(f"{plugin} is installed here")

    result = run_gen_stubs(lang, tmp_path)

    assert result.returncode != 0
    assert f"needs the gRPC plugin {plugin} on PATH (Debian packages none;" in result.stderr
    assert "apt-get install" not in result.stderr


def test_gen_stubs_says_which_package_has_the_well_known_types(tmp_path: Path) -> None:
    require_tools("protoc", "grpc_ruby_plugin")
    # Given a protoc whose include directory has no google/protobuf/*.proto
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "protoc").write_text(f'#!/bin/sh\nexec {shutil.which("protoc")} "$@"\n')
    (bin_dir / "protoc").chmod(0o755)
    (bin_dir / "grpc_ruby_plugin").symlink_to(shutil.which("grpc_ruby_plugin") or "")

    result = run_gen_stubs("ruby", tmp_path / "out", path=str(bin_dir))

    assert result.returncode != 0
    assert "google/protobuf/timestamp.proto" in result.stderr
    assert "apt-get install libprotobuf-dev" in result.stderr


def node_or_skip() -> str:
    node = shutil.which("node")
    if not NODE_TYPES_TOOL.exists() or node is None:
        pytest.skip(f"examples/node has no node_modules; install: {install_command('node')}")
    return node


def test_gen_stubs_writes_typescript_types_for_node(tmp_path: Path) -> None:
    node_or_skip()

    result = run_gen_stubs("node", tmp_path)

    assert result.returncode == 0, result.stderr
    assignment = (tmp_path / "jobmesh" / "v1" / "WorkAssignment.ts").read_text()
    assert "'job_id'?: (string);" in assignment, "field names keep their proto case"
    assert "Reports must echo it" in assignment, "the proto comments come along"
    options = (tmp_path / "loader-options.ts").read_text()
    assert "export const LOADER_OPTIONS = { keepCase: true, longs: Number," in options


def test_the_node_example_loads_the_protos_with_the_options_the_typescript_types_assume() -> None:
    node = node_or_skip()
    # Functions (Number, String) by name, everything else as text, as gen_stubs spells them.
    script = (
        "const { LOADER_OPTIONS } = require('./jobmesh');"
        "const { includeDirs, ...options } = LOADER_OPTIONS;"
        "console.log(JSON.stringify(Object.fromEntries(Object.entries(options).map("
        "([k, v]) => [k, typeof v === 'function' ? v.name : String(v)]))));"
    )
    result = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, cwd=NODE_EXAMPLE, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == gen_stubs.NODE_LOADER_OPTIONS


def test_gen_stubs_names_the_languages_it_knows_when_given_another(tmp_path: Path) -> None:
    result = run_gen_stubs("cobol", tmp_path)

    assert result.returncode != 0
    assert "unknown language 'cobol'" in result.stderr
    assert "cpp" in result.stderr
