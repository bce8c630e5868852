"""Offloaded throughput and latency: an origin without a consumer, two workers, no-op jobs.

Run inside a private network namespace (like scripts/test), from the repository root:
    .venv/bin/python -m benchmarks.bench_offload 20000
    .venv/bin/python -m benchmarks.bench_offload latency 500
    .venv/bin/python -m benchmarks.bench_offload compare 20000 3
The first adds jobs in batches and times until all are SUCCEEDED at the origin; the second adds
single jobs one at a time (10 ms apart, an idle topology) and reports the enqueue-to-start latency
of an offloaded job (its start on the worker minus its creation at the origin, both as mirrored
at the origin; one machine, one clock). `compare` alternates the throughput run in the secure
default (mutual TLS between the nodes) and with `--insecure` (plaintext), fresh nodes each run,
and prints each run and the medians with their ratio. It reuses the test support (real node processes, test
preset, the offloading cluster of tests/test_offload.py) and prints one line.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2

from node import JobState
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import TOPIC, start_cluster, wait_consumes
from tests.support.protos import new_job
from tests.support.topology import create, start_all, wait_views
from tests.support.waiting import wait_for

BATCH = 5000
LATENCY_GAP_S = 0.01


def _insecure_cluster(nodes: NodeFactory, consumer: str) -> NodeProcess:
    """The offloading cluster of `start_cluster` (an origin, w1 and w2), every node `--insecure`."""
    flags = ["--insecure"]
    origin = create(nodes, "origin", extra_args=flags).start()
    workers = [
        create(nodes, f"w{i}", seeds=[origin], consumers=[f"offload/**={consumer}"], extra_args=flags)
        for i in (1, 2)
    ]
    start_all(*workers)
    wait_views([origin, *workers], {"origin", "w1", "w2"})
    wait_consumes(origin, workers)
    return origin


def add_in_batches(origin: NodeProcess, count: int) -> None:
    """Add `count` jobs on TOPIC at `origin`, BATCH per AddJobs call."""
    for done in range(0, count, BATCH):
        jobs = [new_job(TOPIC) for _ in range(min(BATCH, count - done))]
        origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=jobs))


def main(count: int, insecure: bool = False) -> float:
    """Add `count` jobs at the origin in batches; time until all are SUCCEEDED there (jobs/s)."""
    nodes = NodeFactory(Path(tempfile.mkdtemp(prefix="bench-offload-")))
    try:
        consumer = "consumers:succeed_silently"
        origin = _insecure_cluster(nodes, consumer) if insecure else start_cluster(nodes, consumer)[0]
        start = time.monotonic()
        add_in_batches(origin, count)
        added_s = time.monotonic() - start
        wait_for(
            lambda: origin.count_jobs(JobState.SUCCEEDED) >= count, 300, "every job to succeed at the origin"
        )
        total_s = time.monotonic() - start
        print(
            f"{'plaintext' if insecure else 'mTLS'}: {count} jobs: added in {added_s:.2f} s; all "
            f"SUCCEEDED at the origin after {total_s:.2f} s = {count / total_s:.0f} jobs/s",
            flush=True,
        )
        return count / total_s
    finally:
        nodes.close()


def compare(count: int, runs: int) -> None:
    """`runs` throughput runs each way, alternating mTLS and plaintext; medians and their ratio."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for insecure in (False, True):
            rates[insecure].append(main(count, insecure))
    secure, plain = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"median of {runs}: mTLS {secure:.0f} jobs/s, plaintext {plain:.0f} jobs/s, "
        f"ratio {secure / plain:.2f}"
    )


def latency(count: int) -> None:
    """Add `count` single jobs one at a time; print enqueue-to-start latency p50/p99."""
    nodes = NodeFactory(Path(tempfile.mkdtemp(prefix="bench-offload-latency-")))
    try:
        origin, _workers = start_cluster(nodes, "consumers:succeed_silently")
        for _ in range(count):
            origin.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(TOPIC)))
            time.sleep(LATENCY_GAP_S)
        wait_for(
            lambda: origin.count_jobs(JobState.SUCCEEDED) >= count, 60, "every job to succeed at the origin"
        )
        rows = origin.query_journal("SELECT started_us - created_us FROM jobs WHERE state = 3")
        waits = sorted(int(r[0]) / 1000 for r in rows)
        p50 = waits[len(waits) // 2]
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
        print(
            f"{len(waits)} offloaded jobs: enqueue-to-start p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {waits[-1]:.2f} ms"
        )
    finally:
        nodes.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        compare(
            int(sys.argv[2]) if len(sys.argv) > 2 else 20000, int(sys.argv[3]) if len(sys.argv) > 3 else 3
        )
    elif len(sys.argv) > 1 and sys.argv[1] == "latency":
        latency(int(sys.argv[2]) if len(sys.argv) > 2 else 500)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
