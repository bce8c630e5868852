"""Sync consumers in a thread pool, their results handed back to the event loop in batches."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class ThreadResults:
    """Runs sync consumers in a thread pool and hands their results back to the loop in batches.

    `loop.run_in_executor` chains a concurrent future and wakes the loop (a write to its
    self-pipe) once per call; with many short jobs that dominates their cost. Here a pool
    thread queues its outcome and only the first outcome of a batch wakes the loop, which
    then resolves every queued one. Cancelling the returned future cancels the call if it
    has not started, as with `run_in_executor`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        self._loop = loop
        self._executor = executor
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._lock = threading.Lock()
        self._wakeup_pending = False

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call `function(*args)` in the pool (on the loop); the future resolves on the loop."""
        future: asyncio.Future[Any] = self._loop.create_future()
        work = self._executor.submit(self._call, future, function, *args)
        future.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
        return future

    def _call(self, future: asyncio.Future[Any], function: Callable[..., Any], *args: Any) -> None:
        # In a pool thread.
        try:
            outcome = (future, True, function(*args))
        except BaseException as e:  # handed to the awaiting task, as run_in_executor does
            outcome = (future, False, e)
        self._done.append(outcome)
        with self._lock:
            if self._wakeup_pending:
                return  # the pending _deliver takes this outcome too
            self._wakeup_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # On the loop. Clear the flag first: an outcome queued after this is either taken
        # below or schedules another _deliver.
        with self._lock:
            self._wakeup_pending = False
        done = self._done
        while done:
            future, ok, value = done.popleft()
            if future.done():  # cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
