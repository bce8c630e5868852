"""The Python topology API offloading builds on: two in-process nodes joined over real gRPC.

Runs on the test's event loop (conftest: fails on leftover tasks) and checks for thread leaks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from harness import seed_cluster, shared_cluster

from node import Node, NodeConfig
from node.discovery import TOPICS_PROPERTY, PeerState, TopologyEvent, TopologyEventType
from node.errors import InvalidArgument

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


async def eventually(condition: Callable[[], object], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def config(path: Path, name: str, seeds: tuple[str, ...] = ()) -> NodeConfig:
    base = NodeConfig.for_tests(seed_cluster(path / name, shared_cluster(path)))
    return replace(base, name=name, discovery=replace(base.discovery, seeds=seeds))


def handle(job: object, context: object) -> None:
    """A consumer that succeeds."""


async def test_offloading_sees_live_consumers_properties_and_events(tmp_path: Path) -> None:
    async with Node(config(tmp_path, "a")) as a:
        events: list[TopologyEvent] = []
        subscription = a.topology.subscribe(events.append)
        assert [e.type for e in events] == [TopologyEventType.TOPOLOGY_INIT]
        assert events[0].new_view is not None
        assert events[0].new_view.local.name == "a"

        async with Node(config(tmp_path, "b", seeds=(a.address,))) as b:
            # A consumer registered at run time is published as `jobmesh.topics`
            b.consumers.register(["images/**"], handle)
            assert b.topology.properties.get(TOPICS_PROPERTY) == "images/**"
            await eventually(
                lambda: [i.name for i in a.topology.view.consumers_of("images/resize")] == ["b"], "b"
            )
            view = a.topology.view
            assert view.is_current
            assert view.local.is_local
            assert view.leader.name == "a"  # earliest start
            peer = view.find(b.topology.info.id)  # type: ignore[union-attr]
            assert peer is not None
            assert peer.state is PeerState.ALIVE
            assert peer.address == b.address
            assert peer.topics == ("images/**",)
            assert peer.consumes("images/x/y")
            assert not peer.consumes("other")

            # Python providers: read now and on refresh; every peer sees the change
            load = {"load": "1"}
            b.topology.properties.add_provider(lambda: dict(load))
            await eventually(lambda: a.topology.view.find(peer.id).properties.get("load") == "1", "load 1")  # type: ignore[union-attr]
            load["load"] = "2"
            b.topology.properties.refresh()
            await eventually(lambda: a.topology.view.find(peer.id).properties.get("load") == "2", "load 2")  # type: ignore[union-attr]
            with pytest.raises(InvalidArgument):
                b.topology.properties.set("no spaces", "x")

            # The async-iterator form starts with TOPOLOGY_INIT too
            stream = b.topology.events()
            first = await anext(stream)
            assert first.type is TopologyEventType.TOPOLOGY_INIT
            stream.close()

        await eventually(lambda: a.topology.view.find(peer.id) is None, "b gone after its leave")
        subscription.cancel()
    kinds = [e.type for e in events]
    assert kinds[:3] == [
        TopologyEventType.TOPOLOGY_INIT,
        TopologyEventType.TOPOLOGY_CHANGING,
        TopologyEventType.TOPOLOGY_CHANGED,
    ]
    assert TopologyEventType.PROPERTIES_CHANGED in kinds
    assert kinds[-2:] == [TopologyEventType.TOPOLOGY_CHANGING, TopologyEventType.TOPOLOGY_CHANGED]
