"""Fixture factories for test modules (the suite-wide fixtures themselves live in the conftest)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import pytest

from .launcher import NodeFactory, NodeProcess


def shared_node(
    name: str,
    consumers: Iterable[str] = (),
    settings: Mapping[str, object] | None = None,
    extra_args: Sequence[str] = (),
) -> Callable[..., NodeProcess]:
    """A module-scoped `node` fixture: one node process, started once for the module's tests.

    Use it as `node = shared_node("name", ["topic/**=consumers:succeed"], {"jobs.retries": 1})`;
    the tests of the module then share it (each uses topics of its own).
    """

    def node(module_nodes: NodeFactory) -> NodeProcess:
        return module_nodes.start(name, consumers, settings, extra_args=extra_args)

    return pytest.fixture(scope="module", name="node")(node)
