"""The examples in examples/ run against a real node: Python, Node.js and C++ clients and workers.

Installing what they need takes the network, which the suite's private namespace does not
have: `scripts/setup-polyglot` (run by `scripts/test` before it enters the namespace)
installs the npm packages and Debian's gRPC packages and builds the C++ client. Tests whose
tools are genuinely missing are skipped, naming the command that installs them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2 as J

from tests.polyglot import install_command
from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, get_job, wait_for_state
from tests.support.launcher import NodeProcess
from tests.support.waiting import wait_for
from tests.support.worker_stream import WorkerStream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NODE_EXAMPLE = EXAMPLES / "node"
CPP_EXAMPLE = EXAMPLES / "cpp"
CPP_CLIENT = CPP_EXAMPLE / "build" / "jobmesh-client"
RUN_TIMEOUT_S = 30.0


# demo/inproc is consumed in the node itself, for the clients; other topics by example workers.
# The node serves its secure default: the examples speak TLS with a client bundle and tokens.
node = shared_node("examples", consumers=["demo/inproc=consumers:echo"])


@dataclass(frozen=True)
class Credentials:
    """The examples' credential arguments: a client bundle with a `submit` or a `work` token."""

    submit: tuple[str, ...]
    work: tuple[str, ...]


@pytest.fixture(scope="module")
def creds(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """What a client on another machine gets: `jobmesh cluster client` and two scoped tokens."""
    out = tmp_path_factory.mktemp("creds")
    made = node.cli(
        "cluster",
        "client",
        "--data-dir",
        str(node.data_dir),
        "--name",
        "examples",
        "--out",
        str(out / "bundle"),
    )
    assert made.returncode == 0, made.stderr
    files = {}
    for scope in ("submit", "work"):
        created = node.cli(
            "token",
            "create",
            "--data-dir",
            str(node.data_dir),
            "--scope",
            scope,
            "--name",
            f"examples-{scope}",
        )
        assert created.returncode == 0, created.stderr
        files[scope] = out / f"{scope}.token"
        files[scope].write_text(created.stdout.splitlines()[0])
    bundle = ("--bundle", str(out / "bundle"))
    return Credentials(
        submit=(*bundle, "--token-file", str(files["submit"])),
        work=(*bundle, "--token-file", str(files["work"])),
    )


class ExampleProcess:
    """A long-running example (a worker) with its output in a file; stopped in teardown."""

    def __init__(self, args: Sequence[str | Path], log: Path, cwd: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=dict(os.environ)
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(seen, what=f"{text!r} in the output of {self.process.args!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[list[ExampleProcess]]:
    started: list[ExampleProcess] = []
    yield started
    for process in started:
        process.stop()


def start_example(
    started: list[ExampleProcess], tmp_path: Path, name: str, *args: str | Path
) -> ExampleProcess:
    process = ExampleProcess(args, tmp_path / f"{name}.log", tmp_path)
    started.append(process)
    return process


def run(
    args: Sequence[str | Path], cwd: Path, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=dict(os.environ)
    )


PYTHON_CLIENT = (sys.executable, EXAMPLES / "python" / "client.py")


def client_job(
    client: Sequence[str | Path],
    node: NodeProcess,
    tmp_path: Path,
    args: Sequence[str],
    credentials: Sequence[str],
) -> tuple[dict[str, object], str]:
    """Run a client example that adds a job to `node` (with `credentials`) and waits for it.

    Returns the job it printed, which must have SUCCEEDED, and what it wrote to stderr.
    """
    result = run([*client, "--node", node.address, *credentials, "--timeout", "20", *args], tmp_path)
    job = finished_job(result)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    return job, result.stderr


def finished_job(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The job a client example printed as JSON (fails with its output if it did not succeed)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    job = json.loads(result.stdout)
    assert isinstance(job, dict)
    return job


def output_text(job: dict[str, object]) -> str:
    """The output payload of a job printed as JSON (base64, camelCase or snake_case)."""
    encoded = job.get("output_payload", job.get("outputPayload", ""))
    assert isinstance(encoded, str)
    return base64.b64decode(encoded).decode()


# --- Python ------------------------------------------------------------------------------------


def python_worker(
    started: list[ExampleProcess], tmp_path: Path, node: NodeProcess, creds: Credentials, *args: str
) -> ExampleProcess:
    worker = start_example(
        started, tmp_path, "python-worker", sys.executable, EXAMPLES / "python" / "worker.py",
        "--node", node.address, *creds.work, *args,
    )  # fmt: skip
    worker.wait_for_output("registered as")
    return worker


def test_python_client_and_python_worker_examples_process_a_job(
    node: NodeProcess, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    # Given the Python example worker consuming demo/py/**
    python_worker(examples, tmp_path, node, creds, "--topic", "demo/py/**", "--name", "py-worker")
    # When the Python example client adds a job and waits for it
    job, stderr = client_job(
        PYTHON_CLIENT,
        node,
        tmp_path,
        ["--payload-text", "hello from python", "demo/py/upper", "steps=3", "step_ms=10"],
        creds.submit,
    )
    # Then the job succeeded on the worker, with its output, progress and property
    assert output_text(job) == "HELLO FROM PYTHON"
    assert job["resultMessage"] == "processed by py-worker"
    assert job["properties"]["processed_by"] == {"stringValue": "py-worker"}  # type: ignore[index]
    assert "PROGRESS" in stderr


BIG_PAYLOAD_BYTES = 64 * 1024 * 1024  # the default jobs.max_payload_bytes


def big_payload_file(tmp_path: Path) -> tuple[Path, bytes]:
    """A 64 MiB payload of lower-case text (the example workers upper-case it) in a file."""
    text = bytes(range(ord("a"), ord("z") + 1)) + b"0123456789 \n"
    payload = (text * (BIG_PAYLOAD_BYTES // len(text) + 1))[:BIG_PAYLOAD_BYTES]
    path = tmp_path / "payload.txt"
    path.write_bytes(payload)
    return path, payload


def big_job(
    client: Sequence[str | Path], node: NodeProcess, tmp_path: Path, topic: str, creds: Credentials
) -> tuple[bytes, bytes]:
    """Run a client example with a 64 MiB payload file: (the payload, the output it downloaded);
    the input it downloaded back must equal the payload."""
    path, payload = big_payload_file(tmp_path)
    output, read_back = tmp_path / "output.txt", tmp_path / "input.txt"
    result = run(
        [*client, "--node", node.address, *creds.submit, "--timeout", "60", "--payload-file", path,
         "--output-file", output, "--input-file", read_back, topic, "steps=1", "step_ms=1"],
        tmp_path,
        timeout=120,
    )  # fmt: skip
    job = finished_job(result)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert read_back.read_bytes() == payload, "the input payload downloaded back whole"
    return payload, output.read_bytes()


@pytest.mark.timeout(180)
def test_python_examples_move_a_64_mib_payload_each_way_with_default_grpc_options(
    node: NodeProcess, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    # Given the Python example worker (default channel options: 4 MiB receive limit)
    python_worker(examples, tmp_path, node, creds, "--topic", "demo/pybig/**")
    # When the Python example client (default options too) adds a 64 MiB job and downloads its output
    payload, output = big_job(PYTHON_CLIENT, node, tmp_path, "demo/pybig/upper", creds)
    # Then the worker got the whole payload in pieces and its 64 MiB output came back whole
    assert output == payload.upper()


def test_a_killed_worker_process_loses_no_job_they_complete_on_the_next_worker(
    node: NodeProcess, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    # Given a worker process running two long jobs
    worker = python_worker(examples, tmp_path, node, creds, "--topic", "crash/**", "--concurrency", "2")
    ids = [add_job(node.stub, "crash/job", steps=100_000, step_ms=100) for _ in range(2)]
    for job_id in ids:
        wait_for(
            lambda job_id=job_id: get_job(node.stub, job_id).progress.total_steps == 100_000,  # type: ignore[misc]
            what=f"the worker to start job {job_id}",
        )
    # When the process is killed with SIGKILL
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(10)
    # Then its jobs are re-queued with one more retry
    for job_id in ids:
        wait_for(
            lambda job_id=job_id: (  # type: ignore[misc]  # a lambda with a default argument
                (job := get_job(node.stub, job_id)).state == J.JOB_STATE_QUEUED and job.retry_count == 1
            ),
            what=f"job {job_id} to be re-queued with retry count 1",
        )
    # And when another worker connects, it gets them (as retries) and they complete
    stream = WorkerStream.connect(node.channel, "crash/**", concurrency=2)
    for _ in ids:
        assignment = stream.expect("assignment")
        assert assignment.job_id in ids
        assert assignment.retry_count == 1
        stream.result(assignment, message="finished after the crash")
    for job_id in ids:
        job = wait_for_state(node.stub, job_id, J.JOB_STATE_SUCCEEDED)
        assert (job.retry_count, job.result_message) == (1, "finished after the crash")
    stream.cancel()


# --- Node.js -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodejs() -> str:
    """The `node` binary, with the example's npm packages installed."""
    node_bin, npm = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm is None:
        pytest.skip(f"Node.js or npm is not installed; install: {install_command('node')}")
    if not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        # No network in here: npm's cache is the only source. setup-polyglot fills it.
        result = run([npm, "ci", "--offline", "--no-audit", "--no-fund"], NODE_EXAMPLE, timeout=120)
        if result.returncode != 0:
            pytest.skip(
                "examples/node has no node_modules and npm's cache cannot provide them; "
                f"install: {install_command('node')}"
            )
    return node_bin


def node_worker(
    started: list[ExampleProcess],
    tmp_path: Path,
    nodejs: str,
    node: NodeProcess,
    creds: Credentials,
    *args: str,
) -> ExampleProcess:
    worker = start_example(
        started, tmp_path, "node-worker", nodejs, NODE_EXAMPLE / "worker.js", "--node", node.address,
        *creds.work, *args,
    )  # fmt: skip
    worker.wait_for_output("registered as")
    return worker


def test_node_client_example_adds_a_job_and_watches_it_to_the_end(
    node: NodeProcess, nodejs: str, tmp_path: Path, creds: Credentials
) -> None:
    job, stderr = client_job(
        [nodejs, NODE_EXAMPLE / "client.js"],
        node,
        tmp_path,
        ["--payload-text", "from node", "demo/inproc", "size=3"],
        creds.submit,
    )
    assert output_text(job) == "echo:from node"
    assert job["properties"]["size"]["int_value"] == 3  # type: ignore[index]
    assert "FINISHED" in stderr, "the client follows the job's events"


def test_node_worker_example_consumes_a_topic_with_progress_log_and_retries(
    node: NodeProcess, nodejs: str, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    # Given the Node.js example worker consuming demo/js/**
    node_worker(examples, tmp_path, nodejs, node, creds, "--topic", "demo/js/**", "--name", "js-worker")
    # When the Python client adds a job whose first attempt fails
    job, _ = client_job(
        PYTHON_CLIENT,
        node,
        tmp_path,
        ["--payload-text", "shout", "demo/js/upper", "steps=2", "step_ms=10", "fail_attempts=1"],
        creds.submit,
    )
    # Then the worker retried and finished it, reporting as it went
    assert job["retryCount"] == 1
    assert output_text(job) == "SHOUT"
    assert job["properties"]["processed_by"] == {"stringValue": "js-worker"}  # type: ignore[index]
    assert [line["message"] for line in job["log"]] == [  # type: ignore[attr-defined]
        "js-worker started attempt 1",
        "js-worker started attempt 2",
    ]
    assert job["progress"]["completedSteps"] == "2"  # type: ignore[index]


@pytest.mark.timeout(180)
def test_node_examples_move_a_64_mib_payload_each_way_with_grpc_js_defaults(
    node: NodeProcess, nodejs: str, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    # Given the Node.js example worker with @grpc/grpc-js's default options
    node_worker(examples, tmp_path, nodejs, node, creds, "--topic", "demo/jsbig/**")
    # When the Node.js example client (defaults too) adds a 64 MiB job and downloads its output
    payload, output = big_job([nodejs, NODE_EXAMPLE / "client.js"], node, tmp_path, "demo/jsbig/upper", creds)
    # Then the payload reached the worker whole and the 64 MiB output came back whole
    assert output == payload.upper()


def test_node_worker_example_ends_a_stopped_job(
    node: NodeProcess, nodejs: str, examples: list[ExampleProcess], tmp_path: Path, creds: Credentials
) -> None:
    node_worker(examples, tmp_path, nodejs, node, creds, "--topic", "demo/jsstop/**")
    job_id = add_job(node.stub, "demo/jsstop/long", steps=100_000, step_ms=100)
    wait_for(lambda: get_job(node.stub, job_id).progress.total_steps > 0, what="the worker to start the job")

    node.stub.StopJob(J.StopJobRequest(job_id=job_id))

    job = wait_for_state(node.stub, job_id, J.JOB_STATE_STOPPED)
    assert job.result_message.startswith("stopped at step")


# --- C++ ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpp_client() -> Path:
    """The C++ example client, built with make (incremental: setup-polyglot builds it first)."""
    missing = [
        tool for tool in ("make", "g++", "pkg-config", "protoc", "grpc_cpp_plugin") if not shutil.which(tool)
    ]
    if not missing and run(["pkg-config", "--exists", "grpc++", "protobuf"], ROOT).returncode != 0:
        missing.append("libgrpc++-dev libprotobuf-dev")
    if missing:
        pytest.skip(f"the C++ example needs {', '.join(missing)}; install: {install_command('cpp')}")
    result = run(["make", "-j2", "-C", CPP_EXAMPLE], ROOT, timeout=300)
    assert result.returncode == 0, f"building examples/cpp failed:\n{result.stdout}\n{result.stderr}"
    return CPP_CLIENT


@pytest.mark.timeout(300)  # a cold build of the C++ client; later runs find it built
def test_cpp_client_example_adds_a_job_and_waits_for_it(
    node: NodeProcess, cpp_client: Path, tmp_path: Path, creds: Credentials
) -> None:
    job, _ = client_job(
        [cpp_client],
        node,
        tmp_path,
        ["--payload-text", "from c++", "demo/inproc", "count=7", "ratio=0.5", "flag=true", "label=x"],
        creds.submit,
    )
    assert output_text(job) == "echo:from c++"
    # The echo consumer describes the typed properties it received.
    assert job["result_message"] == repr(
        [("count", "7"), ("flag", "True"), ("label", "'x'"), ("ratio", "0.5")]
    )
