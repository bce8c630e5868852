"""buf checks the protos: STANDARD lint, and no breaking change against the frozen v1.

buf is pinned in tools/buf (npm @bufbuild/buf) and installed by scripts/setup-buf, which
scripts/test runs before the suite. The frozen descriptor set is protos/baseline/v1.json
(scripts/freeze-protos); the peer protocol, jobmesh.peer.v1, is not part of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "protos" / "baseline" / "v1.json"
JOBS_PROTO = Path("protos/jobmesh/v1/jobs.proto")


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.skip("buf is not installed: run scripts/setup-buf (needs npm)")
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _copy_of_the_protos(tmp_path: Path) -> Path:
    """A workspace like the repository's (buf.yaml + protos/) that a test may change."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("baseline"))
    return tmp_path


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def _breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return _buf("breaking", "--against", str(BASELINE), cwd=workspace)


def test_buf_lint_with_the_standard_rules_passes() -> None:
    done = _buf("lint")

    assert done.returncode == 0, f"buf lint:\n{done.stdout}{done.stderr}"
    assert not done.stdout.strip()


def test_the_protos_break_nothing_of_the_frozen_v1() -> None:
    done = _breaking(ROOT)

    assert done.returncode == 0, (
        f"a breaking change to jobmesh.v1 (add fields, reserve removed ones; never renumber):\n"
        f"{done.stdout}{done.stderr}"
    )


def test_the_frozen_baseline_holds_exactly_the_public_v1_files() -> None:
    files = {f["name"] for f in json.loads(BASELINE.read_text())["file"]}
    public = {
        str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos" / "jobmesh" / "v1").glob("*.proto")
    }

    assert {f for f in files if f.startswith("jobmesh/")} == public
    assert all(f.startswith(("jobmesh/v1/", "google/protobuf/")) for f in files)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("  string dedup_key = 4;", "  string dedup_key = 40;", "NewJob"),  # renumbered
        ("  bool include_log = 3;\n", "", "GetJobRequest"),  # removed
        (
            "  int32 retry_count = 8;\n  // How many retries",
            "  int64 retry_count = 8;\n  // How many retries",
            "Job",
        ),
    ],
    ids=["renumbered", "removed", "retyped"],
)
def test_a_change_that_breaks_clients_fails_the_check(tmp_path: Path, old: str, new: str, named: str) -> None:
    # Given the protos with one field of jobmesh.v1 changed incompatibly
    workspace = _copy_of_the_protos(tmp_path)
    _replace(workspace / JOBS_PROTO, old, new)

    done = _breaking(workspace)

    # Then the check fails and names the message that broke
    assert done.returncode != 0
    assert f'"jobmesh.v1.{named}"' in done.stdout or f'"{named}"' in done.stdout, done.stdout


def test_an_added_field_is_not_a_breaking_change(tmp_path: Path) -> None:
    workspace = _copy_of_the_protos(tmp_path)
    _replace(
        workspace / JOBS_PROTO,
        "  bool include_log = 3;\n",
        "  bool include_log = 3;\n  // A field added later.\n  bool include_more = 4;\n",
    )

    assert _breaking(workspace).returncode == 0


def test_the_peer_protocol_is_outside_the_promise(tmp_path: Path) -> None:
    # The node-to-node protocol may change between releases: renumbering there is allowed
    workspace = _copy_of_the_protos(tmp_path)
    _replace(
        workspace / "protos/jobmesh/peer/v1/transfer.proto",
        "  int64 last_seq = 1;\n}",
        "  int64 last_seq = 9;\n}",
    )

    assert _breaking(workspace).returncode == 0
