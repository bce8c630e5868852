"""The node launcher for tests and benchmarks: real `python -m node run --test-preset` processes
(or, with `preset=False`, at the production defaults: the chaos benchmark).

`NodeProcess` runs one node on a data dir (restartable on the same dir), waits for its
`node.json` (blocking or on an event loop), hands out gRPC stubs, writes each run's output
to a log file of its own, and stops it with SIGTERM (graceful) or SIGKILL (a crash).
`NodeFactory` starts several under one directory and stops them all. The node processes
can load consumers from `tests/consumers.py` (`consumers:NAME`) and from the repository
(`benchmarks.consumers:NAME`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypedDict, Unpack

import grpc
from jobmesh.v1 import jobs_pb2_grpc, queues_pb2_grpc, schedules_pb2_grpc

from node import JobState
from node.security.cluster import CLUSTER_DIR, ClusterFiles
from node.transport import Keepalive, Transport, client_transport

from .waiting import DEFAULT_TIMEOUT_S, async_wait_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = ROOT / "tests"
STOP_TIMEOUT_S = 10.0
RUN_FILE = "node.json"
JOURNAL_FILE = "journal.sqlite"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
P = ParamSpec("P")


@dataclass(frozen=True)
class ProcStats:
    """Memory and CPU of a process, from /proc."""

    rss_kib: int
    hwm_kib: int
    cpu_s: float


def proc_stats(pid: int) -> ProcStats:
    """VmRSS, VmHWM and user+system CPU seconds of `pid`."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime (fields 14 and 15)
    return ProcStats(values["VmRSS"], values["VmHWM"], cpu)


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
        preset: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.preset = preset
        """Start from the test preset (`--test-preset`); False: the production defaults."""
        self.cluster = cluster
        """A data dir whose cluster (CA and key) this node joins at its first start; None: its own."""
        self.log_dir = log_dir
        self.consumers = tuple(consumers)
        """`--consumer` specs (`topic/**=module:function`)."""
        self.settings = dict(settings or {})
        """`--set key=value` settings."""
        self.extra_args = tuple(extra_args)
        self.netns = netns
        """Network namespace (`/proc/PID/ns/net`) to run in; None: the caller's own."""
        self.dial_host = dial_host
        """Host to dial the node at; None: the address in its node.json."""
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, object] = {}
        """The current run's node.json (address, port, pid, instance id)."""
        self.runs = 0
        self.log_paths: list[Path] = []
        self.expected_exit: int | None = 0
        """The exit code the current run should end with (None: any)."""
        self._channel: grpc.Channel | None = None
        self._stub: jobs_pb2_grpc.JobServiceStub | None = None

    # --- lifecycle ---

    @property
    def args(self) -> list[str]:
        """The command line of this node."""
        args = [sys.executable, "-m", "node", "run", "--data-dir", str(self.data_dir)]
        if self.preset:
            args.insert(4, "--test-preset")
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
        paths = (str(TESTS_DIR), str(ROOT), env.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
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

    def _serving(self) -> dict[str, object] | None:
        """The current run's node.json once it is written; AssertionError if the process died."""
        process = self.process
        if process is None:
            raise RuntimeError("the node was never spawned")
        if process.poll() is not None:
            raise AssertionError(
                f"node on {self.data_dir} exited with {process.returncode} before serving:\n{self.log_text()}"
            )
        try:
            info: dict[str, object] = json.loads((self.data_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        # After a kill -9 the old node.json is still there: only ours counts.
        return info if info.get("pid") == process.pid else None

    def wait_serving(self, timeout: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """Wait until the spawned process serves (start several nodes at once: spawn all, then wait)."""
        self.info = wait_for(self._serving, timeout, f"node on {self.data_dir} to write {RUN_FILE}")
        return self

    async def async_wait_serving(self, timeout: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """`wait_serving` on the running event loop (benchmarks wait for many nodes at once)."""
        what = f"node on {self.data_dir} to write {RUN_FILE}"
        self.info = await async_wait_for(self._serving, timeout, what)
        return self

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful shutdown); wait for the exit and return its code.

        A node still running at the deadline is killed and AssertionError raised.
        """
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

    @property
    def pid(self) -> int:
        """The process id of the current run."""
        if self.process is None:
            raise RuntimeError("the node was never started")
        return self.process.pid

    def stats(self) -> ProcStats:
        """Memory and CPU of the current run."""
        return proc_stats(self.pid)

    # --- what it serves ---

    @property
    def port(self) -> int:
        """The gRPC port of the current run."""
        return int(str(self.info["port"]))

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT` of the current run (`dial_host:PORT` when set)."""
        if self.dial_host is not None:
            return f"{self.dial_host}:{self.port}"
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

    def query_journal(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the node's journal file (WAL: fine while it runs)."""
        conn = sqlite3.connect(f"file:{self.data_dir / JOURNAL_FILE}?mode=ro", uri=True)
        try:
            return [tuple(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def count_jobs(self, state: JobState) -> int:
        """How many jobs of the node's journal are in `state` (read from the file, like query_journal)."""
        return int(self.query_journal("SELECT count(*) FROM jobs WHERE state = ?", (int(state),))[0][0])

    def journal_bytes(self) -> int:
        """Size of the journal's files (database, WAL, shared memory)."""
        return sum(p.stat().st_size for p in self.data_dir.glob(f"{JOURNAL_FILE}*"))

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


def _then_start(create: Callable[P, NodeProcess]) -> Callable[P, NodeProcess]:
    """`create`, then start the node and wait until it serves (same arguments)."""

    def start(*args: P.args, **kwargs: P.kwargs) -> NodeProcess:
        return create(*args, **kwargs).start()

    start.__doc__ = "A started, serving NodeProcess (the arguments of `create`)."
    return start


class NodeOptions(TypedDict, total=False):
    """How to run a node, beyond its name, consumers and settings (see NodeProcess)."""

    extra_args: Sequence[str]
    netns: str | None
    dial_host: str | None
    preset: bool


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
        data_dir: Path | None = None,
        own_cluster: bool = False,
        **options: Unpack[NodeOptions],
    ) -> NodeProcess:
        """A NodeProcess that is not started yet (data dir `root/name` unless given), in the
        factory's cluster unless `own_cluster` (to test clusters that must not mix)."""
        cluster = None if own_cluster else self.cluster
        node = NodeProcess(
            data_dir or self.root / name, self.root, tuple(consumers), settings, cluster=cluster, **options
        )
        self.nodes.append(node)
        return node

    start = _then_start(create)

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
