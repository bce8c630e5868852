"""Consumers the peers benchmark's Jobmesh node loads (`--consumer TOPIC=benchmarks.peers.jobmesh_consumers:NAME`).

The node imports them from the repository root, so they import nothing beyond `node` and the
standard library.
"""

from __future__ import annotations

import time

from node import Job, JobContext, JobResult


def noop(job: Job, context: JobContext) -> None:
    """A sync no-op (the node's default thread pool): SUCCEEDED."""


def timed(job: Job, context: JobContext) -> JobResult:
    """Succeed with (start - the producer's clock before its add call) in microseconds as the message."""
    started_us = time.time_ns() // 1000
    t0_us = job.properties["t0_us"]
    assert isinstance(t0_us, int), "timed jobs carry an int property t0_us"
    return JobResult.succeeded(str(started_us - t0_us))
