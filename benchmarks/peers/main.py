"""Jobmesh against Celery 5, Dramatiq 2, Huey 3 and RQ 3: the same workload, in one run.

Run it through the wrapper, which makes benchmarks/peers/.venv from requirements.txt, installs
Debian's redis-server if it is missing, and enters a private network namespace:

    benchmarks/run-peers                          # 10,000 jobs, 3 runs (the issue's table)
    benchmarks/run-peers --jobs 2000 --runs 1     # a smoke test
    benchmarks/run-peers --systems rq,jobmesh --rate 100

This script (the project's .venv) starts one Redis server of its own (a temp dir, a unix
socket, no TCP port), then for each run and each system, in turn, one subprocess: the peers in
benchmarks/peers/.venv (`peer_bench.py`), Jobmesh in the project's venv (`jobmesh_bench.py`).
Each prints one JSON object with the cells; each is bounded by a timeout, and asked to stop
(SIGTERM: it stops its worker or nodes) when it overruns. Redis stops at the end, whatever
happened. Results: a Markdown table on stdout (medians, min-max, ratios to Jobmesh) and a
JSON file in benchmarks/results/.

Cells (no-op jobs; the peers on their Redis broker with every setting at its default, except
Celery's result backend, which is off as nothing reads results):
  batch      enqueue N with the library's batch call, --batch jobs a call (jobs/s)
  single     enqueue N one call each, one producer (jobs/s)
  process    the default worker launched on N queued jobs: N / time from launch until done (jobs/s)
  latency    enqueue->start at --rate jobs/s, measured from before the add call: p50 / p99 (ms)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.peers.stats import summary

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "benchmarks" / "results"
PEERS_VENV_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
SYSTEMS = ("celery", "dramatiq", "huey", "rq", "jobmesh")
TITLES = {"celery": "Celery", "dramatiq": "Dramatiq", "huey": "Huey", "rq": "RQ", "jobmesh": "Jobmesh"}
DISTRIBUTIONS = {"celery": "celery", "dramatiq": "dramatiq", "huey": "huey", "rq": "rq"}
REDIS_START_TIMEOUT_S = 10.0
STOP_GRACE_S = 30.0
SATURATED_BELOW = 0.95
"""A latency cell whose jobs were done below this share of the offered rate measured a backlog."""

CELLS = (
    ("batch", "enqueue, batch call (jobs/s)"),
    ("single", "enqueue, one at a time (jobs/s)"),
    ("process", "process N queued jobs, default worker, from launch (jobs/s)"),
)


def log(message: str) -> None:
    """Progress on stderr (stdout carries the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- Redis ----------------------------------------------------------------------------------------


def redis_answers(path: Path) -> bool:
    """True when a Redis server answers PING on the unix socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(path))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(binary: str, work: Path) -> Iterator[Path]:
    """A private Redis server (its own dir, a unix socket, no TCP port); yields the socket path."""
    directory = work / "redis"
    directory.mkdir()
    sock = directory / "redis.sock"
    # Persistence stays at Redis's defaults (RDB snapshots, no AOF), as a user would run it.
    argv = [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    argv += ["--dir", str(directory), "--logfile", str(directory / "redis.log")]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=directory)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not redis_answers(sock):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
            time.sleep(0.05)
        yield sock
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- one system, one run ----------------------------------------------------------------------------


def run_one(argv: Sequence[str], env: dict[str, str], timeout_s: float, log_path: Path) -> dict[str, Any]:
    """Run one bench subprocess; its last stdout line is the JSON of its cells."""
    with open(log_path, "ab") as err:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # it stops its worker or nodes, then exits
            try:
                process.communicate(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            raise RuntimeError(f"no result within {timeout_s:.0f}s") from None
        except BaseException:  # interrupted: stop it the same way, then go on stopping
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if process.returncode != 0:
        raise RuntimeError(f"exited with {process.returncode}; see {log_path}")
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"printed no result; see {log_path}")
    cells: dict[str, Any] = json.loads(lines[-1])
    return cells


# --- report -------------------------------------------------------------------------------------------


def versions(python: Path, systems: Sequence[str]) -> dict[str, str]:
    """Installed versions of the peer libraries (asked of the peers' venv)."""
    names = [DISTRIBUTIONS[s] for s in systems if s in DISTRIBUTIONS]
    if not names:
        return {}
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, timeout=60, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return {s: found[DISTRIBUTIONS[s]] for s in systems if s in DISTRIBUTIONS}


def figure(value: float, unit: str) -> str:
    return f"{value:,.1f}" if unit == "ms" else f"{value:,.0f}"


def spread(values: Sequence[float], unit: str) -> str:
    median, low, high = summary(values)
    if len(values) == 1:
        return figure(median, unit)
    return f"{figure(median, unit)} ({figure(low, unit)}-{figure(high, unit)})"


def report(results: dict[str, list[dict[str, Any]]], errors: dict[str, list[str]], header: str) -> str:
    """The Markdown report: the table (median and min-max of runs), then ratios to Jobmesh."""
    systems = [s for s in SYSTEMS if s in results]
    lines = [header, "", "| cell | " + " | ".join(TITLES[s] for s in systems) + " |"]
    lines.append("|---" * (len(systems) + 1) + "|")

    def values(system: str, key: str) -> list[float]:
        return [float(run[key]) for run in results[system] if key in run]

    rows = [(key, title, "jobs/s") for key, title in CELLS]
    rows += [("latency_p50_ms", "enqueue→start p50 (ms), from before the add call", "ms")]
    rows += [("latency_p99_ms", "enqueue→start p99 (ms), from before the add call", "ms")]
    rows += [("latency_rate", "  latency cell: rate the producer reached (jobs/s)", "jobs/s")]
    rows += [
        (
            "latency_drain_rate",
            "  latency cell: rate its jobs were done at (jobs/s; below the offered rate: saturated)",
            "jobs/s",
        )
    ]

    def saturated(system: str) -> bool:
        """The latency cell's jobs were done slower than offered: its latency is a backlog."""
        offered, done = values(system, "latency_rate"), values(system, "latency_drain_rate")
        return bool(offered and done) and summary(done)[0] < SATURATED_BELOW * summary(offered)[0]

    for key, title, unit in rows:
        cells = []
        for system in systems:
            cell = spread(values(system, key), unit) if values(system, key) else "—"
            if key.startswith("latency_p") and saturated(system):
                cell += " (saturated)"
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    if "jobmesh" in systems and values("jobmesh", "batch"):
        peers = [s for s in systems if s != "jobmesh"]
        lines += [
            "",
            "Jobmesh's advantage, medians (above 1: Jobmesh better; jobs/s Jobmesh ÷ peer, ms peer ÷ Jobmesh):",
            "",
        ]
        lines.append("| cell | " + " | ".join(TITLES[s] for s in peers) + " |")
        lines.append("|---" * (len(peers) + 1) + "|")
        for key, title, unit in rows[:-2]:  # not the latency cell's rates
            mine = values("jobmesh", key)
            cells = []
            for peer in peers:
                theirs = values(peer, key)
                if not mine or not theirs:
                    cells.append("—")
                    continue
                a, b = summary(mine)[0], summary(theirs)[0]
                ratio = a / b if unit == "jobs/s" else b / a
                cells.append(f"{ratio:.2f}x")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    failed = {s: e for s, e in errors.items() if e}
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {TITLES[s]}: {message}" for s, messages in failed.items() for message in messages]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="N, no-op jobs per cell (10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every system (3)")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per batch call (1,000)")
    parser.add_argument("--latency-jobs", type=int, default=1500, help="jobs of the latency cell (1,500)")
    parser.add_argument("--rate", type=float, default=300.0, help="jobs/s of the latency cell (300)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="bound of each wait (s; default max(120, N/20))"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS)
    )
    parser.add_argument(
        "--peers-python", type=Path, default=PEERS_VENV_PYTHON, help="python of the peers' venv"
    )
    parser.add_argument("--redis-server", default="redis-server", help="the redis-server binary")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.timeout is None:
        args.timeout = max(120.0, args.jobs / 20)
    return args


def terminate_on_sigterm() -> None:
    """SIGTERM ends this script through its `finally` blocks (subprocesses and Redis stopped)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    terminate_on_sigterm()
    load_before = load()
    peers = [s for s in args.systems if s != "jobmesh"]
    lib_versions = versions(args.peers_python, peers)
    common = ["--jobs", str(args.jobs), "--batch", str(args.batch), "--latency-jobs", str(args.latency_jobs)]
    common += ["--rate", str(args.rate), "--timeout", str(args.timeout)]
    # A run's waits: processing, latency jobs; plus enqueueing and start-up.
    run_timeout_s = 3 * args.timeout + 120
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
    errors: dict[str, list[str]] = {s: [] for s in args.systems}
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        needs_redis = bool(peers)
        with redis_server(args.redis_server, work) if needs_redis else _no_redis() as sock:
            env = dict(os.environ, PYTHONPATH=str(ROOT), PEERS_REDIS_SOCKET=str(sock))
            for number in range(1, args.runs + 1):
                for system in args.systems:
                    if system == "jobmesh":
                        argv_ = [
                            sys.executable,
                            "-m",
                            "benchmarks.peers.jobmesh_bench",
                            *common,
                            "--work",
                            tmp,
                        ]
                    else:
                        argv_ = [str(args.peers_python), "-m", "benchmarks.peers.peer_bench", system, *common]
                        argv_ += ["--work", tmp]
                    log(f"run {number}/{args.runs}: {TITLES[system]} (load {load()})")
                    try:
                        cells = run_one(argv_, env, run_timeout_s, work / f"{system}-run{number}.log")
                    except RuntimeError as e:
                        tail = _tail(work / f"{system}-run{number}.log")
                        errors[system].append(f"run {number}: {e}{tail}")
                        log(f"  {TITLES[system]} failed: {e}{tail}")
                        continue
                    results[system].append(cells)
                    log("  " + ", ".join(f"{k} {v:,.1f}" for k, v in cells.items()))
    load_after = load()
    header = (
        f"Peers benchmark: {args.jobs:,} no-op jobs, {args.runs} run(s), medians (min-max); "
        f"latency at {args.rate:,.0f} jobs/s over {args.latency_jobs:,} jobs. "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"load average (1/5/15 min) {load_before} before, {load_after} after. "
        + ", ".join(f"{TITLES[s]} {v}" for s, v in lib_versions.items())
    )
    text = report({s: r for s, r in results.items() if r or errors[s]}, errors, header)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "peers_python"}}
    document |= {"versions": lib_versions, "load_before": load_before, "load_after": load_after}
    document |= {"results": results, "errors": errors}
    out.write_text(json.dumps(document, indent=2, default=str))
    log(f"wrote {out}")
    return 1 if any(not results[s] for s in args.systems) else 0


@contextmanager
def _no_redis() -> Iterator[Path]:
    yield Path("/nonexistent")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n    " + "\n    ".join(text)) if text else ""


if __name__ == "__main__":
    sys.exit(main())
