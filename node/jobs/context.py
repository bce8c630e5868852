"""The executor context a consumer gets with each job: stop flag, progress, log, properties.

Every method is thread-safe: sync consumers call them from pool threads, async ones from
the event loop. Progress, log lines and properties are written to the journal in the next
group commit without making the consumer wait; each progress update and log line becomes
a PROGRESS event. Calls made after the attempt ended (a stale attempt) are ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from node.errors import InvalidArgument
from node.instance import now_us
from node.model.job import Job, JobResult
from node.properties import validate_name

if TYPE_CHECKING:
    from node.journal.jobs import JobStore

MAX_LOG_LINE_CHARS = 4096


class Deferred:
    """Returned by a consumer that will report its result later with `JobContext.complete`."""

    __slots__ = ()


_DEFERRED = Deferred()


class JobContext:
    """What a running consumer can do with its job."""

    def __init__(
        self,
        job: Job,
        store: JobStore | None = None,
        *,
        max_log_lines: int = 100,
        max_properties_bytes: int = 64 * 1024,
    ) -> None:
        self.job = job
        self._store = store
        self._max_log_lines = max_log_lines
        self._max_properties_bytes = max_properties_bytes
        # A plain flag and lock, not threading.Event / a Future up front: one context is made
        # per attempt, and those build Python-level Conditions that cost more than the job.
        self._stopped = False
        self._lock = threading.Lock()
        self._stop_listeners: list[Callable[[], None]] = []
        self._completion: concurrent.futures.Future[JobResult] | None = None
        self._dispatched: asyncio.Future[None] | None = None

    # --- dispatch (on the loop) ----------------------------------------------------------------

    def dispatched(self) -> asyncio.Future[None]:
        """Resolves when the job reached whoever runs it (`mark_dispatched`); on the loop."""
        if self._dispatched is None:
            self._dispatched = asyncio.get_running_loop().create_future()
        return self._dispatched

    def mark_dispatched(self) -> None:
        """The job was handed to whoever runs it (a remote worker): its attempt timeout starts.
        On the loop; for consumers registered with `dispatches=True`."""
        if self._dispatched is not None and not self._dispatched.done():
            self._dispatched.set_result(None)

    # --- stopping ------------------------------------------------------------------------------

    def is_stopped(self) -> bool:
        """True once a user asked this job to stop, it timed out, or the node's shutdown grace ran out."""
        return self._stopped

    def request_stop(self) -> None:
        """Ask the consumer to stop (called by the node); stop listeners run once, on this thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            listeners, self._stop_listeners = self._stop_listeners, []
        for listener in listeners:
            listener()

    def add_stop_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` once when a stop is requested: on the thread that requests it, or at
        once on this thread if a stop was already requested. For consumers that must pass the
        stop on (e.g. to a remote worker) instead of polling `is_stopped()`."""
        with self._lock:
            if not self._stopped:
                self._stop_listeners.append(listener)
                return
        listener()

    # --- progress --------------------------------------------------------------------------------

    def init_progress(self, steps: int, eta_s: float | None = None) -> None:
        """Announce `steps` total steps (and optionally the seconds until done); done steps reset to 0."""
        if steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {steps}")
        if self._store is not None:
            eta = None if eta_s is None else now_us() + int(eta_s * 1e6)
            self._store.report_progress(self.job.id, self.job.claim, now_us(), total=steps, eta_us=eta)

    def increment_progress(self, steps: int = 1) -> None:
        """Mark `steps` more steps done; the ETA is re-estimated from the time per step so far."""
        if steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {steps}")
        if self._store is not None:
            self._store.report_progress(self.job.id, self.job.claim, now_us(), increment=steps)

    def update_eta(self, eta_s: float) -> None:
        """Set the estimated seconds until the job is done."""
        if self._store is not None:
            now = now_us()
            self._store.report_progress(self.job.id, self.job.claim, now, eta_us=now + int(eta_s * 1e6))

    def log(self, message: str, *args: object) -> None:
        """Add a line to the job's log (`message % args` when args are given); the newest lines are kept."""
        text = message % args if args else message
        if self._store is not None:
            self._store.append_log(
                self.job.id, self.job.claim, now_us(), text[:MAX_LOG_LINE_CHARS], self._max_log_lines
            )

    def set_property(self, name: str, value: object) -> None:
        """Set a property of the job (visible through GetJob); the size limit still applies."""
        validate_name(name, "set_property")
        if self._store is not None:
            self._store.set_property(self.job.id, self.job.claim, name, value, self._max_properties_bytes)

    # --- finishing later -------------------------------------------------------------------------------

    def complete_later(self) -> Deferred:
        """Return this from the consumer to finish the job later with `complete` (from any thread)."""
        return _DEFERRED

    def complete(self, result: JobResult | None = None) -> None:
        """Report the result of a job whose consumer returned `complete_later()`; later calls are ignored."""
        completion = self.completion
        with self._lock:
            if completion.done():
                return
            completion.set_result(result or JobResult.succeeded())

    @property
    def completion(self) -> concurrent.futures.Future[JobResult]:
        """The result reported with `complete` (for the node)."""
        with self._lock:
            if self._completion is None:
                self._completion = concurrent.futures.Future()
            return self._completion
