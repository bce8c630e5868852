"""Every numeric setting has a validated range; unknown JOBMESH_* variables are named, not ignored."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from node import ConfigError, load_config
from node.config import OTHER_ENV_NAMES, NodeConfig, env_name, setting_keys, unknown_env_names
from node.ranges import is_number_hint, range_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # The values of the hardening report: each was accepted, the first would spin the loop.
        ("offload.capacity_interval_s", "0"),
        ("offload.reassign_grace_s", "-1"),
        ("offload.chunk_bytes", "0"),
        ("offload.startup_grace_s", "-5"),
        # Values that pass a plain `>= 0` check and fail later inside timers or commits.
        ("discovery.probe_interval_s", "nan"),
        ("discovery.suspicion_timeout_s", "inf"),
        ("jobs.retry_delay_s", "1e308"),
        ("history.purge_interval_s", "-0.5"),
        ("journal.readers", "0"),
        ("jobs.max_parallel", "0"),
        ("jobs.retry_backoff", "0.5"),
        ("discovery.gossip_fanout", "0"),
        ("events.max_count", str(2**63)),
    ],
)
def test_an_out_of_range_setting_is_refused_with_a_message_naming_its_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as refused:
        load_config(None, {}, {key: value})
    assert "must be" in str(refused.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("jobs.max_parallel", "-1"),
        ("jobs.max_parallel", "0.5"),
        ("jobs.retries", "-1"),
        ("history.max_age_s", "0"),
    ],
)
def test_special_values_with_a_meaning_of_their_own_are_accepted(key: str, value: str) -> None:
    load_config(None, {}, {key: value})


def test_every_numeric_setting_declares_its_range() -> None:
    undeclared = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
            if dataclasses.is_dataclass(base):
                walk(base, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            elif is_number_hint(hint) and range_of(hint) is None:
                undeclared.append(prefix + f.name)

    walk(NodeConfig, "")
    assert undeclared == []


def test_defaults_and_presets_are_within_their_ranges(tmp_path: Path) -> None:
    NodeConfig.lan().validate()
    NodeConfig.for_tests(tmp_path).validate()


def test_a_misspelt_variable_is_named_with_the_closest_setting() -> None:
    environ = {
        "JOBMESH_JOBS_MAX_PARALEL": "3",
        "JOBMESH_JOBS_RETRIES": "2",  # a setting: no warning
        "JOBMESH_NODE": "host:7710",  # a client variable: no warning
        "PATH": "/usr/bin",
    }
    assert unknown_env_names(environ) == [
        "environment variable JOBMESH_JOBS_MAX_PARALEL is not a Jobmesh setting and is ignored; "
        "did you mean JOBMESH_JOBS_MAX_PARALLEL?"
    ]
    assert "see `jobmesh run --help`" in unknown_env_names({"JOBMESH_WHATEVER": "1"})[0]


def test_every_jobmesh_variable_the_project_reads_is_a_setting_or_listed() -> None:
    # Shell scripts read ${JOBMESH_X...} / $JOBMESH_X; Python reads environ["JOBMESH_X"] / .get(...).
    read = re.compile(r"""\$\{?(JOBMESH_[A-Z_]+)|environ(?:\.get\(|\[)\s*["'](JOBMESH_[A-Z_]+)""")
    sources = [*ROOT.glob("scripts/*"), *ROOT.glob("node/**/*.py"), *ROOT.glob("benchmarks/*")]
    names = {
        m.group(1) or m.group(2)
        for path in sources
        if path.is_file()
        for m in read.finditer(path.read_text())
    }
    settings = {env_name(key) for key in setting_keys()}
    assert names, "the scan found no variable at all: its pattern is broken"
    assert sorted(names - settings - OTHER_ENV_NAMES) == []


def test_jobmesh_run_warns_about_a_misspelt_variable_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "JOBMESH_JOBS_MAX_PARALEL": "3"}
    command = [sys.executable, "-m", "node", "run", "--test-preset", "--data-dir", str(tmp_path / "d")]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path) as node:
        assert node.stderr is not None
        deadline = time.monotonic() + 20
        seen = []
        try:
            while time.monotonic() < deadline:
                line = node.stderr.readline()
                if not line:
                    break
                seen.append(line)
                if "JOBMESH_JOBS_MAX_PARALEL" in line:
                    break
        finally:
            node.terminate()
            node.wait(timeout=20)
    assert any("did you mean JOBMESH_JOBS_MAX_PARALLEL?" in line for line in seen), "".join(seen)


def test_jobmesh_run_refuses_an_out_of_range_setting_before_starting(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "run",
            "--data-dir",
            str(tmp_path / "d"),
            "--set",
            "offload.chunk_bytes=0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 78
    assert "offload.chunk_bytes is 0; it must be >= 1024" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "d" / "journal.sqlite").exists()
