"""The Python topology API offloading builds on: two in-process nodes joined over real gRPC.

Runs on the test's event loop (conftest: fails on leftover tasks) and checks for thread leaks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from node import Node, NodeConfig
from node.discovery import TOPICS_PROPERTY, PeerState, TopologyEvent, TopologyEventType
from node.errors import InvalidArgument
from tests.support.launcher import seed_cluster, shared_cluster
from tests.support.waiting import async_wait_for


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
            await async_wait_for(
                lambda: [i.name for i in a.topology.view.consumers_of("images/resize")] == ["b"], what="b"
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

            def load_seen(value: str) -> bool:
                seen = a.topology.view.find(peer.id)
                return seen is not None and seen.properties.get("load") == value

            b.topology.properties.add_provider(lambda: dict(load))
            await async_wait_for(lambda: load_seen("1"), what="load 1")
            load["load"] = "2"
            b.topology.properties.refresh()
            await async_wait_for(lambda: load_seen("2"), what="load 2")
            with pytest.raises(InvalidArgument):
                b.topology.properties.set("no spaces", "x")

            # The async-iterator form starts with TOPOLOGY_INIT too
            stream = b.topology.events()
            first = await anext(stream)
            assert first.type is TopologyEventType.TOPOLOGY_INIT
            stream.close()

        await async_wait_for(lambda: a.topology.view.find(peer.id) is None, what="b gone after its leave")
        subscription.cancel()
    kinds = [e.type for e in events]
    assert kinds[:3] == [
        TopologyEventType.TOPOLOGY_INIT,
        TopologyEventType.TOPOLOGY_CHANGING,
        TopologyEventType.TOPOLOGY_CHANGED,
    ]
    assert TopologyEventType.PROPERTIES_CHANGED in kinds
    assert kinds[-2:] == [TopologyEventType.TOPOLOGY_CHANGING, TopologyEventType.TOPOLOGY_CHANGED]


async def test_latest_shows_a_joining_peer_before_the_settle_delay_and_listeners_hear_of_it(
    tmp_path: Path,
) -> None:
    # Given a node whose views settle only a minute after a change, listening to membership
    slow = config(tmp_path, "a")
    slow = replace(slow, discovery=replace(slow.discovery, settle_delay_s=60.0))
    async with Node(slow) as a:
        heard: list[str] = []
        undo = a.topology.add_membership_listener(lambda: heard.append("change"))

        # When a peer joins
        async with Node(config(tmp_path, "b", seeds=(a.address,))) as b:
            b_id = b.topology.info.id  # type: ignore[union-attr]

            # Then the latest view has it at once, the settled view not, and the listener heard it
            await async_wait_for(lambda: a.topology.latest.find(b_id) is not None, what="b in latest")
            assert heard
            assert a.topology.view.find(b_id) is None
            assert a.topology.changing
            assert not a.topology.latest.is_current

            # And once undone (twice is harmless), the listener hears nothing more
            undo()
            undo()
            count = len(heard)
        await async_wait_for(lambda: a.topology.latest.find(b_id) is None, what="b gone from latest")
        assert len(heard) == count
