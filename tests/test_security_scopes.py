"""The authorization table covers every method of every service, and the scope rules hold."""

from __future__ import annotations

import importlib
import pkgutil

import jobmesh.peer.v1
import jobmesh.v1
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from node.security.scopes import JOIN, NODE_FORWARDED, OPEN, PEER, REQUIRED_SCOPE, Principal
from node.services.reflection import V1_SERVICE_NAME


def every_method() -> list[str]:
    """`/package.Service/Method` of every service in the protos, health and reflection."""
    modules = [
        importlib.import_module(f"{package.__name__}.{m.name}")
        for package in (jobmesh.v1, jobmesh.peer.v1)
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.endswith("_pb2")
    ]
    methods = []
    for module in [*modules, health_pb2, reflection_pb2]:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{method.name}" for method in service.methods]
    # Reflection v1 is served by the node's own adapter (grpcio-reflection ships v1alpha's protos).
    return [*methods, f"/{V1_SERVICE_NAME}/ServerReflectionInfo"]


def test_every_method_has_a_required_scope() -> None:
    methods = every_method()
    assert len(methods) > 30  # the walk found the services
    missing = [m for m in methods if m not in REQUIRED_SCOPE]
    assert not missing, f"methods without an entry in node.security.scopes.REQUIRED_SCOPE: {missing}"
    # An entry naming no served method (a renamed package) would leave the real method to the
    # table's default, admins only: every entry must name a method that exists.
    stale = sorted(set(REQUIRED_SCOPE) - set(methods))
    assert not stale, f"REQUIRED_SCOPE entries for methods that do not exist: {stale}"
    assert set(REQUIRED_SCOPE.values()) <= {OPEN, PEER, JOIN, "read", "submit", "work", "admin"}


def test_only_health_is_open() -> None:
    assert {m for m, s in REQUIRED_SCOPE.items() if s == OPEN} == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
    }


@pytest.mark.parametrize(
    ("scopes", "allowed", "refused"),
    [
        ({"read"}, {"read"}, {"submit", "work", "admin", PEER, JOIN}),
        ({"submit"}, {"read", "submit"}, {"work", "admin", PEER}),
        ({"work"}, {"work"}, {"read", "submit", "admin", PEER}),
        ({"admin"}, {"read", "submit", "work", "admin"}, {PEER, JOIN}),
    ],
)
def test_scopes_imply_exactly_their_rights(scopes: set[str], allowed: set[str], refused: set[str]) -> None:
    caller = Principal("t", frozenset(scopes))
    assert all(caller.missing(s) is None for s in allowed)
    assert all(caller.missing(s) is not None for s in refused)


def test_a_node_may_call_peer_methods_read_and_forward_consumption_changes_only() -> None:
    node = Principal("n", frozenset(), instance_id="abc")
    assert all(node.missing(s) is None for s in (PEER, "read"))
    assert all(node.missing(s) is not None for s in ("submit", "work", "admin"))
    assert all(node.missing(REQUIRED_SCOPE[m], m) is None for m in NODE_FORWARDED)
    for method in (
        "/jobmesh.v1.JobService/RemoveJob",
        "/jobmesh.v1.JobService/PurgeJobs",
        "/jobmesh.v1.QueueService/SetQueue",
        "/jobmesh.v1.JobService/AddJob",
    ):
        assert node.missing(REQUIRED_SCOPE[method], method) is not None, method


@pytest.mark.parametrize(
    ("patterns", "asked", "refused"),
    [
        (("images/**",), ["images/a", "images/a/b", "images/x/**", "images/*"], None),
        (("images/**",), ["video/x"], "video/x"),
        (("images/**",), ["**"], "**"),
        (("images/**",), ["images"], "images"),
        (("images/*",), ["images/a"], None),
        (("images/*",), ["images/a/b"], "images/a/b"),
        (("images/*",), ["images/**"], "images/**"),
        (("a", "b/**"), ["a", "b/c"], None),
        ((), ["anything/**"], None),
    ],
)
def test_topic_patterns_limit_submit_and_work(
    patterns: tuple[str, ...], asked: list[str], refused: str | None
) -> None:
    assert Principal("t", frozenset({"submit"}), patterns).topic_refused(asked) == refused
