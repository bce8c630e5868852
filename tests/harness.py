"""Test harness: real node processes, a polling deadline helper, and proto builders.

`NodeProcess` runs `python -m node run --test-preset ...` on a data dir, waits for its
`node.json`, hands out a gRPC stub, and stops it with SIGTERM (graceful) or SIGKILL
(crash). Its stderr goes to a file the conftest shows when a test fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc, queues_pb2_grpc, schedules_pb2_grpc

from node.security.cluster import CLUSTER_DIR, ClusterFiles
from node.transport import Keepalive, Transport, client_transport

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
DEFAULT_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.01
STOP_TIMEOUT_S = 10.0
RUN_FILE = "node.json"
JOURNAL_FILE = "journal.sqlite"

PropertyInput = (
    str | int | float | bool | bytes | datetime | list[str | int | float | bool | bytes | datetime]
)


def wait_for(
    condition: Callable[[], T | None], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition"
) -> T:
    """Poll `condition` until it returns something truthy and return that; fail at the deadline.

    The last value (or exception) `condition` produced is part of the failure message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except (grpc.RpcError, OSError, ValueError) as e:  # not ready yet: keep polling
            last = e
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}; last value: {last!r}")
        time.sleep(POLL_INTERVAL_S)


# --- proto builders --------------------------------------------------------------------------


def timestamp(seconds: float) -> Timestamp:
    """A Timestamp `seconds` after the epoch (microsecond precision)."""
    micros = round(seconds * 1_000_000)
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _fill_scalar(target: jobs_pb2.PropertyValue, value: object) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, datetime):
        target.timestamp_value.CopyFrom(timestamp(value.timestamp()))
    else:
        raise TypeError(f"no PropertyValue for {value!r}")


def prop(value: PropertyInput) -> jobs_pb2.PropertyValue:
    """A PropertyValue from a Python value (a list becomes list_value)."""
    proto = jobs_pb2.PropertyValue()
    if isinstance(value, list):
        proto.list_value.SetInParent()
        for item in value:
            _fill_scalar(proto.list_value.values.add(), item)
    else:
        _fill_scalar(proto, value)
    return proto


def new_job(topic: str, payload: bytes = b"", **properties: PropertyInput) -> jobs_pb2.NewJob:
    """A NewJob with typed properties."""
    return jobs_pb2.NewJob(
        topic=topic, payload=payload, properties={name: prop(value) for name, value in properties.items()}
    )


def condition(name: str, operator: str, value: PropertyInput) -> jobs_pb2.PropertyCondition:
    """A PropertyCondition; `operator` is one of = < <= > >=."""
    operators = {
        "=": jobs_pb2.COMPARISON_OPERATOR_EQUAL,
        "<": jobs_pb2.COMPARISON_OPERATOR_LESS,
        "<=": jobs_pb2.COMPARISON_OPERATOR_LESS_OR_EQUAL,
        ">": jobs_pb2.COMPARISON_OPERATOR_GREATER,
        ">=": jobs_pb2.COMPARISON_OPERATOR_GREATER_OR_EQUAL,
    }
    return jobs_pb2.PropertyCondition(name=name, operator=operators[operator], value=prop(value))


def template(*conditions: jobs_pb2.PropertyCondition) -> jobs_pb2.PropertyTemplate:
    """A PropertyTemplate: every condition must hold."""
    return jobs_pb2.PropertyTemplate(conditions=list(conditions))


# --- talking to a node -----------------------------------------------------------------------


def add_job(
    stub: jobs_pb2_grpc.JobServiceStub, topic: str, payload: bytes = b"", **properties: PropertyInput
) -> str:
    """Add one job through AddJob and return its id."""
    return str(stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(topic, payload, **properties))).job.id)


def get_job(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, include_payloads: bool = False) -> jobs_pb2.Job:
    """GetJob."""
    job: jobs_pb2.Job = stub.GetJob(
        jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=include_payloads)
    ).job
    return job


def state_name(state: int) -> str:
    """`SUCCEEDED` for JOB_STATE_SUCCEEDED (readable assertion messages)."""
    return str(jobs_pb2.JobState.Name(state)).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def wait_for_state(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, *states: int, timeout: float = DEFAULT_TIMEOUT_S
) -> jobs_pb2.Job:
    """Poll GetJob until the job is in one of `states`; returns it."""
    last: list[jobs_pb2.Job] = []

    def reached() -> jobs_pb2.Job | None:
        job = get_job(stub, job_id)
        last[:] = [job]
        return job if job.state in states else None

    wanted = " or ".join(state_name(s) for s in states)
    try:
        return wait_for(reached, timeout, f"job {job_id} to be {wanted}")
    except AssertionError:
        if last:
            job = last[0]
            raise AssertionError(
                f"job {job_id} is {state_name(job.state)} (retry_count {job.retry_count}, "
                f"message {job.result_message!r}); waited {timeout:.1f}s for {wanted}"
            ) from None
        raise


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run `call`, which must fail with an RpcError; return that error."""
    try:
        result = call()
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected an RPC error, got {result!r}")


def find_all(stub: jobs_pb2_grpc.JobServiceStub, request: jobs_pb2.FindJobsRequest) -> list[jobs_pb2.Job]:
    """Every job a FindJobs request matches, following page tokens."""
    jobs: list[jobs_pb2.Job] = []
    page = jobs_pb2.FindJobsRequest()
    page.CopyFrom(request)
    while True:
        response = stub.FindJobs(page)
        jobs.extend(response.jobs)
        if not response.next_page_token:
            return jobs
        page.page_token = response.next_page_token


def attempts(path: Path) -> list[float]:
    """The attempt times a test consumer recorded in `path` (see consumers.record_attempt)."""
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().split()]


# --- node processes ----------------------------------------------------------------------------


def shared_cluster(root: Path) -> Path:
    """A data dir under `root` holding a cluster CA with its key (made on first use)."""
    path = root / "shared-cluster"
    if not ClusterFiles(path).has_ca():
        ClusterFiles(path).init()
    return path


def seed_cluster(data_dir: Path, cluster: Path) -> Path:
    """Put the CA (and its key) of `cluster` into a new data dir: at its first start the node
    issues its own certificate there, so every node seeded so is of one cluster."""
    if not ClusterFiles(data_dir).has_ca():
        shutil.copytree(cluster / CLUSTER_DIR, data_dir / CLUSTER_DIR)
    return data_dir


class NodeProcess:
    """One `python -m node run --test-preset` process on a data dir; restartable on the same dir."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        consumers: Sequence[str] = (),
        settings: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        netns: str | None = None,
        dial_host: str | None = None,
        cluster: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.cluster = cluster
        """A data dir whose cluster (CA and key) this node joins at its first start; None: its own."""
        self.log_dir = log_dir
        self.consumers = tuple(consumers)
        self.settings = dict(settings or {})
        self.extra_args = tuple(extra_args)
        self.netns = netns
        """Network namespace (`/proc/PID/ns/net`) to run in; None: the test's own."""
        self.dial_host = dial_host
        """Host the test dials the node at; None: the address in its node.json."""
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, object] = {}
        self.runs = 0
        self.log_paths: list[Path] = []
        self.expected_exit: int | None = 0
        self._channel: grpc.Channel | None = None
        self._stub: jobs_pb2_grpc.JobServiceStub | None = None

    # --- lifecycle ---

    @property
    def args(self) -> list[str]:
        """The command line of this node."""
        args = [sys.executable, "-m", "node", "run", "--test-preset", "--data-dir", str(self.data_dir)]
        if self.netns is not None:
            # nsenter execs the node in place: the Popen pid is the node's, so signals reach it.
            args = ["nsenter", f"--net={self.netns}", "--", *args]
        for consumer in self.consumers:
            args += ["--consumer", consumer]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        return args + list(self.extra_args)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to serve."""
        if self.running:
            raise RuntimeError(f"node on {self.data_dir} is already running")
        self._close_channel()  # a channel to an earlier run would dial its old port
        if self.cluster is not None and "--insecure" not in self.extra_args:
            seed_cluster(self.data_dir, self.cluster)
        self.runs += 1
        log_path = self.log_dir / f"{self.data_dir.name}-run{self.runs}.log"
        self.log_paths.append(log_path)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_dir,
            )
        self.expected_exit = 0
        self.info = {}
        return self.process

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """Start the process and wait until it serves (its node.json names its pid)."""
        self.spawn()
        return self.wait_serving(timeout)

    def wait_serving(self, timeout: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """Wait until the spawned process serves (start several nodes at once: spawn all, then wait)."""
        process = self.process
        if process is None:
            raise RuntimeError("the node was never spawned")
        run_file = self.data_dir / RUN_FILE

        def serving() -> dict[str, object] | None:
            if process.poll() is not None:
                raise AssertionError(
                    f"node on {self.data_dir} exited with {process.returncode} before serving:\n{self.log_text()}"
                )
            try:
                info = json.loads(run_file.read_text())
            except (OSError, ValueError):
                return None
            # After a kill -9 the old node.json is still there: only ours counts.
            return info if info.get("pid") == process.pid else None

        self.info = wait_for(serving, timeout, f"node on {self.data_dir} to write {RUN_FILE}")
        return self

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful shutdown); wait for the exit and return its code."""
        return self._signal(signal.SIGTERM, timeout)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` without waiting (see `wait_exit`)."""
        if self.process is None:
            raise RuntimeError("the node was never started")
        self.process.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL: a crash, as far as the node can tell."""
        self.expected_exit = -signal.SIGKILL
        return self._signal(signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self, timeout: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """Terminate gracefully if still running, then start again on the same data dir."""
        if self.running:
            code = self.terminate()
            assert code == 0, f"graceful shutdown exited with {code}:\n{self.log_text()}"
        return self.start(timeout)

    def _signal(self, sig: signal.Signals, timeout: float) -> int:
        self._close_channel()
        process = self.process
        if process is None:
            raise RuntimeError("the node was never started")
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(
                    f"node on {self.data_dir} did not exit within {timeout}s of {sig.name}:\n{self.log_text()}"
                ) from None
        return int(process.returncode)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait for the process to exit on its own; return its code."""
        if self.process is None:
            raise RuntimeError("the node was never started")
        try:
            return int(self.process.wait(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node on {self.data_dir} still runs after {timeout}s:\n{self.log_text()}"
            ) from None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    # --- what it serves ---

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT` of the current run (`dial_host:PORT` when set)."""
        if self.dial_host is not None:
            return f"{self.dial_host}:{self.info['port']}"
        return str(self.info["address"])

    @property
    def instance_id(self) -> str:
        """The instance id the current run reported."""
        return str(self.info["instance_id"])

    def client_transport(self, keepalive: Keepalive | None = None, token: str | None = None) -> Transport:
        """A client's transport for this node: its data dir's CA, client certificate and admin
        token (or `token`); plaintext for an `--insecure` node."""
        if "--insecure" in self.extra_args:
            return Transport(keepalive)
        return client_transport(self.cli_environ(), token, keepalive)

    def cli_environ(self) -> dict[str, str]:
        """The environment for a `jobmesh` command talking to this node: its data dir's credentials."""
        return {
            **os.environ,
            "JOBMESH_DATA_DIR": str(self.data_dir),
            "JOBMESH_PROFILE": str(self.data_dir / "no-profile"),
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `jobmesh ARGS` with this node's credentials (ARGS name the node with --node)."""
        return subprocess.run(
            [sys.executable, "-m", "node", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=self.cli_environ(),
        )

    @property
    def channel(self) -> grpc.Channel:
        """A blocking channel to the current run (closed when the node stops)."""
        if self._channel is None:
            self._channel = self.client_transport().create_sync_channel(self.address)
        return self._channel

    @property
    def stub(self) -> jobs_pb2_grpc.JobServiceStub:
        """A JobService stub for the current run."""
        if self._stub is None:
            self._stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        return self._stub

    @property
    def queues(self) -> queues_pb2_grpc.QueueServiceStub:
        """A QueueService stub for the current run."""
        return queues_pb2_grpc.QueueServiceStub(self.channel)

    @property
    def schedules(self) -> schedules_pb2_grpc.ScheduleServiceStub:
        """A ScheduleService stub for the current run."""
        return schedules_pb2_grpc.ScheduleServiceStub(self.channel)

    def query_journal(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """Rows of a read-only query on the node's journal file (WAL: fine while it runs)."""
        conn = sqlite3.connect(f"file:{self.data_dir / JOURNAL_FILE}?mode=ro", uri=True)
        try:
            return [tuple(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def log_text(self) -> str:
        """Everything the node's runs wrote to stdout/stderr, run by run."""
        parts = []
        for path in self.log_paths:
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)


class NodeFactory:
    """Starts NodeProcesses under one directory and stops them all in `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []
        self._cluster: Path | None = None

    @property
    def cluster(self) -> Path:
        """A data dir holding the CA (with its key) every node of this factory joins by default."""
        if self._cluster is None:
            self._cluster = shared_cluster(self.root)
        return self._cluster

    def create(
        self,
        name: str = "node",
        consumers: Iterable[str] = (),
        settings: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        netns: str | None = None,
        dial_host: str | None = None,
        own_cluster: bool = False,
    ) -> NodeProcess:
        """A NodeProcess that is not started yet, in the factory's cluster (`own_cluster`: a new one)."""
        node = NodeProcess(
            data_dir or self.root / name,
            self.root,
            tuple(consumers),
            settings,
            extra_args=extra_args,
            netns=netns,
            dial_host=dial_host,
            cluster=None if own_cluster else self.cluster,
        )
        self.nodes.append(node)
        return node

    def start(
        self,
        name: str = "node",
        consumers: Iterable[str] = (),
        settings: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        netns: str | None = None,
        dial_host: str | None = None,
        own_cluster: bool = False,
    ) -> NodeProcess:
        """A started, serving NodeProcess."""
        return self.create(
            name, consumers, settings, extra_args, data_dir, netns, dial_host, own_cluster
        ).start()

    def close(self) -> list[str]:
        """Stop every running node gracefully; returns problems (bad exit codes, tracebacks)."""
        problems = []
        for node in self.nodes:
            if node.running:
                try:
                    code = node.terminate()
                except AssertionError as e:
                    problems.append(str(e))
                    continue
                if code != 0:
                    problems.append(f"node on {node.data_dir} exited with {code} on SIGTERM")
            elif node.process is not None and node.expected_exit is not None:
                code = node.process.returncode
                if code != node.expected_exit:
                    problems.append(f"node on {node.data_dir} exited with {code} on its own")
            if "Traceback" in node.log_text():
                problems.append(f"node on {node.data_dir} logged a traceback")
        return problems


# --- watching job events ------------------------------------------------------------------------


class Watcher:
    """A WatchJobs stream read by a thread of its own, so tests can wait for events with a deadline.

    `close()` cancels the stream, like a client that goes away: responses received but not
    taken yet are dropped.
    """

    _END = object()

    def __init__(self, channel: grpc.Channel, request: jobs_pb2.WatchJobsRequest) -> None:
        self.call = jobs_pb2_grpc.JobServiceStub(channel).WatchJobs(request)
        self.error: grpc.RpcError | None = None
        self.responses: list[jobs_pb2.WatchJobsResponse] = []
        self.events: list[jobs_pb2.JobEvent] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._read, name="watcher", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self._queue.put(response)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self._queue.put(self._END)

    def next_response(self, timeout: float = DEFAULT_TIMEOUT_S) -> jobs_pb2.WatchJobsResponse:
        """Take the next response (AssertionError at the deadline or if the stream ended)."""
        if self._ended:
            raise AssertionError(f"the WatchJobs stream ended: {self.error!r}")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no WatchJobs response within {timeout:.1f}s") from None
        if item is self._END:
            self._ended = True
            raise AssertionError(f"the WatchJobs stream ended: {self.error!r}")
        assert isinstance(item, jobs_pb2.WatchJobsResponse)
        self.responses.append(item)
        self.events.extend(item.events)
        return item

    def until(
        self,
        done: Callable[[list[jobs_pb2.JobEvent]], bool],
        timeout: float = DEFAULT_TIMEOUT_S,
        what: str = "events",
    ) -> list[jobs_pb2.JobEvent]:
        """Take responses until `done(all events taken so far)`; returns those events."""
        deadline = time.monotonic() + timeout
        while not done(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}; got {len(self.events)} events: "
                    f"{[(e.seq, e.type, e.topic) for e in self.events[-10:]]} (last 10)"
                )
            self.next_response(left)
        return self.events

    def error_code(self, timeout: float = DEFAULT_TIMEOUT_S) -> grpc.StatusCode:
        """Wait for the stream to fail; its status code."""
        self._thread.join(timeout)
        assert self.error is not None, "the stream did not fail"
        return self.error.code()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Cancel the stream and stop reading."""
        self.call.cancel()
        self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watch(
    channel: grpc.Channel,
    after_seq: int = 0,
    topics: Sequence[str] = (),
    job_ids: Sequence[str] = (),
    types: Sequence[int] = (),
) -> Watcher:
    """Start watching job events."""
    request = jobs_pb2.WatchJobsRequest(after_seq=after_seq, topics=topics, job_ids=job_ids)
    request.types.extend(types)  # type: ignore[arg-type]
    return Watcher(channel, request)
