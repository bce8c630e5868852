"""Topology helpers for tests with real node processes: start named nodes, read and await their views."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from node.discovery.config import DiscoveryConfig

from .launcher import NodeFactory, NodeProcess
from .waiting import wait_for

RPC_TIMEOUT_S = 2.0
LAN_TIMINGS = {
    f"discovery.{name}": getattr(DiscoveryConfig.lan(), name)
    for name in (
        "probe_interval_s",
        "probe_timeout_s",
        "suspicion_timeout_s",
        "gossip_interval_s",
        "sync_interval_s",
        "settle_delay_s",
        "leave_timeout_s",
    )
}
"""Settings that give a test-preset node the LAN discovery timings."""


def create(
    nodes: NodeFactory,
    name: str,
    seeds: Iterable[NodeProcess | str] = (),
    settings: Mapping[str, object] | None = None,
    consumers: Iterable[str] = (),
    extra_args: Sequence[str] = (),
) -> NodeProcess:
    """A node named `name` (instance name and data dir), joining through `seeds`; not started."""
    args = ["--name", name, *extra_args]
    for seed in seeds:
        args += ["--seed", seed if isinstance(seed, str) else seed.address]
    return nodes.create(name, consumers, settings, extra_args=args)


def start_all(*processes: NodeProcess) -> list[NodeProcess]:
    """Spawn every node at once, then wait until each serves (parallel start-up)."""
    for process in processes:
        process.spawn()
    return [process.wait_serving() for process in processes]


def stub(node: NodeProcess) -> topology_pb2_grpc.TopologyServiceStub:
    """A TopologyService stub on the node's channel."""
    return topology_pb2_grpc.TopologyServiceStub(node.channel)


def view(node: NodeProcess) -> topology_pb2.TopologyView:
    """The node's current topology view."""
    response = stub(node).GetTopology(topology_pb2.GetTopologyRequest(), timeout=RPC_TIMEOUT_S)
    current: topology_pb2.TopologyView = response.view
    return current


def names(v: topology_pb2.TopologyView) -> set[str]:
    """Instance names in a view."""
    return {i.name for i in v.instances}


def leader_names(v: topology_pb2.TopologyView) -> list[str]:
    """Names of the instances flagged leader."""
    return [i.name for i in v.instances if i.leader]


def instance(v: topology_pb2.TopologyView, name: str) -> topology_pb2.Instance | None:
    """The instance named `name` in a view, or None."""
    return next((i for i in v.instances if i.name == name), None)


def wait_views(
    nodes: Sequence[NodeProcess], expected: set[str], timeout: float = 10.0
) -> dict[str, topology_pb2.TopologyView]:
    """Wait until every node's settled view holds exactly `expected` (same digest); returns them."""
    last: dict[str, object] = {}

    def converged() -> dict[str, topology_pb2.TopologyView] | None:
        views = {str(n.data_dir.name): view(n) for n in nodes}
        last.clear()
        last.update({k: sorted(names(v)) for k, v in views.items()})
        agreed = len({v.membership_digest for v in views.values()}) == 1
        if agreed and all(names(v) == expected and v.current for v in views.values()):
            return views
        return None

    try:
        return wait_for(converged, timeout, f"views of {sorted(expected)}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nviews seen last: {last}") from None


def time_until(
    nodes: Sequence[NodeProcess],
    condition: str,
    check: object,
    timeout: float = 10.0,
    since: float | None = None,
) -> float:
    """Seconds from `since` (default: now, monotonic) until `check(view)` holds on every node."""
    started = time.monotonic() if since is None else since
    pending = list(nodes)

    def done() -> bool:
        pending[:] = [n for n in pending if not check(view(n))]  # type: ignore[operator]
        return not pending

    wait_for(done, timeout, condition)
    return time.monotonic() - started
