"""Waiting for a cue with a deadline: the one way a background loop of the node sleeps.

`asyncio.wait_for` is never used in `node/` (docs/architecture.md, tests/test_cancellation.py):
on Python 3.11 it swallows a cancellation that arrives in the loop turn its awaitable completes,
and a loop around it then never ends.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set, at most `timeout_s` (None: no limit); True if it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()
