"""Inside one worker process of a process-isolated queue (`sync_isolation = "process"`).

`serve` is the process's whole life: it receives `(spec, job)` over its pipe (and says so, which
starts the attempt timeout), runs the sync
consumer that `spec` (`package.module:callable`) names with a `ProcessContext`, and sends
back what the consumer returned or the text of what it raised, then waits for the next job;
`None` (or a closed pipe) ends it. The node (`node.jobs.processes`) kills the process at an
attempt's timeout, so nothing here needs to be interruptible.

What the consumer's context can do here: `is_stopped()` (a stop the node was asked for,
through a shared Event), progress (`init_progress`, `increment_progress`, `update_eta`),
`log` and `set_property` (sent to the node over the pipe, written by its JobContext). Not
available: `complete_later()`/`complete()` and `add_stop_listener()` (they raise); the job's
`payload` arrives as bytes with the job, and `JobResult.output` travels back as bytes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from node.errors import InvalidArgument
from node.jobs.consumers import Handler, resolve_consumer
from node.jobs.context import MAX_LOG_LINE_CHARS, Deferred, JobContext
from node.model.job import Job
from node.properties import validate_name

FORWARDED_CALLS = frozenset({"init_progress", "increment_progress", "update_eta", "log", "set_property"})
"""The JobContext methods a worker process forwards to the node (by name, with their arguments)."""

_UNAVAILABLE = "is not available to consumers in worker processes (a queue with sync_isolation = process)"


class ProcessContext(JobContext):
    """The JobContext of a consumer in a worker process: calls travel to the node over the pipe."""

    def __init__(self, job: Job, send: Callable[[tuple[Any, ...]], None], stop: Event) -> None:
        super().__init__(job)
        self._send = send
        self._stop = stop

    def is_stopped(self) -> bool:
        """True once the node was asked to stop this job (a user's stop, or the node's shutdown)."""
        return self._stop.is_set()

    def add_stop_listener(self, listener: Callable[[], None]) -> None:
        """Not available here: poll `is_stopped()`."""
        raise InvalidArgument(f"add_stop_listener() {_UNAVAILABLE}; poll is_stopped()")

    def complete_later(self) -> Deferred:
        """Not available here: a worker process's consumer returns its result."""
        raise InvalidArgument(f"complete_later() {_UNAVAILABLE}; return the result")

    def init_progress(self, steps: int, eta_s: float | None = None) -> None:
        """As `JobContext.init_progress`, written by the node."""
        if steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {steps}")
        self._send(("call", "init_progress", (steps, eta_s)))

    def increment_progress(self, steps: int = 1) -> None:
        """As `JobContext.increment_progress`, written by the node."""
        if steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {steps}")
        self._send(("call", "increment_progress", (steps,)))

    def update_eta(self, eta_s: float) -> None:
        """As `JobContext.update_eta`, written by the node."""
        self._send(("call", "update_eta", (float(eta_s),)))

    def log(self, message: str, *args: object) -> None:
        """As `JobContext.log`, written by the node."""
        text = message % args if args else message
        self._send(("call", "log", (text[:MAX_LOG_LINE_CHARS],)))

    def set_property(self, name: str, value: object) -> None:
        """As `JobContext.set_property`, written by the node (the value must pickle)."""
        validate_name(name, "set_property")
        self._send(("call", "set_property", (name, value)))


def serve(conn: Connection, stop: Event) -> None:
    """Run jobs sent over `conn` until told to end (the target of a worker process)."""
    # Ctrl-C in a terminal reaches the whole process group: the node decides when we end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock = threading.Lock()  # a consumer may report progress from threads of its own

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    handlers: dict[str, Handler] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the node went away
        if request is None:
            return
        spec, job = request
        send(("received",))  # the attempt timeout starts now, not while this process started
        try:
            handler = handlers.get(spec)
            if handler is None:
                handler = handlers[spec] = resolve_consumer(spec)
            value: object = handler(job, ProcessContext(job, send, stop))
            reply: tuple[Any, ...] = ("returned", value)
            if isinstance(value, Deferred):
                reply = ("raised", f"complete_later() {_UNAVAILABLE}")
        except Exception as e:  # the consumer's failure is its job's result, as in a thread
            reply = ("raised", str(e) or type(e).__name__)
        try:
            send(reply)
        except Exception as e:  # e.g. a result that does not pickle
            send(("raised", f"the consumer's result cannot be sent to the node: {e}"))
