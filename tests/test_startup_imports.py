"""`import node` leaves the console's libraries unloaded: only a node with its console on loads them.

aiohttp and prometheus_client were a third of the node's import time (about 200 ms of 500 on this
machine), paid by every CLI command and by nodes without a console. A new module-level import of
them from node/node.py, or anything it imports, fails here.
"""

from __future__ import annotations

import subprocess
import sys

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
