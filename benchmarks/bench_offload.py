"""Offloaded throughput: an origin without a consumer, two workers, no-op jobs, results back.

Run inside a private network namespace (like scripts/test), from the repository root:
    PYTHONPATH=.:generated:tests python -m benchmarks.bench_offload 20000
It reuses the test harness (real node processes, test preset) and prints one line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from harness import NodeFactory, new_job, wait_for
from jobmesh.v1 import jobs_pb2
from test_offload import TOPIC, _cluster

BATCH = 5000


def main(count: int) -> None:
    """Add `count` jobs at the origin in batches; time until all are SUCCEEDED there."""
    nodes = NodeFactory(Path(tempfile.mkdtemp(prefix="bench-offload-")))
    try:
        origin, _workers = _cluster(nodes, "consumers:succeed_silently")
        start = time.monotonic()
        for done in range(0, count, BATCH):
            jobs = [new_job(TOPIC) for _ in range(min(BATCH, count - done))]
            origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=jobs))
        added_s = time.monotonic() - start
        wait_for(
            lambda: origin.query_journal("SELECT count(*) FROM jobs WHERE state = 3")[0][0] >= count,
            300,
            "every job to succeed at the origin",
        )
        total_s = time.monotonic() - start
        print(
            f"{count} jobs: added in {added_s:.2f} s; all SUCCEEDED at the origin after {total_s:.2f} s "
            f"= {count / total_s:.0f} jobs/s"
        )
    finally:
        nodes.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
