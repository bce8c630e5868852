"""Helpers for tests of the developer scripts (`scripts/run --detach`, `scripts/shell`,
`scripts/stop`) and of nodes that run detached, outside the test's process tree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.launcher import TESTS_DIR
from tests.support.waiting import wait_for

ROOT = TESTS_DIR.parent
SCRIPTS = ROOT / "scripts"
SCRIPT_TIMEOUT_S = 120.0
# Inherited settings that would point a script at another node or namespace.
_CLEARED = ("JOBMESH_NETNS", "JOBMESH_NODE", "JOBMESH_DATA_DIR", "JOBMESH_PRIVATE_NETNS", "CI")


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a script started by a test.

    It uses the .venv running the tests (the test namespace has no network to install one),
    and drops JOBMESH_NETNS, so `JOBMESH_PRIVATE_NETNS=1` makes a fresh namespace nested in
    the test's, as it does on a development machine.
    """
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["JOBMESH_VENV"] = str(Path(sys.executable).parent.parent)
    env.update(extra)
    return env


def run(
    command: Sequence[str | Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = SCRIPT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its output is in the result (and `describe` formats it)."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env if env is not None else script_env(),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def jobmesh(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`jobmesh ARGS...` (as `python -m node`) run to its end."""
    return run([sys.executable, "-m", "node", *args], cwd, env)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A command's exit code and output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def read_run_file(data_dir: Path) -> dict[str, Any] | None:
    """The node.json of a data dir, or None when no node serves there."""
    try:
        info = json.loads((data_dir / "node.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def net_namespace(pid: int | str = "self") -> str:
    """The network namespace of a process, e.g. `net:[4026532841]`."""
    return os.readlink(f"/proc/{pid}/ns/net")


def stop_pid(pid: int) -> None:
    """SIGTERM a node and wait for it to go; SIGKILL it if it does not within 10 s."""
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not pid_running(pid), 10, f"node {pid} to stop")
    if pid_running(pid):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_running(pid), 5, f"node {pid} to die")


@contextlib.contextmanager
def stopping_detached_nodes(*data_dirs: Path) -> Iterator[None]:
    """Stop whatever node still runs on these data dirs when the block ends (detached nodes are
    nobody's children, so nothing else would)."""
    try:
        yield
    finally:
        for data_dir in data_dirs:
            info = read_run_file(data_dir)
            if info and pid_running(int(info["pid"])):
                stop_pid(int(info["pid"]))
