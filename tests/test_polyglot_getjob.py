"""A tiny program in each language calls GetJob on a real node and prints the job it gets.

One program per language whose toolchain `scripts/setup-polyglot` installs: C++, Go, Java,
Node.js, PHP and Ruby (`examples/LANG/getjob.*`). Each speaks TLS to a node in its secure default,
presenting a client certificate that carries scope `read` (`jobmesh cluster client --scope read`),
prints `ID TOPIC STATE` for a job the test added first, and exits 1 naming the status
(NOT_FOUND) for an id the node does not know.
setup-polyglot builds them before the suite enters its namespace; the fixture runs `make` again,
which is a no-op then and offline in any case. A language whose toolchain is missing is skipped
with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2 as J

from tests.polyglot import install_command
from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BUILD_TIMEOUT_S = 300.0  # a cold build (C++, Go, Java) on a busy 2-core machine
RUN_TIMEOUT_S = 60.0  # a JVM start on a busy machine included
FINISHED_TOPIC = "polyglot/done"
WAITING_TOPIC = "polyglot/waiting"  # no consumer anywhere: its job stays QUEUED
UNKNOWN_JOB_ID = "01890000-0000-7000-8000-000000000000"
# grpc-netty, and netty-tcnative's jar and JNI library: the Java program's TLS runs on netty's
# OpenSSL provider, as Debian's netty has no ALPN on the JDK's TLS (examples/java/README.md).
JAVA_LIBRARIES_PROBE = (
    "test -f /usr/share/java/grpc-netty.jar && test -f /usr/share/java/netty-tcnative.jar"
    " && ls /usr/lib/*/jni/libnetty-tcnative.so"
)


@dataclass(frozen=True)
class GetJobProgram:
    """How to check for, build and run one language's GetJob program."""

    lang: str
    tools: tuple[str, ...]
    """Commands that must be on PATH."""
    probe: tuple[str, ...]
    """A command that succeeds when the language's gRPC libraries are installed."""
    command: tuple[str, ...]
    """The program, run in examples/LANG, before its arguments ADDRESS JOB_ID."""
    built: bool = True
    """Whether `make -C examples/LANG` builds it (or its stubs) first."""

    @property
    def directory(self) -> Path:
        return EXAMPLES / self.lang


PROGRAMS = [
    GetJobProgram(
        "cpp",
        ("make", "g++", "pkg-config", "protoc", "grpc_cpp_plugin"),
        ("pkg-config", "--exists", "grpc++", "protobuf"),
        ("build/getjob",),
    ),
    GetJobProgram(
        "go",
        ("make", "go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"),
        ("test", "-d", "/usr/share/gocode/src/google.golang.org/grpc"),
        ("build/getjob",),
    ),
    GetJobProgram(
        "java",
        ("make", "javac", "java", "protoc", "grpc_java_plugin"),
        ("sh", "-c", JAVA_LIBRARIES_PROBE),
        ("build/getjob",),
    ),
    GetJobProgram(
        "node",
        ("node",),
        ("test", "-d", "node_modules/@grpc/grpc-js"),
        ("node", "getjob.js"),
        built=False,
    ),
    GetJobProgram(
        "php",
        ("make", "php", "protoc", "grpc_php_plugin"),
        ("php", "-r", "exit(extension_loaded('curl') && is_dir('/usr/share/php/Google/Protobuf') ? 0 : 1);"),
        ("php", "getjob.php"),
    ),
    GetJobProgram(
        "ruby",
        ("make", "ruby", "protoc", "grpc_ruby_plugin"),
        ("ruby", "-e", "require 'grpc'; require 'google/protobuf'"),
        ("ruby", "-I", "build/gen", "getjob.rb"),
    ),
]


def run(args: Sequence[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=dict(os.environ)
    )


def ready(program: GetJobProgram) -> GetJobProgram:
    """The program, built; skips with the install command when its toolchain is missing."""
    missing = [tool for tool in program.tools if shutil.which(tool) is None]
    if not missing and run(program.probe, program.directory, RUN_TIMEOUT_S).returncode != 0:
        missing.append(f"its gRPC libraries ({' '.join(program.probe)} failed)")
    if missing:
        pytest.skip(f"{program.lang}: missing {', '.join(missing)}; install: {install_command(program.lang)}")
    if program.built:
        result = run(["make", "-s", "-C", program.directory], ROOT, BUILD_TIMEOUT_S)
        assert result.returncode == 0, (
            f"make -C examples/{program.lang} failed:\n{result.stdout}\n{result.stderr}"
        )
    return program


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    """A node in its secure default: every program speaks TLS with a client certificate."""
    return module_nodes.start("polyglot", consumers=[f"{FINISHED_TOPIC}=consumers:echo"])


@pytest.fixture(scope="module")
def bundle(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`jobmesh cluster client --scope read`: the CA and a client certificate whose scope is its
    credential, so each program needs only its language's TLS, no token."""
    out = tmp_path_factory.mktemp("polyglot") / "bundle"
    made = node.cli(
        "cluster", "client", "--data-dir", str(node.data_dir), "--name", "polyglot", "--scope", "read",
        "--out", str(out),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def added_jobs(node: NodeProcess) -> dict[str, str]:
    """Two jobs in different states, by expected output line: one finished, one still queued."""
    finished = add_job(node.stub, FINISHED_TOPIC, count=1)
    waiting = add_job(node.stub, WAITING_TOPIC)
    wait_for_state(node.stub, finished, J.JOB_STATE_SUCCEEDED)
    return {
        finished: f"{finished} {FINISHED_TOPIC} JOB_STATE_SUCCEEDED",
        waiting: f"{waiting} {WAITING_TOPIC} JOB_STATE_QUEUED",
    }


@pytest.mark.timeout(BUILD_TIMEOUT_S + 3 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("program", PROGRAMS, ids=[p.lang for p in PROGRAMS])
def test_getjob_program_prints_the_state_of_the_job_it_asked_for(
    program: GetJobProgram, node: NodeProcess, bundle: Path
) -> None:
    ready(program)
    for job_id, expected in added_jobs(node).items():
        # When the program asks the node for a job the test added (over TLS with the bundle)
        result = run([*program.command, node.address, job_id, bundle], program.directory, RUN_TIMEOUT_S)
        # Then it prints that job's id, topic and state
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip() == expected

    # And an id the node does not know is an error naming the status
    result = run([*program.command, node.address, UNKNOWN_JOB_ID, bundle], program.directory, RUN_TIMEOUT_S)
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "GetJob failed: NOT_FOUND" in result.stderr
