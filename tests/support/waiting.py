"""The one deadline wait: poll a condition until it holds, fail with what it returned last.

`wait_for` polls from plain code (blocking); `async_wait_for` polls on an event loop and
accepts conditions that are coroutines or plain functions. Both keep polling while the
condition raises one of `NOT_READY` (a server that does not answer yet, a file half
written) and report the last value or error at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeAlias, TypeVar, cast, overload

import grpc

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.01
NOT_READY: tuple[type[BaseException], ...] = (grpc.RpcError, OSError, ValueError)
"""Errors a condition may raise while what it checks is not ready yet: polling goes on."""


class Deadline:
    """A point `timeout` seconds from now on the monotonic clock."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._at = time.monotonic() + timeout

    def left(self) -> float:
        """Seconds until the deadline (0 once it passed)."""
        return max(0.0, self._at - time.monotonic())

    @property
    def passed(self) -> bool:
        """True once the deadline is reached."""
        return time.monotonic() >= self._at


class _Poll:
    """One wait in progress: its deadline and what the condition gave last."""

    def __init__(self, timeout: float, what: str) -> None:
        self.deadline = Deadline(timeout)
        self.what = what
        self.last: object = None

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Around one call of the condition: a NOT_READY error is noted, not raised."""
        try:
            yield
        except NOT_READY as e:
            self.last = e

    def holds(self, value: object) -> bool:
        """Note `value`; True when it is truthy (the wait is over)."""
        self.last = value
        return bool(value)

    def _check(self) -> None:
        if self.deadline.passed:
            raise AssertionError(
                f"timed out after {self.deadline.timeout:.1f}s waiting for {self.what}; last value: {self.last!r}"
            )

    def pause(self) -> None:
        """Between two tries: AssertionError once the deadline passed, else sleep a little."""
        self._check()
        time.sleep(POLL_INTERVAL_S)

    async def async_pause(self) -> None:
        """`pause` on the running event loop."""
        self._check()
        await asyncio.sleep(POLL_INTERVAL_S)


Condition: TypeAlias = Callable[[], T | None]
"""A check to poll: returns something truthy once what it waits for holds."""
AsyncCondition: TypeAlias = Callable[[], Awaitable[T | None]]
"""The same as a coroutine function."""


def wait_for(condition: Condition[T], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition") -> T:
    """Call `condition` until it returns something truthy and return that; fail at the deadline."""
    poll = _Poll(timeout, what)
    while True:
        with poll.attempt():
            if poll.holds(condition()):
                return cast(T, poll.last)
        poll.pause()


@overload
async def async_wait_for(condition: AsyncCondition[T], timeout: float = ..., what: str = ...) -> T: ...
@overload
async def async_wait_for(condition: Condition[T], timeout: float = ..., what: str = ...) -> T: ...
async def async_wait_for(
    condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition"
) -> object:
    """Like `wait_for`, on the running event loop; `condition` may be a coroutine function."""
    poll = _Poll(timeout, what)
    while True:
        with poll.attempt():
            value = condition()
            if poll.holds(await value if inspect.isawaitable(value) else value):
                return poll.last
        await poll.async_pause()
