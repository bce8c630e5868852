"""One run of the peers workload against Jobmesh, used as a user would; prints one JSON object.

Runs in the project's .venv, started by `benchmarks/peers/main.py` (inside its private network
namespace). Nodes are real `jobmesh run` processes (`tests.support.launcher.NodeProcess`, secure
default: TLS and the data dir's admin token); the producer is `node.client.JobmeshClient`.

    python -m benchmarks.peers.jobmesh_bench --jobs N ...

The cells, as for the peers (see `benchmarks/peers/peer_bench.py`), each bounded by --timeout:
  batch      N jobs with `JobmeshClient.add_jobs` (AddJobs), --batch a call, on a node with no consumer
  single     N jobs with `JobmeshClient.add_job` (the SubmitJobs stream), one producer, on a second
             node with no consumer
  process    that second node stopped (SIGTERM) and launched again on its data dir with a no-op
             sync consumer (the default thread pool): N / (time from launch until FindJobs
             counts N SUCCEEDED)
  latency    on that node (after WARM_TIMED_JOBS timed jobs, not counted), --latency-jobs jobs
             at --rate per second (open loop, `add_job`), each carrying the producer's clock
             before the add call; the consumer returns its start minus that clock: p50 and
             p99 (ms)
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobmesh.v1 import jobs_pb2

from benchmarks.peers.stats import percentile
from node.client import JobmeshClient, new_job
from tests.support.launcher import NodeProcess, shared_cluster

CONSUMERS = "benchmarks.peers.jobmesh_consumers"
TOPIC = "work/noop"
TIMED_TOPIC = "work/timed"
WARM_TOPIC = "idle/warm"
"""Warm-up of the enqueue cells: no consumer ever takes it."""
WARM_TIMED_TOPIC = "work/warm"
"""Warm-up of the latency cell."""
POLL_S = 0.02
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
WARM_TIMED_JOBS = 50


def succeeded(client: JobmeshClient, topic: str) -> int:
    """How many jobs of `topic` SUCCEEDED."""
    request = jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_SUCCEEDED, topic=topic, page_size=1)
    return int(client.find_jobs(request).total_size)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` every POLL_S until true; RuntimeError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def rate_of(count: int, action: Callable[[], None]) -> float:
    began = time.perf_counter()
    action()
    return count / (time.perf_counter() - began)


def client_of(node: NodeProcess) -> JobmeshClient:
    return JobmeshClient(node.address, transport=node.client_transport())


def one_run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    jobs, batch = args.jobs, args.batch
    cluster = shared_cluster(work)
    flags = ["--log-level", "WARNING"]
    cells: dict[str, Any] = {}

    batch_node = NodeProcess(Path(tempfile.mkdtemp(dir=work)), work, [], extra_args=flags, cluster=cluster)
    batch_node.start(START_TIMEOUT_S)
    try:
        with client_of(batch_node) as client:
            for _ in range(50):  # warm-up: the channel, the stream, the node's paths; not counted
                client.add_job(WARM_TOPIC)
            client.add_jobs([new_job(WARM_TOPIC) for _ in range(50)])

            def batches() -> None:
                for first in range(0, jobs, batch):
                    client.add_jobs([new_job(TOPIC) for _ in range(min(batch, jobs - first))])

            cells["batch"] = rate_of(jobs, batches)
    finally:
        batch_node.terminate(STOP_TIMEOUT_S)
        shutil.rmtree(batch_node.data_dir, ignore_errors=True)

    node = NodeProcess(Path(tempfile.mkdtemp(dir=work)), work, [], extra_args=flags, cluster=cluster)
    node.start(START_TIMEOUT_S)
    try:
        with client_of(node) as client:
            for _ in range(50):
                client.add_job(WARM_TOPIC)

            def singles() -> None:
                for _ in range(jobs):
                    client.add_job(TOPIC)

            cells["single"] = rate_of(jobs, singles)
        node.terminate(STOP_TIMEOUT_S)

        # The same journal, now with a consumer: the "worker" is the node itself.
        node.consumers = tuple(
            f"{topic}={CONSUMERS}:{name}"
            for topic, name in ((TOPIC, "noop"), (WARM_TIMED_TOPIC, "timed"), (TIMED_TOPIC, "timed"))
        )
        began = time.perf_counter()
        node.spawn()
        node.wait_serving(START_TIMEOUT_S)
        with client_of(node) as client:
            wait_until(lambda: succeeded(client, TOPIC) >= jobs, args.timeout, f"{jobs} jobs SUCCEEDED")
            cells["process"] = jobs / (time.perf_counter() - began)

            for _ in range(WARM_TIMED_JOBS):  # as for the peers: warm-up jobs, not counted
                client.add_job(WARM_TIMED_TOPIC, {"t0_us": time.time_ns() // 1000})
            wait_until(
                lambda: succeeded(client, WARM_TIMED_TOPIC) >= WARM_TIMED_JOBS, args.timeout, "warm-up jobs"
            )
            total = args.latency_jobs
            start = time.perf_counter()
            for index in range(total):  # open loop: a steady rate whatever the node does
                delay = start + index / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.add_job(TIMED_TOPIC, {"t0_us": time.time_ns() // 1000})
            cells["latency_rate"] = total / (time.perf_counter() - start)
            wait_until(lambda: succeeded(client, TIMED_TOPIC) >= total, args.timeout, f"{total} timed jobs")
            cells["latency_drain_rate"] = total / (time.perf_counter() - start)  # below --rate: saturated
            request = jobs_pb2.FindJobsRequest(
                type=jobs_pb2.QUERY_TYPE_SUCCEEDED, topic=TIMED_TOPIC, page_size=1000
            )
            latencies = [int(job.result_message) / 1000 for job in client.iter_jobs(request)]
            if len(latencies) != total:
                raise RuntimeError(f"read {len(latencies)} timed results, expected {total}")
            cells["latency_p50_ms"] = percentile(latencies, 50)
            cells["latency_p99_ms"] = percentile(latencies, 99)
    finally:
        if node.running:
            node.terminate(STOP_TIMEOUT_S)
        shutil.rmtree(node.data_dir, ignore_errors=True)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--latency-jobs", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each wait (s)")
    parser.add_argument("--work", default=None, help="directory for data dirs and node logs")
    args = parser.parse_args()
    # SIGTERM (the driver's timeout) ends through the `finally` blocks: workers and nodes stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        print(json.dumps(one_run(Path(tmp), args)))


if __name__ == "__main__":
    main()
