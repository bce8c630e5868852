"""CI honesty: under `CI=true` a skipped test fails the run; elsewhere skips say why, loudly.

A missing toolchain must turn CI red instead of skipping quietly, so with `CI=true` every
skipped test is reported as a failure carrying its skip reason, and skips at collection time
(a module that skips itself) fail the session. Outside CI, skips stay skips, and the summary
lists each reason (which names the command that installs what is missing). Expected failures
(`xfail`) are not skips and are left alone. The conftest registers this plugin; a pytest run
elsewhere can load it with `-p skip_policy`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import Any

import pytest

CI_VARIABLE = "CI"
# Values CI services put in $CI (GitHub, GitLab, Buildkite... say "true"; some say "1").
CI_TRUE = frozenset({"1", "true", "yes"})


def ci_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the run is a CI run ($CI is true), where a skip is a failure."""
    return environ.get(CI_VARIABLE, "").strip().lower() in CI_TRUE


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (pytest keeps it as (path, line, reason))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """The plugin: turns skips into failures under CI and remembers collection-time skips."""

    def __init__(self, ci: bool) -> None:
        self.ci = ci
        self.collection_skips: list[str] = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        if self.ci and report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            report.outcome = "failed"
            report.longrepr = f"skipped under {CI_VARIABLE}=true, which counts as a failure: {reason}"
        return report

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.collection_skips.append(f"{report.nodeid}: {skip_reason(report)}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        quiet = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.ci and self.collection_skips and exitstatus in quiet:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.ci and self.collection_skips:
            terminalreporter.section(f"skipped at collection under {CI_VARIABLE}=true (a failure)")
            for line in self.collection_skips:
                terminalreporter.write_line(line)
        elif not self.ci and terminalreporter.stats.get("skipped"):
            terminalreporter.write_line(
                f"some tests were skipped (reasons in the summary); with {CI_VARIABLE}=true they fail the run"
            )


def pytest_configure(config: pytest.Config) -> None:
    """Register the policy (when loaded with `-p skip_policy` or imported by the conftest)."""
    if not config.pluginmanager.has_plugin("jobmesh-skip-policy"):
        config.pluginmanager.register(SkipPolicy(ci_enabled()), "jobmesh-skip-policy")
