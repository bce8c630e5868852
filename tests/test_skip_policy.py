"""The CI skip policy: under CI=true a skip fails the run; elsewhere it passes and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launcher import TESTS_DIR

HINT = "needs the frobnicator: run scripts/setup-polyglot as root"
SKIPPING_TEST = f"""
import pytest

def test_runs():
    assert True

def test_needs_a_tool():
    pytest.skip({HINT!r})
"""
SKIPPING_MODULE = f"""
import pytest

pytest.skip({HINT!r}, allow_module_level=True)
"""
EXPECTED_FAILURE = """
import pytest

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""


def run_pytest(
    directory: Path, test_source: str, ci: str | None, other_test: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run pytest with only the skip policy plugin on one test file (and maybe another) in `directory`."""
    (directory / "pytest.ini").write_text("[pytest]\naddopts = -ra\n")
    (directory / "test_sample.py").write_text(test_source)
    if other_test:
        (directory / "test_other.py").write_text(other_test)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(TESTS_DIR)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_a_skipped_test_fails_the_run_under_ci(tmp_path: Path, ci: str) -> None:
    result = run_pytest(tmp_path, SKIPPING_TEST, ci)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert f"skipped under CI=true, which counts as a failure: {HINT}" in result.stdout


def test_outside_ci_a_skip_passes_and_prints_its_reason(tmp_path: Path) -> None:
    for ci in (None, "false", ""):
        result = run_pytest(tmp_path, SKIPPING_TEST, ci)
        assert result.returncode == pytest.ExitCode.OK, result.stdout
        assert "1 passed, 1 skipped" in result.stdout
        assert f"SKIPPED [1] test_sample.py:8: {HINT}" in result.stdout
        assert "with CI=true they fail the run" in result.stdout


def test_a_module_skipped_at_collection_fails_the_run_under_ci(tmp_path: Path) -> None:
    passing = "def test_passes():\n    assert True\n"
    (tmp_path / "with-others").mkdir()
    (tmp_path / "alone").mkdir()
    result = run_pytest(tmp_path / "with-others", SKIPPING_MODULE, "true", passing)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "skipped at collection under CI=true" in result.stdout
    assert f"test_sample.py: {HINT}" in result.stdout

    alone = run_pytest(tmp_path / "alone", SKIPPING_MODULE, "true")
    assert alone.returncode == pytest.ExitCode.TESTS_FAILED, alone.stdout

    relaxed = run_pytest(tmp_path / "with-others", SKIPPING_MODULE, None, passing)
    assert relaxed.returncode == pytest.ExitCode.OK, relaxed.stdout
    assert "1 passed, 1 skipped" in relaxed.stdout
    assert HINT in relaxed.stdout


def test_expected_failures_are_not_skips(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, EXPECTED_FAILURE, "true")
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "1 xfailed" in result.stdout


def test_no_tests_is_not_green(tmp_path: Path) -> None:
    """Exit 5 (nothing collected) is not success: scripts/test and .ci/run pass it on."""
    result = run_pytest(tmp_path, "", "true")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout
    root = TESTS_DIR.parent
    ci_script = (root / ".ci" / "run").read_text()
    assert "scripts/test" in ci_script
    assert 'CI="${CI:-true}"' in ci_script
    # scripts/test ends with pytest under `set -e`: its exit status is pytest's.
    test_script = (root / "scripts" / "test").read_text().strip().splitlines()
    assert test_script[-1].startswith('in_private_netns "$VENV/bin/python" -m pytest')
    assert "set -euo pipefail" in test_script


def test_the_suite_runs_with_the_policy(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("jobmesh-skip-policy")
