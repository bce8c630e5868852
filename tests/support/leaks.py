"""Leak guards: the threads and asyncio tasks a test leaves running fail it (python-zeroconf style).

A test may stop things asynchronously, so each guard waits up to `LEAK_WAIT_S` for
stragglers to end before it names them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection
from typing import Any

from .waiting import async_wait_for, wait_for

LEAK_WAIT_S = 5.0


def _named(kind: str, names: list[str]) -> AssertionError:
    return AssertionError(f"the test left {kind} running: {sorted(names)}")


def check_threads_ended(before: Collection[threading.Thread]) -> None:
    """Raise AssertionError naming the threads started since `before` that do not end in time."""

    def leftovers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_for(lambda: not leftovers(), LEAK_WAIT_S, "threads started by the test to end")
    except AssertionError:
        raise _named("threads", [t.name for t in leftovers()]) from None


async def check_tasks_ended() -> None:
    """Raise AssertionError naming the asyncio tasks, other than the caller's, that do not end in time."""
    current = asyncio.current_task()

    def others() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t is not current and not t.done()}

    try:
        await async_wait_for(lambda: not others(), LEAK_WAIT_S, "tasks started by the test to end")
    except AssertionError:
        raise _named("asyncio tasks", [t.get_name() for t in others()]) from None
