"""Offload start-up and cost (issue 16, item 4): workers launched while jobs wait at an origin.

    benchmarks/run-offload-startup [--jobs 20000] [--runs 3] [--workers 2] [--test-preset]

Per run, fresh data dirs, production timings unless `--test-preset`, mutual TLS:
  offload  an origin without a consumer holds --jobs QUEUED jobs; --workers nodes consuming
           their topic (no-op) are launched at once, seeded with the origin. Measured from
           their launch: when each serves, when the first job is SUCCEEDED at the origin
           (target <= 0.6 s), when all are (the rate from launch), the steady rate between
           10% and 90% done (target >= 6,000 jobs/s with 2 workers), and the CPU seconds of
           origin and workers together per job: over the whole run (the workers' start-up
           included) and between 10% and 90% done (the steady window).
  local    the same jobs in one node's journal, that node restarted with the consumer: the
           rate from its launch and its CPU seconds per job, the same two ways. The report gives
           the offloaded job's CPU cost over the local one's in the steady window (target <=
           1.5; the issue measured it so: CPU percent over jobs/s while the jobs ran) and over
           the whole run (where each worker's start-up, about 0.7 CPU-seconds, counts too).

The counts are read from the origin's journal, every 5 ms until the first job and every 20 ms
after, so the times are accurate to about that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_offload import add_in_batches
from node import JobState
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.topology import create

CONSUMER = "offload/**=consumers:succeed_silently"
TIMEOUT_S = 300.0
FLAGS = ["--log-level", "WARNING", "--port", "0", "--set", "http.port=0"]
"""Production defaults but free ports (the defaults 7710 and 7711 are one per host)."""


def succeeded(node: NodeProcess) -> int:
    """SUCCEEDED jobs at `node`, read from its journal (no call that would load it)."""
    return node.count_jobs(JobState.SUCCEEDED)


def _created(nodes: NodeFactory, name: str, preset: bool, **options: Any) -> NodeProcess:
    """A node of `nodes` (not started) at the test preset or the production defaults."""
    node = create(nodes, name, extra_args=FLAGS, **options)
    node.preset = preset
    return node


def serving_after(node: NodeProcess, began: float) -> float:
    """Seconds from `began` until `node` serves (its run file is written)."""
    node.wait_serving()
    return time.perf_counter() - began


def cpu_of(nodes: Sequence[NodeProcess]) -> Callable[[], float]:
    """The CPU seconds `nodes` used so far, together."""
    return lambda: sum(node.stats().cpu_s for node in nodes)


def progress(node: NodeProcess, count: int, began: float, cpu: Callable[[], float]) -> dict[str, float]:
    """Seconds from `began` to the first, the 10%, the 90% and the last job SUCCEEDED at `node`,
    and `cpu()` per job between 10% and 90% (`steady_cpu_ms_per_job`)."""
    marks: dict[str, float] = {}
    at: dict[str, tuple[int, float]] = {}
    goals = {"first_s": 1, "p10_s": max(1, count // 10), "p90_s": max(1, count * 9 // 10), "all_s": count}
    while len(marks) < len(goals):
        if time.perf_counter() - began > TIMEOUT_S:
            raise RuntimeError(f"only {succeeded(node)} of {count} jobs SUCCEEDED after {TIMEOUT_S:.0f} s")
        done = succeeded(node)
        now = time.perf_counter() - began
        for name, goal in goals.items():
            if name not in marks and done >= goal:
                marks[name] = now
                if name in ("p10_s", "p90_s"):
                    at[name] = (done, cpu())
        time.sleep(0.005 if "first_s" not in marks else 0.02)
    (done10, cpu10), (done90, cpu90) = at["p10_s"], at["p90_s"]
    marks["steady_cpu_ms_per_job"] = 1000 * (cpu90 - cpu10) / max(1, done90 - done10)
    return marks


def offload_run(root: Path, jobs: int, workers: int, preset: bool) -> dict[str, float]:
    nodes = NodeFactory(root)
    try:
        origin = _created(nodes, "origin", preset).start()
        add_in_batches(origin, jobs)
        procs = [
            _created(nodes, f"w{i}", preset, seeds=[origin], consumers=[CONSUMER])
            for i in range(1, workers + 1)
        ]
        cpu0 = origin.stats().cpu_s
        began = time.perf_counter()
        for proc in procs:
            proc.spawn()
        # A node takes jobs before it reports serving (its console comes up last), so the
        # origin's journal is watched from the launch, and serving on a thread beside it.
        with ThreadPoolExecutor(len(procs)) as pool:
            served = [pool.submit(serving_after, proc, began) for proc in procs]
            marks = progress(origin, jobs, began, used := cpu_of([origin, *procs]))
            serving_s = max(f.result() for f in served)
        cpu = used() - cpu0  # the workers' whole runs, the origin's since their launch
        steady = (jobs * 8 // 10) / (marks["p90_s"] - marks["p10_s"])
        return {
            "workers_serving_s": serving_s,
            "first_job_s": marks["first_s"],
            "rate_from_launch": jobs / marks["all_s"],
            "steady_rate": steady,
            "cpu_ms_per_job": 1000 * cpu / jobs,
            "steady_cpu_ms_per_job": marks["steady_cpu_ms_per_job"],
        }
    finally:
        nodes.close()


def local_run(root: Path, jobs: int, preset: bool) -> dict[str, float]:
    nodes = NodeFactory(root)
    try:
        node = _created(nodes, "local", preset).start()
        add_in_batches(node, jobs)
        node.terminate()
        node.consumers = (CONSUMER,)
        began = time.perf_counter()
        node.spawn()
        node.wait_serving()
        marks = progress(node, jobs, began, used := cpu_of([node]))
        cpu = used()  # the whole run of this process: start-up included, as offloaded
        return {
            "first_job_s": marks["first_s"],
            "rate_from_launch": jobs / marks["all_s"],
            "cpu_ms_per_job": 1000 * cpu / jobs,
            "steady_cpu_ms_per_job": marks["steady_cpu_ms_per_job"],
        }
    finally:
        nodes.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--test-preset", action="store_true", help="test timings instead of production")
    args = parser.parse_args()
    preset = args.test_preset
    results: dict[str, list[dict[str, float]]] = {"offload": [], "local": []}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-offload-startup-") as tmp:
            offloaded = offload_run(Path(tmp) / "offload", args.jobs, args.workers, preset)
            local = local_run(Path(tmp) / "local", args.jobs, preset)
        results["offload"].append(offloaded)
        results["local"].append(local)
        print(f"run {run + 1}: offload {fmt(offloaded)}; local {fmt(local)}", flush=True)
    print(
        f"\n{args.jobs:,} jobs, {args.workers} workers, {args.runs} runs, "
        f"{'test preset' if preset else 'production timings'}, mutual TLS; median (min-max)\n"
    )
    print("| cell | metric | median | min-max |\n|---|---|---:|---|")
    for cell, runs in results.items():
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(
                f"| {cell} | {key} | {statistics.median(values):,.3g} | "
                f"{min(values):,.3g}-{max(values):,.3g} |"
            )

    def cpu_ratio(key: str) -> float:
        offloaded = statistics.median(r[key] for r in results["offload"])
        return offloaded / statistics.median(r[key] for r in results["local"])

    ratio, whole_run = cpu_ratio("steady_cpu_ms_per_job"), cpu_ratio("cpu_ms_per_job")
    first = statistics.median(r["first_job_s"] for r in results["offload"])
    steady = statistics.median(r["steady_rate"] for r in results["offload"])
    print(
        f"\n- first job SUCCEEDED {first:.2f} s after the workers' launch (target <= 0.6 s: "
        f"{'PASS' if first <= 0.6 else 'FAIL'})"
    )
    print(
        f"- steady offloaded rate {steady:,.0f} jobs/s (target >= 6,000: {'PASS' if steady >= 6000 else 'FAIL'})"
    )
    print(
        f"- CPU per offloaded job / per local job, steady window = {ratio:.2f} (target <= 1.5: "
        f"{'PASS' if ratio <= 1.5 else 'FAIL'}); over the whole run, start-ups included = {whole_run:.2f}"
    )
    return 0


def fmt(cells: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.3g}" for k, v in cells.items())


if __name__ == "__main__":
    sys.exit(main())
