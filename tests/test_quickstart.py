"""The README's quick start, run as it stands: the fenced block under "## Quick start" is
taken from README.md at test time and run by bash, line by line as if pasted, in a copy of
the checkout, with its node in a private namespace of its own (as on development machines)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from tests.dev_scripts import ROOT, describe, read_run_file, run, script_env, stopping_detached_nodes

QUICK_START_TIMEOUT_S = 180.0
# What the quick start needs of the checkout (the .venv running the tests stands in for the
# one its first `scripts/run` would create: the test namespace has no network to install it).
COPIED = ("scripts", "examples/python", "pyproject.toml", "README.md")


def quick_start_block(readme: str) -> str:
    """The first ```sh block after the "## Quick start" heading."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert found is not None, "README.md's quick start has no ```sh block"
    return found.group(1)


def copy_checkout(target: Path) -> Path:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns(".jobmesh", "__pycache__"))
        else:
            shutil.copy2(source, target / name)  # keeps its time: no reinstall into the .venv
    return target


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    block = quick_start_block((ROOT / "README.md").read_text())
    checkout = copy_checkout(tmp_path / "jobmesh")
    workdir = checkout / "examples" / "python"
    with stopping_detached_nodes(workdir / ".jobmesh"):
        # When the block runs as pasted, stopping at the first command that fails
        result = run(
            ["bash", "-c", "set -euo pipefail\n" + block],
            checkout,
            script_env(),
            timeout=QUICK_START_TIMEOUT_S,
        )
        assert result.returncode == 0, f"the quick start failed:\n{block}\n{describe(result)}"

    # Then the node served in a namespace of its own, did the work, and was stopped
    assert "is serving in the background" in result.stdout
    assert "a private namespace of its own" in result.stdout
    assert "hello, Ada" in result.stdout
    checksum = hashlib.sha256((workdir / "consumers.py").read_bytes()).hexdigest()
    assert (workdir / "sum.txt").read_text() == checksum
    assert "other/topic" in result.stdout
    assert "stopped node PID" in result.stdout
    assert read_run_file(workdir / ".jobmesh") is None
