"""Consumers the tests load into node processes (`--consumer 'topic=consumers:NAME'`).

They keep their state in files named by job properties, so a test can see what ran even
across a kill -9: `attempts_file` gets one line (the wall-clock time) per attempt,
`started_file` is created when an attempt starts, blocking consumers wait for
`release_file` to exist, and `stopped_file` is created when one of them honours a stop request.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
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


def attempts(path: Path) -> list[float]:
    """The attempt times `record_attempt` wrote to `path` (read by tests; none yet: empty)."""
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().split()]


def _wait_for_release(job: Job, context: JobContext, *, honour_stop: bool) -> bool:
    """Block until `release_file` exists (True) or, if `honour_stop`, a stop is requested (False)."""
    release = _path(job, "release_file")
    deadline = time.monotonic() + MAX_BLOCK_S
    while time.monotonic() < deadline:
        if release is not None and release.exists():
            return True
        if honour_stop and context.is_stopped():
            stopped = _path(job, "stopped_file")
            if stopped is not None:
                stopped.touch()
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


# --- executor context (issue 3) ------------------------------------------------------------------


def report_progress(job: Job, context: JobContext) -> JobResult:
    """Announces `steps` steps with an ETA, logs and counts each; after `pause_after` steps waits for release.

    Before pausing it sets the ETA to `pause_eta_s` seconds from then, if that property is given.
    Sets the property `steps_done` when it is done; a stop request ends it with a failure.
    """
    record_attempt(job)
    steps = job.properties.get("steps", 3)
    pause_after = job.properties.get("pause_after", -1)
    pause_eta = job.properties.get("pause_eta_s")
    assert isinstance(steps, int)
    assert isinstance(pause_after, int)
    context.init_progress(steps, eta_s=3600.0)
    for step in range(1, steps + 1):
        context.log("step %d of %d", step, steps)
        context.increment_progress()
        if step == pause_after:
            if isinstance(pause_eta, float):
                context.update_eta(pause_eta)
            if not _wait_for_release(job, context, honour_stop=True):
                return JobResult.failed("stopped while paused")
    context.set_property("steps_done", steps)
    return JobResult.succeeded(f"{steps} steps done")


def log_lines(job: Job, context: JobContext) -> JobResult:
    """Logs `lines` numbered lines (property), then succeeds."""
    record_attempt(job)
    lines = job.properties.get("lines", 1)
    assert isinstance(lines, int)
    for index in range(1, lines + 1):
        context.log(f"line {index}")
    return JobResult.succeeded()


def complete_from_another_thread(job: Job, context: JobContext) -> object:
    """Returns at once with complete_later(); a thread of its own completes the job later.

    The thread succeeds the job when `release_file` exists, or fails it when a stop is requested.
    """
    record_attempt(job)

    def finish() -> None:
        if _wait_for_release(job, context, honour_stop=True):
            context.complete(JobResult.succeeded("completed from another thread"))
        else:
            context.complete(JobResult.failed("stopped before completion"))
        context.complete(JobResult.failed("a second complete() is ignored"))

    threading.Thread(target=finish, name=f"complete-{job.id}", daemon=True).start()
    return context.complete_later()


def sleep_briefly(job: Job, context: JobContext) -> JobResult:
    """Sleeps `sleep_s` seconds (a float property, default 0.05), then succeeds."""
    value = job.properties.get("sleep_s", 0.05)
    time.sleep(float(value) if isinstance(value, (int, float)) else 0.05)
    return JobResult.succeeded("slept")


def record_run(job: Job, context: JobContext) -> JobResult:
    """Appends `<pid> <job id> <wall time>` to `runs_file` as it starts (every node process
    appends to the same file, a line at a time), sleeps `sleep_s` (default 0.05), then succeeds."""
    runs = _path(job, "runs_file")
    if runs is not None:
        with runs.open("a") as f:
            f.write(f"{os.getpid()} {job.id} {time.time()}\n")
    return sleep_briefly(job, context)


def runs(path: Path) -> list[tuple[int, str, float]]:
    """The (pid, job id, start time) lines `record_run` wrote to `path`."""
    if not path.exists():
        return []
    return [(int(p), j, float(t)) for p, j, t in (line.split() for line in path.read_text().splitlines())]


def progress_on_release(job: Job, context: JobContext) -> JobResult:
    """Announces `steps` steps; takes step N when `<release_file>.N` exists (a stop ends it)."""
    record_attempt(job)
    steps = job.properties.get("steps", 3)
    assert isinstance(steps, int)
    release = _path(job, "release_file")
    context.init_progress(steps, eta_s=60.0)
    for step in range(1, steps + 1):
        deadline = time.monotonic() + MAX_BLOCK_S
        while release is not None and not Path(f"{release}.{step}").exists():
            if context.is_stopped() or time.monotonic() > deadline:
                return JobResult.failed("stopped while waiting for a step")
            time.sleep(POLL_S)
        context.log("step %d of %d", step, steps)
        context.increment_progress()
    return JobResult.succeeded(f"{steps} steps done")


EXECUTIONS_SUFFIX = ".executions"
"""`record_execution` writes `<executions_dir>/<instance id>.executions` (one file per node)."""


def _append_line(path: Path, line: str) -> None:
    # One write(2) on an O_APPEND descriptor: the line lands whole at the end even while other
    # consumer threads append, and a kill -9 can cut only the line being written.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record_execution(job: Job, context: JobContext) -> JobResult:
    """Works `work_s` seconds (default 0.01), noting the execution in a per-node file of
    `executions_dir` (the chaos scenario counts executions from these files).

    Lines: `S TOKEN JOB_ID CLAIM ATTEMPT INSTANCE PID TIME_US` when it starts and
    `E TOKEN TIME_US` when it ends; TOKEN is new per execution and is the result message
    (`exec=TOKEN`), so the origin's mirrored result names the execution it accepted.
    """
    directory = _path(job, "executions_dir")
    value = job.properties.get("work_s", 0.01)
    work_s = float(value) if isinstance(value, (int, float)) else 0.01
    token = uuid.uuid4().hex
    path = None
    if directory is not None:
        path = directory / f"{job.target_instance or 'unknown'}{EXECUTIONS_SUFFIX}"
        _append_line(
            path,
            f"S {token} {job.id} {job.claim} {job.attempt} {job.target_instance} {os.getpid()} "
            f"{time.time_ns() // 1000}\n",
        )
    time.sleep(work_s)
    if path is not None:
        _append_line(path, f"E {token} {time.time_ns() // 1000}\n")
    return JobResult.succeeded(f"exec={token}")


# --- worker processes (sync_isolation = process; issue 13 point 8) -------------------------------


def in_process_or_hang(job: Job, context: JobContext) -> JobResult:
    """Appends `pid start` to `runs_file`; the first `hang_attempts` attempts then sleep for ever
    (ignoring stops: only a kill ends them), a later one reports progress, a log line and a
    property and returns `pid:` + the input payload as output."""
    runs = _path(job, "runs_file")
    assert runs is not None, "in_process_or_hang needs a runs_file property"
    earlier = len(runs.read_text().splitlines()) if runs.exists() else 0
    with runs.open("a") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
    hang = job.properties.get("hang_attempts", 1)
    if isinstance(hang, int) and earlier < hang:
        while True:
            time.sleep(MAX_BLOCK_S)
    context.init_progress(2)
    context.increment_progress()
    context.log("in process %d", os.getpid())
    context.set_property("pid", os.getpid())
    context.increment_progress()
    return JobResult.succeeded(f"attempt {earlier + 1} in a process", output=b"pid:" + (job.payload or b""))


def raise_in_process(job: Job, context: JobContext) -> JobResult:
    """Raises, in whatever process it runs."""
    raise ValueError(f"raised in process {os.getpid()}")


def stop_aware_in_process(job: Job, context: JobContext) -> JobResult:
    """Creates `started_file`, then waits until the node passes a stop on (is_stopped())."""
    record_attempt(job)
    deadline = time.monotonic() + MAX_BLOCK_S
    while not context.is_stopped() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return JobResult.failed("stopped in a worker process")


def exit_in_process(job: Job, context: JobContext) -> JobResult:
    """Ends its worker process at once with exit code 3, as a crash would."""
    os._exit(3)
