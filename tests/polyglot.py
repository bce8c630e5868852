"""What the polyglot tests tell a person whose toolchain is missing: the command that installs it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_FILE = ROOT / "scripts" / "polyglot-packages"
SETUP = "scripts/setup-polyglot"


def debian_packages(group: str) -> list[str]:
    """The Debian packages scripts/polyglot-packages lists for `group` (a language, or `stubs`)."""
    for line in PACKAGES_FILE.read_text().splitlines():
        name, *packages = line.split()
        if name == group:
            return packages
    raise LookupError(f"{PACKAGES_FILE.name} has no line for {group!r}")


def install_command(group: str) -> str:
    """The command that installs what `group` needs (Node.js: setup-polyglot runs npm too)."""
    if group == "node":
        return f"{SETUP} (Node.js and npm if missing, then `npm ci` in examples/node)"
    return (
        f"apt-get install {' '.join(debian_packages(group))} (or {SETUP}, as root, which scripts/test runs)"
    )
