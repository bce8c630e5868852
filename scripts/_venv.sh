# Sourced by scripts/*: make sure .venv exists and holds this project (editable)
# with its dev extra. Re-installs only when pyproject.toml changed, or the venv holds another
# checkout (its stamp names the checkout it was installed from).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${JOBMESH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "scripts: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.jobmesh-installed"
# A venv of this checkout's own (.venv here) must hold this checkout; one named by JOBMESH_VENV
# may be shared on purpose (the quick-start test runs a copy of the checkout with the suite's).
OTHER_CHECKOUT=""
if [ -z "${JOBMESH_VENV:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" != "$ROOT" ]; then
    OTHER_CHECKOUT=1
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ -n "$OTHER_CHECKOUT" ]; then
    echo "scripts: installing jobmesh and its dev tools into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]" >&2
    echo "$ROOT" > "$STAMP"
fi
export VENV
# Compile the checkout's own modules ahead. An editable install leaves that to the first import,
# and where PYTHONDONTWRITEBYTECODE is set (containers, CI) every node process would compile
# them again at its start: 0.2 s of a 0.9 s start on this machine. Up to date, this takes 0.05 s.
"$VENV/bin/python" -m compileall -q "$ROOT/node" "$ROOT/generated/jobmesh" >/dev/null
