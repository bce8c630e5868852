"""TopologyView.consumers_of: who consumes a topic, remembered per (immutable) view."""

from __future__ import annotations

from dataclasses import replace

from node.discovery.membership import PeerState
from node.discovery.properties import TOPICS_PROPERTY
from node.discovery.view import CONSUMERS_CACHE_TOPICS, InstanceDescription, TopologyView
from node.model.consumption import DISABLED_PROPERTY


def _instance(
    name: str, cluster: str, properties: dict[str, str], local: bool = False
) -> InstanceDescription:
    return InstanceDescription(
        id=name,
        name=name,
        start_time_us=1,
        endpoints=(f"{name}:1",),
        cluster=cluster,
        state=PeerState.ALIVE,
        incarnation=0,
        properties=properties,
        last_heard_us=1,
        is_local=local,
    )


def _view(*instances: InstanceDescription) -> TopologyView:
    return TopologyView(1, instances, (), instances[0].id, 1, lambda _v: True)


def test_consumers_follow_patterns_and_rules_own_cluster_first_and_each_view_its_own() -> None:
    here = _instance("here", "c1", {TOPICS_PROPERTY: "b/*"}, local=True)
    far = _instance("far", "c2", {TOPICS_PROPERTY: "a/**"})
    near = _instance("near", "c1", {TOPICS_PROPERTY: "a/**,b/*", DISABLED_PROPERTY: "b/x"})
    view = _view(here, far, near)

    assert [i.name for i in view.consumers_of("a/1/2")] == ["near", "far"]
    assert [i.name for i in view.consumers_of("b/x")] == ["here"]
    answer = view.consumers_of("a/1/2")
    answer.clear()  # a caller's list is its own
    assert [i.name for i in view.consumers_of("a/1/2")] == ["near", "far"]

    # A later view (near stopped disabling b/x) answers from its own instances
    later = replace(view, instances=(here, far, replace(near, properties={TOPICS_PROPERTY: "a/**,b/*"})))
    assert [i.name for i in later.consumers_of("b/x")] == ["here", "near"]
    assert [i.name for i in view.consumers_of("b/x")] == ["here"]


def test_a_view_remembers_a_bounded_number_of_topics() -> None:
    view = _view(_instance("here", "c1", {TOPICS_PROPERTY: "t/*"}, local=True))
    for n in range(CONSUMERS_CACHE_TOPICS + 10):
        assert [i.name for i in view.consumers_of(f"t/{n}")] == ["here"]
    assert len(view._consumers) <= CONSUMERS_CACHE_TOPICS
