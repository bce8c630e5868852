"""One run of the workload against one peer library; prints its cells as one JSON object.

Runs in benchmarks/peers/.venv (the peers are not project dependencies), started by
`benchmarks/peers/main.py` with the Redis server it runs (`PEERS_REDIS_SOCKET`):

    python -m benchmarks.peers.peer_bench {celery,dramatiq,huey,rq} --jobs N ...

The cells, in this order, each bounded by --timeout:
  batch      N no-op jobs enqueued by the library's batch call, --batch at a time (no worker)
  single     N no-op jobs enqueued one call each, one producer (no worker)
  process    the library's default worker launched on those N queued jobs: N / (time from
             launch until N have counted themselves done)
  latency    with that worker running (and WARM_TIMED_JOBS timed jobs done, not counted),
             --latency-jobs timed jobs at --rate per second (open
             loop, one producer); each records its start minus the producer's clock taken
             before the add call: p50 and p99 (ms)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.peers.apps.common import DONE_KEY, LATENCY_KEY, SOCKET
from benchmarks.peers.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POLL_S = 0.01
STOP_TIMEOUT_S = 10.0
WARM_TIMED_JOBS = 50


class Peer:
    """One library's producer calls and the command line of its default worker."""

    def enqueue_batch(self, count: int) -> None:
        """Enqueue `count` no-op jobs with the library's batch call."""
        raise NotImplementedError

    def enqueue_one(self) -> None:
        """Enqueue one no-op job."""
        raise NotImplementedError

    def enqueue_timed(self, t0: float) -> None:
        """Enqueue one timed job carrying `t0`."""
        raise NotImplementedError

    def worker_argv(self) -> list[str]:
        """The default worker, as its documentation starts it."""
        raise NotImplementedError


class CeleryPeer(Peer):
    def __init__(self) -> None:
        from celery import group

        from benchmarks.peers.apps import celery_app

        self.app = celery_app
        self.group = group

    def enqueue_batch(self, count: int) -> None:
        self.group(self.app.noop.s() for _ in range(count)).apply_async()

    def enqueue_one(self) -> None:
        self.app.noop.delay()

    def enqueue_timed(self, t0: float) -> None:
        self.app.timed.delay(t0)

    def worker_argv(self) -> list[str]:
        return [str(BIN / "celery"), "-A", "benchmarks.peers.apps.celery_app", "worker", "-l", "WARNING"]


class DramatiqPeer(Peer):
    def __init__(self) -> None:
        import dramatiq

        from benchmarks.peers.apps import dramatiq_app

        self.app = dramatiq_app
        self.group = dramatiq.group

    def enqueue_batch(self, count: int) -> None:
        self.group(self.app.noop.message() for _ in range(count)).run()

    def enqueue_one(self) -> None:
        self.app.noop.send()

    def enqueue_timed(self, t0: float) -> None:
        self.app.timed.send(t0)

    def worker_argv(self) -> list[str]:
        return [str(BIN / "dramatiq"), "benchmarks.peers.apps.dramatiq_app"]


class HueyPeer(Peer):
    def __init__(self) -> None:
        from benchmarks.peers.apps import huey_app

        self.app = huey_app

    def enqueue_batch(self, count: int) -> None:
        self.app.noop.map(() for _ in range(count))

    def enqueue_one(self) -> None:
        self.app.noop()

    def enqueue_timed(self, t0: float) -> None:
        self.app.timed(t0)

    def worker_argv(self) -> list[str]:
        return [str(BIN / "huey_consumer"), "benchmarks.peers.apps.huey_app.huey"]


class RqPeer(Peer):
    def __init__(self) -> None:
        from rq import Queue

        from benchmarks.peers.apps import rq_app

        self.app = rq_app
        self.queue_class = Queue
        self.queue = Queue("default", connection=redis.Redis(unix_socket_path=SOCKET))

    def enqueue_batch(self, count: int) -> None:
        prepare = self.queue_class.prepare_data
        self.queue.enqueue_many([prepare(self.app.noop) for _ in range(count)])

    def enqueue_one(self) -> None:
        self.queue.enqueue(self.app.noop)

    def enqueue_timed(self, t0: float) -> None:
        self.queue.enqueue(self.app.timed, t0)

    def worker_argv(self) -> list[str]:
        return [str(BIN / "rq"), "worker", "--url", f"unix://{SOCKET}", "default"]


PEERS: dict[str, Callable[[], Peer]] = {
    "celery": CeleryPeer,
    "dramatiq": DramatiqPeer,
    "huey": HueyPeer,
    "rq": RqPeer,
}


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, worker: subprocess.Popen[bytes]
) -> None:
    """Poll `check` every POLL_S until true; RuntimeError at the deadline or if the worker died."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group (its pool's children too), SIGKILL after STOP_TIMEOUT_S."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # what is left of its group (forked children)
    worker.wait()


def rate_of(count: int, action: Callable[[], None]) -> float:
    began = time.perf_counter()
    action()
    return count / (time.perf_counter() - began)


def one_run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    db = redis.Redis(unix_socket_path=SOCKET)
    db.flushall()
    peer = PEERS[name]()
    jobs, batch = args.jobs, args.batch
    for _ in range(50):  # warm-up: connections, imports; not counted
        peer.enqueue_one()
    peer.enqueue_batch(50)
    db.flushall()

    def batches() -> None:
        for first in range(0, jobs, batch):
            peer.enqueue_batch(min(batch, jobs - first))

    def singles() -> None:
        for _ in range(jobs):
            peer.enqueue_one()

    cells: dict[str, Any] = {"batch": rate_of(jobs, batches)}
    db.flushall()
    cells["single"] = rate_of(jobs, singles)

    log = open(Path(args.work) / f"{name}-worker.log", "ab")  # noqa: SIM115 (closed below)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    began = time.perf_counter()
    worker = subprocess.Popen(
        peer.worker_argv(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_until(lambda: int(db.get(DONE_KEY) or 0) >= jobs, args.timeout, f"{jobs} jobs done", worker)
        cells["process"] = jobs / (time.perf_counter() - began)

        for _ in range(WARM_TIMED_JOBS):  # the timed path once through, then the measured jobs
            peer.enqueue_timed(time.time())
        wait_until(lambda: db.llen(LATENCY_KEY) >= WARM_TIMED_JOBS, args.timeout, "warm-up jobs", worker)
        db.delete(LATENCY_KEY)
        total = args.latency_jobs
        start = time.perf_counter()
        for index in range(total):  # open loop: a steady rate whatever the worker does
            delay = start + index / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            peer.enqueue_timed(time.time())
        cells["latency_rate"] = total / (time.perf_counter() - start)
        wait_until(lambda: db.llen(LATENCY_KEY) >= total, args.timeout, f"{total} timed jobs", worker)
        cells["latency_drain_rate"] = total / (time.perf_counter() - start)  # below --rate: saturated
        latencies = [1000 * float(v) for v in db.lrange(LATENCY_KEY, 0, -1)]
        cells["latency_p50_ms"] = percentile(latencies, 50)
        cells["latency_p99_ms"] = percentile(latencies, 99)
    finally:
        stop(worker)
        log.close()
    db.flushall()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--latency-jobs", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each wait (s)")
    parser.add_argument("--work", default=".", help="directory for the worker's log")
    args = parser.parse_args()
    # SIGTERM (the driver's timeout) ends through the `finally` blocks: workers and nodes stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(json.dumps(one_run(args.peer, args)))


if __name__ == "__main__":
    main()
