"""Worker processes for the sync consumers of a queue with `sync_isolation = "process"`.

A thread cannot be killed, so a sync consumer in the node's thread pool that ignores the stop
at its attempt timeout keeps its job until it returns (see `QueueRunner`). A queue that needs a
hard time limit (Celery's `time_limit`) runs its sync consumers here instead: in worker
processes started with the `spawn` method (never `fork`: the node is a threaded asyncio
process), at most as many busy at once as the queue runs jobs, each taking one job at a time.
At the timeout the runner kills the job's process (SIGKILL, `ProcessAttempt.kill`); it is not
reused, and the next job gets a freshly started one. The job crosses to the process pickled,
input payload bytes included; the result comes back the same way (see
`node.jobs.worker_process` for what the consumer's context can do there).

Threading contract: `ProcessPool.run` blocks and runs in a consumer thread (one per job, as a
sync consumer would); `ProcessAttempt.kill`, `resize`, `retire` may be called from any thread
(the runner calls them on the loop; none of them blocks); `close` blocks (up to about a second)
and runs in a thread of its own at the node's stop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from node.errors import JobmeshError
from node.jobs.context import JobContext
from node.jobs.worker_process import FORWARDED_CALLS, serve
from node.model.job import Job, JobResult

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
STOP_WAIT_S = 1.0
"""How long an idle worker process may take to exit when asked before it is killed."""


class ConsumerRaised(JobmeshError):
    """A consumer in a worker process raised; the message is its exception's text."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    stop: Event
    killed: bool = False

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(OSError, ValueError):  # it exited already
            self.process.kill()

    def end(self) -> None:
        """Ask an idle worker to exit, then make sure it did (blocks up to STOP_WAIT_S)."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            self.kill()
            self.process.join()
        self.conn.close()


@dataclass(eq=False)
class ProcessAttempt:
    """One attempt's hold on its worker process, so the loop can kill it at the timeout."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _worker: _Worker | None = None
    killed: bool = False

    def kill(self) -> bool:
        """SIGKILL the attempt's process (also one it gets later); True if it had one already."""
        with self._lock:  # held while killing: once unbound, the process may serve another job
            self.killed = True
            if self._worker is not None:
                self._worker.kill()
            return self._worker is not None

    def request_stop(self) -> None:
        """Pass a stop request on to the consumer in the process (`is_stopped()` there)."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.stop.set()

    def _bind(self, worker: _Worker | None) -> bool:
        with self._lock:
            if worker is not None and self.killed:
                return False
            self._worker = worker
            return True


class ProcessPool:
    """The worker processes of one queue (see the module docstring)."""

    def __init__(self, queue: str, size: int) -> None:
        self._queue = queue
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._numbers = itertools.count(1)
        self._retired = False
        self._closed = False

    @property
    def processes(self) -> list[BaseProcess]:
        """The live worker processes (for tests and statistics)."""
        with self._lock:
            return [w.process for w in (*self._idle, *self._busy) if w.process.is_alive()]

    def resize(self, size: int) -> None:
        """Keep at most `size` idle processes (the queue's parallelism changed)."""
        with self._lock:
            self._size = size
            surplus = self._idle[size:]
            del self._idle[size:]
        self._end_later(surplus)

    def retire(self) -> None:
        """The queue no longer isolates: end idle processes now, busy ones when their job ends."""
        with self._lock:
            self._retired = True
            idle, self._idle = self._idle, []
        self._end_later(idle)

    def close(self) -> None:
        """End every process: idle ones are asked to exit, busy ones killed (blocks; at node stop)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for worker in busy:
            worker.kill()
        for worker in idle:
            worker.end()
        for worker in busy:
            worker.process.join(STOP_WAIT_S)

    def run(
        self,
        spec: str,
        job: Job,
        context: JobContext,
        attempt: ProcessAttempt,
        dispatched: Callable[[], None],
    ) -> object:
        """Run the consumer `spec` names on `job` in a worker process; what it returned.

        Blocks (a consumer thread). `dispatched()` is called once the process has the job (its
        attempt timeout starts then, not while a process starts). Raises ConsumerRaised with the
        text of what the consumer raised. A killed or crashed process makes a failed result.
        """
        try:
            worker = self._acquire()
        except OSError as e:  # e.g. out of processes or memory: the job may run later
            return JobResult.failed(f"cannot start a worker process: {e}")
        if not attempt._bind(worker):  # killed (timed out or shutting down) before it started
            self._release(worker)
            return JobResult.failed("stopped before a worker process took the job")
        try:
            worker.stop.clear()
            context.add_stop_listener(attempt.request_stop)
            try:
                worker.conn.send((spec, job))
            except OSError:  # it died while idle; the next job gets a new one
                worker.killed = True
                return JobResult.failed("the worker process died before it got the job")
            return self._converse(worker, context, dispatched)
        finally:
            attempt._bind(None)
            self._release(worker)

    def _converse(self, worker: _Worker, context: JobContext, dispatched: Callable[[], None]) -> object:
        """Apply the process's context calls until it answers."""
        while True:
            try:
                message: tuple[Any, ...] = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(STOP_WAIT_S)
                if worker.killed:
                    return JobResult.failed("worker process killed")
                code = worker.process.exitcode
                worker.killed = True  # not reused
                return JobResult.failed(f"the worker process died (exit code {code}) while running the job")
            kind = message[0]
            if kind == "received":
                dispatched()
            elif kind == "returned":
                return message[1]
            elif kind == "raised":
                raise ConsumerRaised(str(message[1]))
            elif kind == "call" and message[1] in FORWARDED_CALLS:
                try:
                    getattr(context, message[1])(*message[2])
                except JobmeshError as e:  # e.g. a property above the size limit: as in a thread
                    log.info("queue %s: job %s: %s failed: %s", self._queue, context.job.id, message[1], e)

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise ConsumerRaised("the node is shutting down")
            worker = None
            while self._idle and worker is None:
                worker = self._idle.pop()
                if not worker.process.is_alive():  # died while idle (e.g. the OOM killer)
                    worker.conn.close()
                    worker = None
            number = next(self._numbers)
        if worker is None:
            worker = self._start(number)
        with self._lock:
            self._busy.add(worker)
        return worker

    def _start(self, number: int) -> _Worker:
        parent, child = _SPAWN.Pipe()
        stop = _SPAWN.Event()
        process = _SPAWN.Process(
            target=serve, args=(child, stop), name=f"jobmesh-{self._queue}-{number}", daemon=True
        )
        process.start()
        child.close()
        log.debug("queue %s: started worker process %s (pid %s)", self._queue, process.name, process.pid)
        return _Worker(process, parent, stop)

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = not (worker.killed or self._retired or self._closed) and len(self._idle) < self._size
            if keep:
                self._idle.append(worker)
        if not keep:
            if worker.killed:
                worker.process.join(STOP_WAIT_S)
                worker.conn.close()
            else:
                worker.end()

    def _end_later(self, workers: list[_Worker]) -> None:
        """End idle workers without blocking the caller (the loop)."""
        for worker in workers:
            threading.Thread(target=worker.end, name=f"end-{worker.process.name}", daemon=True).start()
