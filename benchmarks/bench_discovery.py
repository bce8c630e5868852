"""Jobmesh discovery benchmark: real node processes finding each other, dying and leaving.

Run it through the wrapper, which sets up .venv and enters a private network namespace
(no benchmark may run in the machine's own one):

    benchmarks/run-discovery                       # 3, 10 and 30 nodes, 3 runs each
    benchmarks/run-discovery --sizes 3 --runs 1    # a smoke test
    benchmarks/run-discovery --join seeds          # join through a seed instead of mDNS
    benchmarks/run-discovery --insecure            # plaintext nodes (default: mutual TLS)
    benchmarks/run-discovery --log-level INFO --keep-logs /tmp/disc   # keep the nodes' logs

Every node is `python -m node run --test-preset` with the LAN discovery timings (probe 0.2 s,
suspicion 1.5 s, settle 0.1 s, ...), all on this namespace's loopback. For each size N and
run, with fresh nodes:

    converge  N nodes start at once; from the last one's start (the time its view gives for
              it) until every node's view holds all N
    join      one more node starts; from its start time until every view holds it
    death     one node gets SIGKILL; until it is gone from every view
    leave     one node gets SIGTERM; until it is gone from every view
    idle CPU  CPU seconds per wall second of each node, over --idle-seconds of quiet

Times come from the nodes' own WatchTopology events (node-side timestamps), so the benchmark
does not poll and barely loads the machine while it measures. All of this shares the
machine's few cores: look at medians, and expect 30 nodes to be slower than a real LAN of 30
machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from tests.support.launcher import NodeProcess, shared_cluster
from tests.support.topology import LAN_TIMINGS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START_TIMEOUT_S = 120.0
EVENT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PRESET = True
"""Nodes start from the test preset (shorter timings beyond discovery's); False: `--production`."""
EXTRA_FLAGS: list[str] = []
"""Flags every node gets (`--insecure` with the option of that name)."""
LOG_LEVEL = "WARNING"
"""The nodes' log level (`--log-level`)."""
KEEP_LOGS: Path | None = None
"""Where to copy each run's node logs before its files are removed (`--keep-logs`)."""


@dataclass
class Run:
    """One run at one size."""

    size: int
    converge_s: float
    join_s: float
    death_s: float
    leave_s: float
    idle_cpu_percent: list[float] = field(default_factory=list)
    converge_cpu_s: float = 0.0
    """CPU seconds all N nodes had used by the time their views held all N (start-up included)."""


class Node:
    """One node process (the suite's launcher) and a watch on its topology events."""

    def __init__(self, root: Path, name: str, join: str, seed: str | None) -> None:
        self.name = name
        args = ["--name", name, "--log-level", LOG_LEVEL, *EXTRA_FLAGS]
        settings: dict[str, object] = dict(LAN_TIMINGS)
        if join == "mdns":
            settings["discovery.mdns"] = "true"
        elif seed is not None:
            args += ["--seed", seed]
        # Every node of a run is of one cluster: it finds the shared CA (and key) and issues its
        # own certificate at start.
        self.process = NodeProcess(
            root / name,
            root,
            settings=settings,
            extra_args=args,
            cluster=shared_cluster(root),
            preset=PRESET,
        )
        self.process.spawn()
        self.address = ""
        self.events: list[tuple[float, frozenset[str]]] = []
        self._channel: grpc.aio.Channel | None = None
        self._watch: asyncio.Task[None] | None = None

    async def serving(self) -> float:
        """Wait until node.json names this process; returns the wall time it was seen."""
        await self.process.async_wait_serving(START_TIMEOUT_S)
        self.address = self.process.address
        return time.time()

    def watch(self) -> None:
        """Record every settled view (the node's time of settling it, instance names) from
        WatchTopology; the first event's view may have settled before the watch began."""
        self._channel = self.process.client_transport().create_channel(self.address)
        stub = topology_pb2_grpc.TopologyServiceStub(self._channel)

        async def read() -> None:
            with_views = (topology_pb2.TOPOLOGY_EVENT_TYPE_INIT, topology_pb2.TOPOLOGY_EVENT_TYPE_CHANGED)
            try:
                async for response in stub.WatchTopology(topology_pb2.WatchTopologyRequest()):
                    event = response.event
                    if event.type in with_views:
                        names = frozenset(i.name for i in event.new_view.instances)
                        created = event.new_view.created
                        self.events.append((created.seconds + created.nanos / 1e9, names))
            except grpc.aio.AioRpcError:
                pass  # the node stopped

        self._watch = asyncio.get_running_loop().create_task(read())

    async def start_time(self) -> float:
        """The node's own start time (its view's local instance)."""
        assert self._channel is not None
        stub = topology_pb2_grpc.TopologyServiceStub(self._channel)
        view: topology_pb2.TopologyView = (
            await stub.GetTopology(topology_pb2.GetTopologyRequest(), timeout=5)
        ).view
        local = next(i for i in view.instances if i.local)
        return local.start_time.seconds + local.start_time.nanos / 1e9

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far."""
        return self.process.stats().cpu_s

    async def stop(self) -> None:
        """SIGTERM and wait (the launcher kills a node that hangs: say so); close the watch."""
        try:
            await asyncio.to_thread(self.process.terminate, STOP_TIMEOUT_S)
        except AssertionError as e:  # a node that does not stop is a bug to see, not a process to leak
            print(str(e).splitlines()[0], file=sys.stderr)
        if self._watch is not None:
            self._watch.cancel()
        if self._channel is not None:
            await self._channel.close()


async def first_time(nodes: Sequence[Node], holds: object, since: float) -> float:
    """Seconds from `since` until every node had a view satisfying `holds(names)` (at or after `since`)."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while True:
        times = []
        for node in nodes:
            hit = next((t for t, names in node.events if t >= since and holds(names)), None)  # type: ignore[operator]
            if hit is None:
                break
            times.append(hit)
        else:
            return max(0.0, max(times) - since)
        if time.monotonic() > deadline:
            latest = {n.name: (n.events[-1][1] if n.events else frozenset()) for n in nodes}
            short = {name: len(names) for name, names in latest.items() if not holds(names)}  # type: ignore[operator]
            raise TimeoutError(
                f"the views did not converge in {EVENT_TIMEOUT_S:g} s; view sizes of the nodes short of it: {short}"
            )
        await asyncio.sleep(0.05)


async def one_run(size: int, join: str, idle_s: float) -> Run:
    root = Path(tempfile.mkdtemp(prefix=f"jobmesh-discovery-{size}-"))
    nodes: list[Node] = []
    started: list[Node] = []  # everything to stop at the end
    try:
        first = Node(root, "n1", join, None)
        nodes.append(first)
        started.append(first)
        seed = None
        if join == "seeds":
            await first.serving()
            seed = first.address
        nodes += [Node(root, f"n{i}", join, seed) for i in range(2, size + 1)]
        started += nodes[1:]
        await asyncio.gather(*(n.serving() for n in nodes))
        for node in nodes:
            node.watch()
        # From the last node's own start (its discovery's, as for the join below): a node joins
        # before it reports serving (its console comes up last).
        last_start = max(await asyncio.gather(*(n.start_time() for n in nodes)))
        everyone = frozenset(n.name for n in nodes)
        converge = await first_time(nodes, lambda names: names == everyone, last_start)
        converge_cpu = sum(n.cpu_seconds() for n in nodes)

        extra = Node(root, "extra", join, seed)
        started.append(extra)
        await extra.serving()
        extra.watch()
        joined_at = await extra.start_time()
        join_s = await first_time(nodes, lambda names: "extra" in names, joined_at)

        await asyncio.sleep(1.0)  # let the views settle before measuring idle CPU
        before = [n.cpu_seconds() for n in nodes]
        window_start = time.monotonic()
        await asyncio.sleep(idle_s)
        wall = time.monotonic() - window_start
        idle = [100 * (n.cpu_seconds() - b) / wall for n, b in zip(nodes, before, strict=True)]

        victim, leaver = nodes[-1], nodes[-2]
        survivors = [n for n in nodes if n not in (victim, leaver)] + [extra]
        killed_at = time.time()
        victim.process.send_signal(signal.SIGKILL)
        death_s = await first_time(survivors, lambda names: victim.name not in names, killed_at)
        await victim.stop()
        left_at = time.time()
        leaver.process.send_signal(signal.SIGTERM)
        leave_s = await first_time(survivors, lambda names: leaver.name not in names, left_at)
        return Run(size, converge, join_s, death_s, leave_s, idle, converge_cpu)
    finally:
        await asyncio.gather(*(n.stop() for n in started), return_exceptions=True)
        if KEEP_LOGS is not None:
            print(f"node logs: {_keep_logs(root, KEEP_LOGS)}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


def _keep_logs(root: Path, under: Path) -> Path:
    """Copy the node logs of the run in `root` to a directory of its name under `under`."""
    kept = under / root.name
    kept.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        shutil.copy(log, kept / log.name)
    return kept


def _summary(values: Sequence[float], unit: str = "s") -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return (
        f"{median:.2f} {unit} ({min(values):.2f}-{max(values):.2f})"
        if len(values) > 1
        else f"{median:.2f} {unit}"
    )


def table(runs: Sequence[Run]) -> str:
    """The Markdown results table (median, min-max over runs)."""
    lines = [
        "| nodes | full view after start | join, in every view | kill -9, dead everywhere | leave, gone everywhere | idle CPU per node |",
        "|---|---|---|---|---|---|",
    ]
    for size in sorted({r.size for r in runs}):
        at = [r for r in runs if r.size == size]
        cpu = [c for r in at for c in r.idle_cpu_percent]
        lines.append(
            f"| {size} | {_summary([r.converge_s for r in at])} | {_summary([r.join_s for r in at])} | "
            f"{_summary([r.death_s for r in at])} | {_summary([r.leave_s for r in at])} | "
            f"{statistics.mean(cpu):.1f} % (max {max(cpu):.1f} %) |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[Run]:
    runs = []
    for size in args.sizes:
        for index in range(args.runs):
            run = await one_run(size, args.join, args.idle_seconds)
            print(
                f"size {size} run {index + 1}: converge {run.converge_s:.2f}s, join {run.join_s:.2f}s, "
                f"death {run.death_s:.2f}s, leave {run.leave_s:.2f}s, "
                f"idle CPU {statistics.mean(run.idle_cpu_percent):.1f}%, "
                f"CPU of all nodes until converged {run.converge_cpu_s:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[3, 10, 30])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--join", choices=["mdns", "seeds"], default="mdns", help="how nodes find each other")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="window for the idle CPU figure")
    parser.add_argument("--insecure", action="store_true", help="nodes serve plaintext (default: mutual TLS)")
    parser.add_argument(
        "--production",
        action="store_true",
        help="nodes at the production defaults (free ports) instead of the test preset",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="the nodes' log level (INFO shows suspicions and deaths)"
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy each run's node logs under DIR")
    args = parser.parse_args(argv)
    global LOG_LEVEL, KEEP_LOGS
    LOG_LEVEL, KEEP_LOGS = args.log_level, args.keep_logs
    if args.insecure:
        EXTRA_FLAGS.append("--insecure")
    if args.production:
        global PRESET
        PRESET = False
        EXTRA_FLAGS.extend(["--port", "0", "--set", "http.port=0"])
    runs = asyncio.run(main_async(args))
    print(table(runs))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"discovery-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                },
                "join": args.join,
                "insecure": args.insecure,
                "production": args.production,
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
