"""`import node` leaves the console's libraries unloaded, and a node with its console off never loads them.

aiohttp and prometheus_client were a third of the node's import time (about 200 ms of 500 on this
machine), paid by every CLI command and by nodes without a console. A new module-level import of
them from node/node.py, or anything it imports, fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONSOLE_ONLY = ("aiohttp", "prometheus_client", "node.console.console", "node.console.metrics")


def test_importing_the_node_leaves_the_console_libraries_unloaded() -> None:
    # Given a fresh interpreter
    probe = "import sys, node, node.cli; print(' '.join(sorted(set(sys.argv[1:]) & set(sys.modules))))"

    # When it imports the node and its CLI
    done = subprocess.run(
        [sys.executable, "-c", probe, *CONSOLE_ONLY], capture_output=True, text=True, timeout=60, check=True
    )

    # Then none of the console's libraries is loaded yet
    assert done.stdout.strip() == "", f"imported before the console starts: {done.stdout.strip()}"


def test_a_node_without_its_console_never_loads_the_console_libraries(tmp_path: Path) -> None:
    # Given a fresh interpreter running a node whose console is off
    probe = f"""
import asyncio, sys
from dataclasses import replace
from pathlib import Path
import node

async def main() -> None:
    config = node.NodeConfig.for_tests(Path({str(tmp_path)!r}))
    config = replace(config, http=replace(config.http, enabled=False))
    async with node.Node(config) as n:
        await n.jobs.add_job("probe/x")

asyncio.run(main())
print(' '.join(sorted(set(sys.argv[1:]) & set(sys.modules))))
"""

    # When it starts, takes a job and stops
    done = subprocess.run(
        [sys.executable, "-c", probe, *CONSOLE_ONLY], capture_output=True, text=True, timeout=60, check=False
    )

    # Then none of the console's libraries was ever loaded
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded without a console: {done.stdout.strip()}"
