"""Consumers the tests load into node processes (`--consumer 'topic=consumers:NAME'`).

They keep their state in files named by job properties, so a test can see what ran even
across a kill -9: `attempts_file` gets one line (the wall-clock time) per attempt,
`started_file` is created when an attempt starts, and blocking consumers wait for
`release_file` to exist.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from node import Job, JobContext, JobResult

POLL_S = 0.01
MAX_BLOCK_S = 60.0  # a test that forgets to release a job must not leave a thread forever


def _path(job: Job, name: str) -> Path | None:
    value = job.properties.get(name)
    return Path(value) if isinstance(value, str) else None


def record_attempt(job: Job) -> int:
    """Note this attempt in `attempts_file` and create `started_file`; returns earlier attempts."""
    earlier = 0
    attempts_file = _path(job, "attempts_file")
    if attempts_file is not None:
        earlier = len(attempts_file.read_text().split()) if attempts_file.exists() else 0
        with attempts_file.open("a") as f:
            f.write(f"{time.time()}\n")
    started = _path(job, "started_file")
    if started is not None:
        started.touch()
    return earlier


def _wait_for_release(job: Job, context: JobContext, *, honour_stop: bool) -> bool:
    """Block until `release_file` exists (True) or, if `honour_stop`, a stop is requested (False)."""
    release = _path(job, "release_file")
    deadline = time.monotonic() + MAX_BLOCK_S
    while time.monotonic() < deadline:
        if release is not None and release.exists():
            return True
        if honour_stop and context.is_stopped():
            return False
        time.sleep(POLL_S)
    return False


def succeed(job: Job, context: JobContext) -> JobResult:
    """Succeeds with a message naming the topic."""
    record_attempt(job)
    return JobResult.succeeded(f"done: {job.topic}")


def succeed_silently(job: Job, context: JobContext) -> None:
    """Returns None, which means success."""
    record_attempt(job)


def fail_always(job: Job, context: JobContext) -> JobResult:
    """Fails every attempt."""
    attempt = record_attempt(job) + 1
    return JobResult.failed(f"attempt {attempt} failed")


def fail_then_succeed(job: Job, context: JobContext) -> JobResult:
    """Fails the first `failures` attempts (property), then succeeds; `delay_s` asks for a retry delay."""
    earlier = record_attempt(job)
    failures = job.properties.get("failures", 1)
    delay = job.properties.get("delay_s")
    if isinstance(failures, int) and earlier < failures:
        return JobResult.failed(
            f"attempt {earlier + 1} failed", retry_delay_s=float(delay) if isinstance(delay, float) else None
        )
    return JobResult.succeeded(f"succeeded on attempt {earlier + 1}")


def cancel(job: Job, context: JobContext) -> JobResult:
    """Cancels: the job cannot succeed."""
    record_attempt(job)
    return JobResult.cancelled("input cannot be processed")


def cancel_first_attempt(job: Job, context: JobContext) -> JobResult:
    """Cancels the first attempt, succeeds on any later one (for RetryJob)."""
    if record_attempt(job) == 0:
        return JobResult.cancelled("first attempt cancelled")
    return JobResult.succeeded("retried and succeeded")


def raise_error(job: Job, context: JobContext) -> JobResult:
    """Raises with a message naming the `reason` property."""
    record_attempt(job)
    raise ValueError(f"consumer exploded: {job.properties.get('reason', 'no reason')!s}")


def return_wrong_type(job: Job, context: JobContext) -> object:
    """Returns something that is not a JobResult."""
    record_attempt(job)
    return 42


async def async_succeed(job: Job, context: JobContext) -> JobResult:
    """An `async def` consumer, run on the node's event loop."""
    record_attempt(job)
    await asyncio.sleep(0)
    return JobResult.succeeded(f"async done: {job.topic}")


class ClassConsumer:
    """A consumer class: the node creates one instance and calls `process`."""

    def __init__(self) -> None:
        self.prefix = "from a class"

    def process(self, job: Job, context: JobContext) -> JobResult:
        """Succeeds with a message set in __init__."""
        record_attempt(job)
        return JobResult.succeeded(self.prefix)


def echo(job: Job, context: JobContext) -> JobResult:
    """Returns `echo:` + the input payload as output, and the typed properties as the message."""
    record_attempt(job)
    described = sorted((name, repr(value)) for name, value in job.properties.items())
    return JobResult.succeeded(repr(described), output=b"echo:" + (job.payload or b""))


def block_until_released(job: Job, context: JobContext) -> JobResult:
    """Blocks until `release_file` exists; a stop request ends it with a failure (-> STOPPED)."""
    record_attempt(job)
    if _wait_for_release(job, context, honour_stop=True):
        return JobResult.succeeded("released")
    return JobResult.failed("stopped before release")


def block_ignoring_stop(job: Job, context: JobContext) -> JobResult:
    """Blocks until `release_file` exists, whatever stop requests say, then succeeds."""
    record_attempt(job)
    if _wait_for_release(job, context, honour_stop=False):
        return JobResult.succeeded("released; the stop request was ignored")
    return JobResult.failed("never released")


def wait_until_stopped(job: Job, context: JobContext) -> JobResult:
    """Runs until asked to stop, then reports it (the cooperative-stop contract)."""
    record_attempt(job)
    deadline = time.monotonic() + MAX_BLOCK_S
    while not context.is_stopped() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return JobResult.failed("stopped cooperatively")
