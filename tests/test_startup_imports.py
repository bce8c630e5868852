"""What a node process imports before it serves: the console's libraries load on a thread once
gRPC serves and discovery runs (node.node Node._start_console), not with the node's modules."""

from __future__ import annotations

import subprocess
import sys

DEFERRED = ("aiohttp", "prometheus_client", "node.console.console", "node.console.metrics")


def test_the_node_and_its_cli_load_without_the_consoles_libraries() -> None:
    probe = (
        f"import sys, node.cli.run, node.node; print(','.join(m for m in {DEFERRED!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == ""
