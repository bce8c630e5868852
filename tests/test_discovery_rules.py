"""Discovery building blocks in isolation: merge precedence, instance properties, config, events."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from node.config import NodeConfig, env_overrides, load_config
from node.discovery.config import DiscoveryConfig
from node.discovery.events import TopologyEvent, TopologyEventType, ViewTracker
from node.discovery.gossip import BroadcastQueue
from node.discovery.identity import InstanceInfo, local_endpoints
from node.discovery.membership import Member, MemberRecord, PeerState, PeerTable, Verdict
from node.discovery.properties import TOPICS_PROPERTY, InstanceProperties, format_topics, parse_topics
from node.discovery.suspicion import suspicion_timeout
from node.discovery.view import TopologyView, build_view
from node.errors import ConfigError, InvalidArgument

ALIVE, SUSPECT, DEAD, LEFT = PeerState.ALIVE, PeerState.SUSPECT, PeerState.DEAD, PeerState.LEFT


def info(name: str, start: int = 1_000, port: int = 1, instance_id: str | None = None) -> InstanceInfo:
    return InstanceInfo(instance_id or f"id-{name}", name, start, (f"10.0.0.{port}:7710",))


def rec(name: str, inc: int, state: PeerState = ALIVE, **kwargs: object) -> MemberRecord:
    return MemberRecord(info(name, **kwargs), inc, state)  # type: ignore[arg-type]


@pytest.fixture
def table() -> PeerTable:
    t = PeerTable(rec("me", 1_000))
    t.apply(rec("b", 5, port=2), 0, 0.0)
    return t


# --- merge precedence (SWIM / memberlist rules) ------------------------------------------------


@pytest.mark.parametrize(
    ("current", "incoming", "verdict"),
    [
        ((5, ALIVE), (6, ALIVE), Verdict.APPLY),
        ((5, ALIVE), (5, ALIVE), Verdict.IGNORE),
        ((5, ALIVE), (5, SUSPECT), Verdict.APPLY),
        ((5, SUSPECT), (5, ALIVE), Verdict.IGNORE),  # only a higher incarnation refutes
        ((5, SUSPECT), (6, ALIVE), Verdict.APPLY),
        ((5, SUSPECT), (5, DEAD), Verdict.APPLY),
        ((5, DEAD), (5, SUSPECT), Verdict.IGNORE),
        ((5, DEAD), (5, LEFT), Verdict.APPLY),
        ((5, LEFT), (5, DEAD), Verdict.IGNORE),
        ((5, DEAD), (6, ALIVE), Verdict.APPLY),
        ((5, ALIVE), (4, DEAD), Verdict.IGNORE),
        ((5, SUSPECT), (5, SUSPECT), Verdict.SUSPECTED_AGAIN),  # maybe a new suspector: counted
        ((6, SUSPECT), (5, SUSPECT), Verdict.IGNORE),
    ],
)
def test_news_about_one_run_of_a_member_follows_incarnation_then_state_precedence(
    table: PeerTable, current: tuple[int, PeerState], incoming: tuple[int, PeerState], verdict: Verdict
) -> None:
    table.apply(rec("b", current[0], current[1], port=2), 0, 0.0)
    assert table.judge(rec("b", incoming[0], incoming[1], port=2))[0] is verdict


def test_a_dead_member_in_another_nodes_table_only_makes_a_live_one_suspect(table: PeerTable) -> None:
    verdict, record = table.judge(rec("b", 5, DEAD, port=2), from_sync=True)
    assert verdict is Verdict.APPLY
    assert record.state is SUSPECT  # a partition's artefact must not kill a member outright


def test_suspicion_of_this_node_is_refuted_and_praise_ignored(table: PeerTable) -> None:
    assert table.judge(rec("me", 1_000, SUSPECT))[0] is Verdict.REFUTE
    assert table.judge(rec("me", 1_000, DEAD))[0] is Verdict.REFUTE
    assert table.judge(rec("me", 1_000, ALIVE))[0] is Verdict.IGNORE
    refuted = table.bump_local(above=1_000)
    assert refuted.incarnation == 1_001
    assert refuted.state is ALIVE


def test_another_run_with_this_nodes_id_is_flagged(table: PeerTable) -> None:
    other = MemberRecord(info("me", start=2_000, port=9), 2_000, ALIVE)
    assert table.judge(other)[0] is Verdict.OWN_ID


def test_a_new_run_of_a_live_member_at_another_address_is_verified_first(table: PeerTable) -> None:
    elsewhere = MemberRecord(info("b", start=9_000, port=3), 9_000, ALIVE)
    assert table.judge(elsewhere)[0] is Verdict.VERIFY
    same_address = MemberRecord(info("b", start=9_000, port=2), 9_000, ALIVE)
    assert table.judge(same_address)[0] is Verdict.APPLY  # the address can only hold one process
    older = MemberRecord(info("b", start=9_000, port=3), 4, ALIVE)
    assert table.judge(older)[0] is Verdict.IGNORE


# --- hearsay: a member speaks only for itself -------------------------------------------------


def test_hearsay_of_an_unknown_member_or_a_newer_word_is_confirmed_with_the_member_itself(
    table: PeerTable,
) -> None:
    # Given a third party ("c") telling news about "b" and about a member nobody knows
    fake = MemberRecord(info("fake", port=7), 9, ALIVE, {"jobmesh.capacity": "100000"})
    assert table.judge(fake, source="id-c")[0] is Verdict.CONFIRM
    assert table.judge(fake, source="id-fake")[0] is Verdict.APPLY  # its own word
    forged = MemberRecord(info("b", port=2), 6, ALIVE, {"jobmesh.capacity": "100000"})
    assert table.judge(forged, source="id-c")[0] is Verdict.CONFIRM
    assert table.judge(rec("b", 5, port=2), source="id-c")[0] is Verdict.IGNORE
    new_run = MemberRecord(info("b", start=9_000, port=3), 9_000, ALIVE)
    assert table.judge(new_run, source="id-c")[0] is Verdict.CONFIRM
    # Then nothing of it is in the table until the member answers itself
    assert table.get("id-fake") is None
    assert table.get("id-b").record.properties == {}  # type: ignore[union-attr]


def test_third_party_failure_reports_keep_the_members_own_incarnation_and_properties() -> None:
    t = PeerTable(rec("me", 1_000))
    t.apply(MemberRecord(info("b", port=2), 5, ALIVE, {"p": "own"}), 0, 0.0)
    lie = MemberRecord(info("b", port=2), 2**63 - 2, SUSPECT, {"p": "forged"})
    verdict, record = t.judge(lie, source="id-c")
    assert verdict is Verdict.APPLY
    assert (record.incarnation, record.state, dict(record.properties)) == (5, SUSPECT, {"p": "own"})
    # Only a member itself says it left: from a third party LEFT is a refutable DEAD report.
    verdict, record = t.judge(rec("b", 2**63 - 2, LEFT, port=2), source="id-c")
    assert (verdict, record.state, record.incarnation) == (Verdict.APPLY, DEAD, 5)
    verdict, record = t.judge(rec("b", 6, LEFT, port=2), source="id-b")
    assert (verdict, record.state, record.incarnation) == (Verdict.APPLY, LEFT, 6)


def test_a_suspicion_names_its_suspector_and_one_already_held_is_counted_not_applied() -> None:
    t = PeerTable(rec("me", 1_000))
    t.apply(MemberRecord(info("b", port=2), 5, ALIVE, {"p": "own"}), 0, 0.0)
    # A third party's suspicion keeps the suspector it names (not the relay that told it)
    heard = MemberRecord(info("b", port=2), 5, SUSPECT, suspected_by="id-c")
    verdict, record = t.judge(heard, source="id-d")
    assert (verdict, record.suspected_by, dict(record.properties)) == (Verdict.APPLY, "id-c", {"p": "own"})
    t.apply(record, 0, 0.0)
    # Another suspector of the same incarnation: counted by the protocol, the table unchanged
    again = MemberRecord(info("b", port=2), 5, SUSPECT, suspected_by="id-e")
    verdict, record = t.judge(again, source="id-e")
    assert (verdict, record.suspected_by) == (Verdict.SUSPECTED_AGAIN, "id-e")
    # A DEAD in a peer's table is that peer's suspicion
    verdict, record = t.judge(rec("b", 5, DEAD, port=2), from_sync=True, source="id-f")
    assert (verdict, record.state, record.suspected_by) == (Verdict.SUSPECTED_AGAIN, SUSPECT, "id-f")
    # And only SUSPECT records name one
    assert record.with_state(DEAD).suspected_by == ""
    assert record.with_state(ALIVE, 6).suspected_by == ""


def test_a_peers_record_naming_a_suspector_outside_a_suspicion_is_refused() -> None:
    suspect = MemberRecord(info("b", port=2), 5, SUSPECT, suspected_by="id-c")
    assert MemberRecord.from_proto(suspect.to_proto()) == suspect
    alive = rec("b", 5, port=2).to_proto()
    alive.suspected_by = "id-c"
    with pytest.raises(InvalidArgument, match=r"record.suspected_by is set on a record in state ALIVE"):
        MemberRecord.from_proto(alive)
    long = suspect.to_proto()
    long.suspected_by = "x" * 129
    with pytest.raises(InvalidArgument, match=r"record.suspected_by is 129 characters"):
        MemberRecord.from_proto(long)


@pytest.mark.parametrize(
    ("confirmations", "needed", "timeout"),
    [(0, 2, 6.0), (1, 2, 6.0 - 4.5 * math.log(2) / math.log(3)), (2, 2, 1.5), (5, 2, 1.5), (0, 0, 1.5)],
)
def test_a_suspicion_runs_from_its_longest_timeout_down_to_its_shortest_as_confirmations_come(
    confirmations: int, needed: int, timeout: float
) -> None:
    assert suspicion_timeout(1.5, 6.0, confirmations, needed) == pytest.approx(timeout)


def test_a_claim_about_this_node_is_refuted_one_above_its_own_incarnation(table: PeerTable) -> None:
    verdict, record = table.judge(rec("me", 2**63 - 2, LEFT), source="id-c")
    assert verdict is Verdict.REFUTE
    assert record.incarnation == 1_000
    assert table.bump_local(above=record.incarnation).incarnation == 1_001


def test_probe_order_visits_every_live_member_once_per_round(table: PeerTable) -> None:
    for name, port in (("c", 3), ("d", 4)):
        table.apply(rec(name, 1, port=port), 0, 0.0)
    table.apply(rec("d", 1, DEAD, port=4), 0, 0.0)
    first_round = {table.next_probe_target().record.id for _ in range(2)}  # type: ignore[union-attr]
    assert first_round == {"id-b", "id-c"}


def test_broadcasts_are_retransmitted_a_bounded_number_of_times() -> None:
    queue = BroadcastQueue(retransmit_mult=2)
    queue.add(rec("b", 1))
    queue.add(rec("b", 2))  # newer news replaces older
    sent = [queue.take(8, members=5) for _ in range(5)]
    assert [len(s) for s in sent] == [1, 1, 0, 0, 0]  # 2 * ceil(log10(6)) = 2
    assert sent[0][0].incarnation == 2


# --- instance properties -------------------------------------------------------------------------


def test_properties_reject_bad_names_values_and_sizes_without_changing_anything() -> None:
    props = InstanceProperties(max_bytes=32, initial={"rack": "r1"})
    for bad in ("", "a b", "ü", "x/y", "a" * 129):
        with pytest.raises(InvalidArgument, match="invalid"):
            props.set(bad, "v")
    with pytest.raises(InvalidArgument, match="strings"):
        props.set("n", 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="limit is 32"):
        props.set("big", "x" * 40)
    assert props.snapshot() == {"rack": "r1"}


def test_providers_are_read_at_once_and_on_refresh_and_a_failing_one_keeps_its_values() -> None:
    props = InstanceProperties(max_bytes=1024)
    changes: list[dict[str, str]] = []
    props.add_listener(lambda: changes.append(props.snapshot()))
    load = {"load": "1"}
    handle = props.add_provider(lambda: dict(load))
    assert props.get("load") == "1"
    load["load"] = "2"
    props.refresh()
    assert props.get("load") == "2"

    def broken() -> dict[str, str]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        props.add_provider(broken)
    load["bad name"] = "x"
    props.refresh()  # logged, not applied
    assert props.snapshot() == {"load": "2"}
    props.set("load", "direct")  # a direct value wins over a provider's
    assert props.get("load") == "direct"
    props.remove("load")
    handle.remove()
    assert props.snapshot() == {}
    assert changes[-1] == {}


def test_topics_property_round_trips() -> None:
    value = format_topics(["b/**", "a/x", "b/**"])
    assert value == "a/x,b/**"
    assert parse_topics(value) == ("a/x", "b/**")
    assert parse_topics(None) == ()
    assert TOPICS_PROPERTY == "jobmesh.topics"


# --- configuration -------------------------------------------------------------------------------


def test_lan_defaults_and_test_preset() -> None:
    lan = NodeConfig.lan().discovery
    assert (lan.mdns, lan.probe_interval_s, lan.suspicion_timeout_s, lan.settle_delay_s) == (
        True,
        0.5,
        1.5,
        0.1,
    )
    fast = NodeConfig.for_tests(NodeConfig().data_dir).discovery
    assert not fast.mdns  # tests turn mDNS on where they need it, so nodes of other tests stay apart
    assert fast.suspicion_timeout_s < lan.suspicion_timeout_s


def test_discovery_settings_from_env_flags_and_toml(tmp_path: object) -> None:
    env = {
        "JOBMESH_DISCOVERY_SEEDS": "10.0.0.1:7710, 10.0.0.2:7711",
        "JOBMESH_DISCOVERY_CLUSTER": "blue",
        "JOBMESH_DISCOVERY_PROPERTIES": "rack=r1;zone=z=2",
    }
    assert "discovery.seeds" in env_overrides(env)
    config = load_config(None, env, {"discovery.mdns": "false", "discovery.interfaces": "lo"})
    d = config.discovery
    assert d.seeds == ("10.0.0.1:7710", "10.0.0.2:7711")
    assert (d.cluster, d.mdns, d.interfaces) == ("blue", False, ("lo",))
    assert d.properties == {"rack": "r1", "zone": "z=2"}
    toml = tmp_path / "c.toml"  # type: ignore[operator]
    toml.write_text('[discovery]\ncluster = "red"\nseeds = ["h:1"]\n[discovery.properties]\nrack = "r9"\n')
    d = load_config(toml).discovery
    assert (d.cluster, d.seeds, d.properties) == ("red", ("h:1",), {"rack": "r9"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("discovery.seeds", "nohost", "not HOST:PORT"),
        ("discovery.cluster", "a b", "cluster"),
        ("discovery.properties", "bad name=1", "invalid"),
        ("discovery.properties", "novalue", "not a valid"),
        ("discovery.suspicion_timeout_s", "0", "must be > 0"),
        ("discovery.gossip_fanout", "0", "must be >= 1"),
    ],
)
def test_invalid_discovery_settings_are_config_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig().with_overrides({key: value})


def test_endpoints_prefer_advertised_then_bound_address() -> None:
    assert local_endpoints("0.0.0.0", 7710, ("10.1.1.1", "h:99")) == ("10.1.1.1:7710", "h:99")
    assert local_endpoints("127.0.0.1", 5, ()) == ("127.0.0.1:5",)
    assert local_endpoints("::1", 5, ()) == ("[::1]:5",)
    assert local_endpoints("0.0.0.0", 5, ()) == ("127.0.0.1:5",)  # only loopback in this namespace
    with pytest.raises(ConfigError, match="eth9"):
        local_endpoints("0.0.0.0", 5, (), ("eth9",))


def test_discovery_config_is_part_of_node_config() -> None:
    assert isinstance(NodeConfig().discovery, DiscoveryConfig)


# --- views and events ------------------------------------------------------------------------------


def _members(*records: MemberRecord) -> list[Member]:
    return [Member(r, r.info.address, 0, 0.0) for r in records]


def test_leader_is_earliest_start_then_id_per_cluster() -> None:
    local = MemberRecord(replace(info("me", start=50), cluster="x"), 1, ALIVE)
    others = _members(
        MemberRecord(replace(info("old", start=10, port=2), cluster="x"), 1, SUSPECT),
        MemberRecord(replace(info("tie-b", start=5, port=3, instance_id="b"), cluster=""), 1, ALIVE),
        MemberRecord(replace(info("tie-a", start=5, port=4, instance_id="a"), cluster=""), 1, ALIVE),
        MemberRecord(replace(info("gone", start=1, port=5), cluster="x"), 1, DEAD),
    )
    view = build_view(1, local, others, 0, lambda _: True)
    assert [c.cluster for c in view.clusters] == ["", "x"]
    assert view.cluster_view("").leader.name == "tie-a"
    assert view.leader.name == "old"  # suspect still counts; dead does not
    assert sum(i.is_leader for i in view.instances) == 2
    assert view.find("id-gone") is None


async def test_events_follow_sling_init_changing_changed_and_properties_changed() -> None:
    members: list[Member] = []
    local = rec("me", 1)

    def snapshot(version: int, current: Callable[[TopologyView], bool]) -> TopologyView:
        return build_view(version, local, members, 0, current)

    tracker = ViewTracker(0.05, snapshot)
    events: list[TopologyEvent] = []
    tracker.subscribe(events.append)
    assert [e.type for e in events] == [TopologyEventType.TOPOLOGY_INIT]
    first = tracker.view
    assert first.is_current

    # A burst of joins is one CHANGING and, once settled, one CHANGED.
    members += _members(rec("b", 1, port=2))
    tracker.changed()
    assert not first.is_current
    members += _members(rec("c", 1, port=3))
    tracker.changed()
    await asyncio.sleep(0.2)
    assert [e.type for e in events[1:]] == [
        TopologyEventType.TOPOLOGY_CHANGING,
        TopologyEventType.TOPOLOGY_CHANGED,
    ]
    changed = events[-1]
    assert changed.old_view is first
    assert changed.new_view is not None
    assert {i.name for i in changed.new_view.instances} == {"me", "b", "c"}
    assert changed.new_view.is_current

    # New properties alone: PROPERTIES_CHANGED, no CHANGING.
    members[0].record = replace(members[0].record, incarnation=2, properties={"k": "v"})
    tracker.changed()
    await asyncio.sleep(0.2)
    assert events[-1].type is TopologyEventType.PROPERTIES_CHANGED
    assert len(events) == 4

    # A state change alone is no event.
    members[0].record = members[0].record.with_state(SUSPECT)
    tracker.changed()
    await asyncio.sleep(0.1)
    assert len(events) == 4

    tracker.close()
    assert not tracker.view.is_current
