"""Running `jobmesh ...` as a user does: a subprocess of `python -m node`, output captured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.launcher import NodeProcess

CLI_TIMEOUT_S = 60.0


def jobmesh(
    *args: str, stdin: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `jobmesh ARGS...`; the environment names no node unless `env` does."""
    environ = {k: v for k, v in os.environ.items() if k not in ("JOBMESH_NODE", "JOBMESH_DATA_DIR")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        cwd=cwd,
        env=environ,
    )


def credentials(node: NodeProcess) -> dict[str, str]:
    """The environment that gives `jobmesh` a node's local credentials (its CA and admin token)."""
    return {"JOBMESH_DATA_DIR": str(node.data_dir), "JOBMESH_PROFILE": str(node.data_dir / "no-profile")}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded (fails with its output otherwise)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a command that must have succeeded printed."""
    return json.loads(ok(result))


def failed(result: subprocess.CompletedProcess[str], code: int, after_progress: bool = False) -> str:
    """The one-line error of a command that must have failed with `code` (`after_progress`:
    the last line, after progress lines such as `added ID, waiting...`)."""
    assert result.returncode == code, (
        f"exit {result.returncode}, wanted {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "nothing on stderr"
    assert after_progress or len(lines) == 1, f"wanted one line on stderr, got:\n{result.stderr}"
    assert lines[-1].startswith("jobmesh "), lines[-1]
    return lines[-1]
