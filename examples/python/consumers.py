"""Example consumers: load them with `jobmesh run --consumer 'PATTERN=consumers:NAME'`
from this directory (or with this directory on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import hashlib

from node import Job, JobContext, JobResult


def greet(job: Job, context: JobContext) -> JobResult:
    """Succeeds with a greeting built from the `name` property."""
    name = job.properties.get("name", "world")
    return JobResult.succeeded(f"hello, {name}")


def checksum(job: Job, context: JobContext) -> JobResult:
    """Returns the SHA-256 of the input payload as the output payload."""
    if not job.payload:
        return JobResult.cancelled("no payload: add the job with --payload FILE")
    return JobResult.succeeded("sha256 computed", output=hashlib.sha256(job.payload).hexdigest().encode())


def flaky(job: Job, context: JobContext) -> JobResult:
    """Fails the first attempts (retried after 0.5 s), then succeeds."""
    if job.retry_count < int(job.properties.get("failures", 2)):  # type: ignore[call-overload]
        return JobResult.failed(f"attempt {job.retry_count + 1} failed", retry_delay_s=0.5)
    return JobResult.succeeded(f"succeeded after {job.retry_count} retries")


async def countdown(job: Job, context: JobContext) -> JobResult:
    """An async consumer that counts down `seconds` with progress and log lines; stops early when asked."""
    seconds = int(job.properties.get("seconds", 5))  # type: ignore[call-overload]
    context.init_progress(seconds, eta_s=seconds)
    for left in range(seconds, 0, -1):
        if context.is_stopped():
            return JobResult.failed("stopped by request")
        context.log("%d seconds left", left)
        await asyncio.sleep(1)
        context.increment_progress()
    return JobResult.succeeded("countdown finished")
