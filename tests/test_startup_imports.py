"""What a node process imports before it serves: the console's libraries load later, on a thread.

aiohttp and prometheus_client were a third of the node's import time (about 200 ms of 500 on this
machine), paid before the first job or peer was served. A new import of them on the start path
(node/node.py or anything it imports at module level) fails here.
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
