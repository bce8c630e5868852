"""Consumers the benchmark's node loads with `--consumer 'bench/**=benchmarks.consumers:NAME'`.

The node imports them from its working directory (the repository root), so they must stay
free of imports beyond the `node` package and the standard library.
"""

from __future__ import annotations

import time

from node import Job, JobContext, JobResult


def noop(job: Job, context: JobContext) -> None:
    """A sync consumer that does nothing (runs in the node's consumer thread pool): SUCCEEDED."""


async def async_noop(job: Job, context: JobContext) -> None:
    """An async consumer that does nothing (runs on the node's event loop): SUCCEEDED."""


def _started_us() -> str:
    return str(time.time_ns() // 1000)


def latency(job: Job, context: JobContext) -> JobResult:
    """Sync: succeed with the wall-clock time it started (microseconds) as the result message."""
    return JobResult.succeeded(_started_us())


async def async_latency(job: Job, context: JobContext) -> JobResult:
    """Async: succeed with the wall-clock time it started (microseconds) as the result message."""
    return JobResult.succeeded(_started_us())
