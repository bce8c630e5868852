"""Offloaded throughput and latency: an origin without a consumer, two workers, no-op jobs.

Run inside a private network namespace (like scripts/test), from the repository root:
    .venv/bin/python -m benchmarks.bench_offload 20000
    .venv/bin/python -m benchmarks.bench_offload latency 500
The first adds jobs in batches and times until all are SUCCEEDED at the origin; the second adds
single jobs one at a time (10 ms apart, an idle topology) and reports the enqueue-to-start latency
of an offloaded job (its start on the worker minus its creation at the origin, both as mirrored
at the origin; one machine, one clock). It reuses the test support (real node processes, test
preset, the offloading cluster of tests/test_offload.py) and prints one line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from jobmesh.v1 import jobs_pb2

from node import JobState
from tests.support.launcher import NodeFactory
from tests.support.offload import TOPIC, start_cluster
from tests.support.protos import new_job
from tests.support.waiting import wait_for

BATCH = 5000
LATENCY_GAP_S = 0.01


def main(count: int) -> None:
    """Add `count` jobs at the origin in batches; time until all are SUCCEEDED there."""
    nodes = NodeFactory(Path(tempfile.mkdtemp(prefix="bench-offload-")))
    try:
        origin, _workers = start_cluster(nodes, "consumers:succeed_silently")
        start = time.monotonic()
        for done in range(0, count, BATCH):
            jobs = [new_job(TOPIC) for _ in range(min(BATCH, count - done))]
            origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=jobs))
        added_s = time.monotonic() - start
        wait_for(
            lambda: origin.count_jobs(JobState.SUCCEEDED) >= count, 300, "every job to succeed at the origin"
        )
        total_s = time.monotonic() - start
        print(
            f"{count} jobs: added in {added_s:.2f} s; all SUCCEEDED at the origin after {total_s:.2f} s "
            f"= {count / total_s:.0f} jobs/s"
        )
    finally:
        nodes.close()


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
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        latency(int(sys.argv[2]) if len(sys.argv) > 2 else 500)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
