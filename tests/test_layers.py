"""The packages of node/ depend one way: no import cycle between them, no lower layer importing a
higher one. Imports are read with `ast`, so the test sees every import, also those inside
functions and under TYPE_CHECKING. The layer order (LAYERS) is declared here and explained in
docs/architecture.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parent.parent / "node"

LAYERS: tuple[tuple[str, ...], ...] = (
    # bottom: foundations every layer may use
    ("errors",),
    (
        "instance",
        "topics",
        "properties",
        "templates",
        "interceptors",
        "security",
        "transport",
        "memnet",
        "ranges",
        "durations",
        "waits",
    ),
    # the job model: values and pure rules, no I/O
    ("model",),
    # durable storage of the model
    ("journal",),
    # peers and the topology view (knows nothing of jobs)
    ("discovery",),
    # the typed configuration of every part below and above
    ("config",),
    # the job engine: manager, runners, consumers, schedules
    ("jobs",),
    # offloading: placement, outbox, transfer streams
    ("transfer",),
    # the gRPC API, and the client of it
    ("services", "submitter", "client"),
    # the web console, /metrics and /healthz (a client of the API, below the wiring)
    ("console",),
    # the Node that wires everything together, and the package's public surface
    ("trust", "node", "__init__"),
    ("cli", "__main__"),
)
"""Units of node/ (sub-packages and top-level modules), lowest layer first. A unit may import
units of its own layer or lower ones, and the graph of units must have no cycle."""

LAYER_OF = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
MAX_MODULE_LINES = 500


def unit_of(module: str) -> str:
    """The unit (`jobs`, `config`, ...) a dotted module name of node belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(NODE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) if parts != ("node",) else "node.__init__"


def imports(path: Path) -> Iterator[str]:
    """Every node module `path` imports (`from node import x` counts as `node.x`)."""
    for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            yield from (a.name for a in stmt.names if a.name.split(".")[0] == "node")
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
            if stmt.module == "node":
                yield from (f"node.{a.name}" for a in stmt.names)
            elif stmt.module.startswith("node."):
                yield stmt.module


def unit_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the `module -> module` imports that make the edge."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(NODE.rglob("*.py")):
        source = module_name(path)
        for target in imports(path):
            a, b = unit_of(source), unit_of(target)
            if a != b:
                graph.setdefault(a, {}).setdefault(b, []).append(f"{source} -> {target}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of units (first unit repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        if unit in path:
            return [*path[path.index(unit) :], unit]
        if unit in done:
            return None
        path.append(unit)
        for nxt in sorted(graph.get(unit, {})):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(unit)
        return None

    for unit in sorted(graph):
        cycle = visit(unit)
        if cycle:
            return cycle
    return None


def test_every_unit_of_node_has_a_declared_layer() -> None:
    units = {unit_of(module_name(p)) for p in NODE.rglob("*.py")}
    assert units - set(LAYER_OF) == set(), "add new packages or modules of node/ to LAYERS"


def test_no_import_cycle_between_packages() -> None:
    graph = unit_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(cycle or [])
        + "\n"
        + "\n".join("; ".join(graph[a][b]) for a, b in zip(cycle or [], (cycle or [])[1:], strict=False))
    )


def against_the_layers(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """The imports of `graph` that go from a lower layer to a higher one."""
    return [
        line
        for a, targets in graph.items()
        for b, lines in targets.items()
        if LAYER_OF.get(a, -1) < LAYER_OF.get(b, -1)
        for line in lines
    ]


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = against_the_layers(unit_graph())
    assert wrong == [], "imports against the layer order (tests/test_layers.py LAYERS):\n" + "\n".join(wrong)


def test_the_layer_check_finds_an_import_upwards() -> None:
    graph = {
        "journal": {
            "model": ["node.journal.x -> node.model.y"],
            "transfer": ["node.journal.x -> node.transfer.z"],
        }
    }
    assert against_the_layers(graph) == ["node.journal.x -> node.transfer.z"]


def test_no_module_of_node_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(NODE.parent)): len(p.read_text().splitlines()) for p in NODE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b": ["x"]}, "b": {"c": ["y"]}}, None),
        ({"a": {"b": ["x"]}, "b": {"a": ["y"]}}, ["a", "b", "a"]),
        ({"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"b": ["z"]}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, dict[str, list[str]]], expected: list[str] | None
) -> None:
    assert find_cycle(graph) == expected


def test_imports_are_read_from_every_form(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import node.jobs.manager\nfrom node import transport\nfrom node.model.job import Job\n"
        "def f():\n    from node.cli import main\nfrom .x import y\nimport os\n"
    )
    assert list(imports(source)) == ["node.jobs.manager", "node.transport", "node.model.job", "node.cli"]
