"""Leak guards: the threads and asyncio tasks a test leaves running (python-zeroconf style).

A test may stop things asynchronously, so each guard waits up to `LEAK_WAIT_S` for
stragglers to end before it names them; the conftest fails the test when any are left.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import threading
from collections.abc import Collection
from typing import Any

from .waiting import async_wait_for, wait_for

LEAK_WAIT_S = 5.0


def leaked_threads(before: Collection[threading.Thread], within_s: float = LEAK_WAIT_S) -> list[str]:
    """Names of the threads started since `before` that are still alive after `within_s`."""

    def leftovers() -> list[threading.Thread]:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if any(t.name.endswith("(_poll_wrapper)") for t in left):
            # gRPC's aio poller thread ends once no channel or server object is alive. One the
            # test closed may still sit in a reference cycle (a traceback kept somewhere) until
            # the cyclic GC runs: collect it, so only a channel really left open counts.
            gc.collect()
        return left

    with contextlib.suppress(AssertionError):  # reported by name below
        wait_for(lambda: not leftovers(), within_s, "threads started by the test to end")
    return sorted(t.name for t in leftovers())


def leaked_processes(before: Collection[int], within_s: float = LEAK_WAIT_S) -> list[str]:
    """Names of the child processes (multiprocessing's: a queue's worker processes) started since
    `before` (their pids) that are still alive after `within_s`."""

    def leftovers() -> list[str]:
        # active_children() also reaps the ones that ended, so an ended one is not counted.
        return [f"{p.name} (pid {p.pid})" for p in multiprocessing.active_children() if p.pid not in before]

    with contextlib.suppress(AssertionError):  # reported by name below
        wait_for(lambda: not leftovers(), within_s, "processes started by the test to end")
    return sorted(leftovers())


async def leaked_tasks(within_s: float = LEAK_WAIT_S) -> list[str]:
    """Names of the asyncio tasks, other than the caller's, still running after `within_s`."""
    current = asyncio.current_task()

    def others() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t is not current and not t.done()}

    with contextlib.suppress(AssertionError):  # reported by name below
        await async_wait_for(lambda: not others(), within_s, "tasks started by the test to end")
    return sorted(t.get_name() for t in others())
