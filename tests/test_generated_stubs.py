"""The committed stubs in generated/ are exactly what scripts/gen-stubs makes from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.parts[len(root.parts)] == "jobmesh"
    }


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    # Given fresh stubs generated from protos/ into a temp dir
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_stubs.py"), "python", "--out", str(tmp_path)], check=True
    )
    fresh, committed = _files(tmp_path), _files(ROOT / "generated")
    # Then the committed generated/ has the same files with the same bytes
    assert sorted(fresh) == sorted(committed), "generated/ is stale: run scripts/gen-stubs and commit"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"generated/ is stale ({', '.join(stale)}): run scripts/gen-stubs and commit"
