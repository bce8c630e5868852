"""Cancellation reaches every long-running loop of a node, so stopping never hangs.

On Python 3.11, `asyncio.wait_for` swallows a cancellation that arrives in the same loop turn
as its awaitable completes (it returns the result instead of raising), so a `while` loop built on
it goes on forever and a stopping node never exits (seen in CI: a node did not exit within 10 s
of SIGTERM, its offloader's dispatch loop "cancelling" in `_idle`). `asyncio.timeout` does not
lose the cancellation.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import node
from node.transfer.offloader import Offloader

NODE_PACKAGE = Path(__file__).resolve().parent.parent / "node"


def test_no_node_code_uses_asyncio_wait_for() -> None:
    users = [
        f"{path.relative_to(NODE_PACKAGE.parent)}:{number}"
        for path in sorted(NODE_PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bwait_for\(", line) and "def wait_for" not in line
    ]
    assert not users, f"use `async with asyncio.timeout(...)`, not wait_for (see this module): {users}"


async def test_the_offloader_stops_when_a_wake_up_and_its_cancellation_meet(tmp_path: Path) -> None:
    async with node.Node(node.NodeConfig.for_tests(tmp_path)) as n:
        offloader = n.transfer_receiver
        assert isinstance(offloader, Offloader)
        for _ in range(3):
            await asyncio.sleep(0)  # its loops are waiting for work
        # What a topology change during the node's own shutdown does: wake the senders just
        # before they are cancelled.
        offloader._wake()
        async with asyncio.timeout(5):
            await offloader.stop()
