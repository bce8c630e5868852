"""The membership protocol's logic on an in-memory network: fast, no sockets, real timers.

Each test runs real MembershipProtocols on the test's event loop, joined by MemoryNetwork
(which can crash, pause and partition them). The real gRPC transport and real node
processes are covered in test_discovery_nodes.py and test_discovery_multihost.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from node.discovery.config import DiscoveryConfig
from node.discovery.identity import InstanceInfo
from node.discovery.membership import MemberRecord, PeerState
from node.discovery.memory import MemoryNetwork
from node.discovery.messages import Gossip, Sync, SyncReply
from node.discovery.protocol import MembershipProtocol
from node.errors import Unavailable
from node.instance import now_us
from tests.support.waiting import async_wait_for

FAST = DiscoveryConfig(
    mdns=False,
    probe_interval_s=0.02,
    probe_timeout_s=0.03,
    suspicion_timeout_s=0.4,
    gossip_interval_s=0.01,
    sync_interval_s=0.1,
    leave_timeout_s=0.1,
)
TIMEOUT_S = 5.0


class Cluster:
    """Protocols on one MemoryNetwork, addressed by name."""

    def __init__(self) -> None:
        self.network = MemoryNetwork()
        self.nodes: dict[str, MembershipProtocol] = {}
        self.history: dict[str, list[tuple[str, PeerState]]] = {}

    async def add(
        self,
        name: str,
        seeds: tuple[str, ...] = (),
        instance_id: str | None = None,
        address: str | None = None,
        config: DiscoveryConfig = FAST,
    ) -> MembershipProtocol:
        address = address or name
        start = now_us()
        info = InstanceInfo(instance_id or str(uuid.uuid4()), name, start, (f"{address}:1",))
        history = self.history.setdefault(name, [])
        protocol: MembershipProtocol

        def changed() -> None:
            for member in protocol.table:
                history.append((member.record.info.name, member.record.state))

        protocol = MembershipProtocol(
            config,
            MemberRecord(info, start, PeerState.ALIVE),
            self.network.transport(f"{address}:1"),
            changed,
            tuple(f"{s}:1" for s in seeds),
        )
        self.network.attach(f"{address}:1", protocol)
        self.nodes[name] = protocol
        await protocol.start()
        return protocol

    def view(self, name: str) -> set[str]:
        """Names this node has in its view (itself included)."""
        protocol = self.nodes[name]
        return {protocol.local.info.name} | {m.record.info.name for m in protocol.table.live()}

    def state(self, name: str, of: str) -> PeerState | None:
        for member in self.nodes[name].table:
            if member.record.info.name == of:
                return member.record.state
        return None

    async def converged(self, names: set[str], within_s: float = TIMEOUT_S) -> None:
        await async_wait_for(
            lambda: all(self.view(n) == names for n in names),
            what=f"views of {sorted(names)}",
            timeout=within_s,
        )

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.nodes.values()))


def _run(test: Callable[[Cluster], object]) -> Callable[[], object]:
    """Async fixtures are not supported by the suite's runner: build the cluster in the test."""

    async def wrapper() -> None:
        c = Cluster()
        try:
            await test(c)  # type: ignore[misc]
        finally:
            await c.close()

    wrapper.__name__ = test.__name__
    wrapper.__doc__ = test.__doc__
    return wrapper


@_run
async def test_members_learn_everyone_through_a_chain_of_seeds(c: Cluster) -> None:
    # Given a knows nobody, b knows a, c knows b
    await c.add("a")
    await c.add("b", seeds=("a",))
    await c.add("c", seeds=("b",))
    # Then all three end up knowing all three
    await c.converged({"a", "b", "c"})


@_run
async def test_gossip_sleeps_while_there_is_no_news_and_pushes_news_at_once(c: Cluster) -> None:
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c"})
    pushes: list[str] = []
    for name, protocol in c.nodes.items():
        handle = protocol.handle_gossip

        async def counted(message: Gossip, handle: Any = handle, name: str = name) -> Any:
            pushes.append(name)
            return await handle(message)

        protocol.handle_gossip = counted  # type: ignore[method-assign]
    # Given every member's news sent as often as it is due
    await async_wait_for(lambda: all(not len(p.broadcasts) for p in c.nodes.values()), what="no news left")
    pushes.clear()
    # Then a quiet cluster pushes nothing, for many gossip intervals
    await asyncio.sleep(30 * FAST.gossip_interval_s)
    assert pushes == []
    # And news (new properties of a) is pushed by the next round and reaches everyone
    c.nodes["a"].set_local_properties({"zone": "b"})
    await async_wait_for(lambda: bool(pushes), what="a gossip push", timeout=10 * FAST.gossip_interval_s)
    await async_wait_for(
        lambda: all(
            m.record.properties.get("zone") == "b"
            for n in ("b", "c")
            for m in c.nodes[n].table
            if m.record.info.name == "a"
        ),
        what="a's new properties everywhere",
    )


@_run
async def test_a_crashed_member_is_suspected_then_declared_dead_everywhere(c: Cluster) -> None:
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c"})
    c.network.crash("c:1")
    await async_wait_for(
        lambda: c.state("a", "c") is PeerState.DEAD and c.state("b", "c") is PeerState.DEAD, what="c dead"
    )
    assert ("c", PeerState.SUSPECT) in c.history["a"] + c.history["b"]  # suspicion came first


@_run
async def test_a_member_paused_shorter_than_the_suspicion_timeout_is_not_declared_dead(c: Cluster) -> None:
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c"})
    inc = c.nodes["c"].local.incarnation
    c.network.pause("c:1")
    await async_wait_for(
        lambda: c.state("a", "c") is PeerState.SUSPECT or c.state("b", "c") is PeerState.SUSPECT,
        what="suspicion",
    )
    c.network.resume("c:1")
    # c refutes: a higher incarnation, ALIVE everywhere, and never DEAD on the way
    await async_wait_for(
        lambda: c.state("a", "c") is PeerState.ALIVE and c.state("b", "c") is PeerState.ALIVE, what="refuted"
    )
    assert c.nodes["c"].local.incarnation > inc
    await asyncio.sleep(FAST.suspicion_timeout_s)  # outlive any suspicion timer still running
    assert ("c", PeerState.DEAD) not in c.history["a"] + c.history["b"]


@_run
async def test_a_suspected_member_refutes_as_soon_as_it_hears_of_it(c: Cluster) -> None:
    a = await c.add("a")
    b = await c.add("b", seeds=("a",))
    await c.converged({"a", "b"})
    suspicion = b.local.with_state(PeerState.SUSPECT)
    await b.handle_gossip(Gossip(a.local, (suspicion,)))
    assert b.local.incarnation == suspicion.incarnation + 1
    assert b.local.state is PeerState.ALIVE


SLOW_ROUNDS = replace(FAST, probe_interval_s=30.0, sync_interval_s=30.0, gossip_fanout=1)
"""A big cluster's pace: a member is probed (or synced with) seldom against the suspicion
timeout, and news reaches few members per round."""


async def _members(c: Cluster, size: int, config: DiscoveryConfig = FAST) -> list[str]:
    """`size` members n0, n1, ... joined through n0, converged; their names."""
    names = [f"n{i}" for i in range(size)]
    for name in names:
        await c.add(name, seeds=("n0",) if name != "n0" else (), config=config)
    await c.converged(set(names))
    return names


async def _quiet_cluster(c: Cluster, size: int) -> list[str]:
    """`size` members at SLOW_ROUNDS, converged, with no news left to send."""
    names = await _members(c, size, SLOW_ROUNDS)
    await async_wait_for(lambda: all(not len(p.broadcasts) for p in c.nodes.values()), what="no news left")
    return names


async def _tell_all_but_the_last(c: Cluster, names: list[str], *records: MemberRecord) -> None:
    """Gossip `records` to every member but the last of `names`, from n0 (to n0 from n1)."""
    for name in names[:-1]:
        sender = c.nodes["n1" if name == "n0" else "n0"].local
        await c.nodes[name].handle_gossip(Gossip(sender, records))


@_run
async def test_a_refutation_reaches_every_suspecting_member_first_hand_before_its_suspicion_runs_out(
    c: Cluster,
) -> None:
    # Given eight members that probe and sync seldom, and gossip to one member per round
    names = await _quiet_cluster(c, 8)
    # And a member too busy to answer a Sync: hearsay of its refutation cannot be confirmed
    suspect = c.nodes["n7"]

    async def overloaded(message: Sync) -> SyncReply:
        raise Unavailable("overloaded")

    suspect.handle_sync = overloaded  # type: ignore[method-assign]
    others = [c.nodes[n] for n in names[:-1]]
    # When every other member hears that n7 is suspect (from n0; n0 from n1)
    suspicion = suspect.local.with_state(PeerState.SUSPECT)
    await _tell_all_but_the_last(c, names, suspicion)
    assert all(c.state(n, "n7") is PeerState.SUSPECT for n in names[:-1])
    # And n7 hears of it and refutes
    await suspect.handle_gossip(Gossip(c.nodes["n0"].local, (suspicion,)))
    refuted = suspect.local.incarnation
    # Then every member has n7 ALIVE at its new incarnation before the suspicion timeout
    await async_wait_for(
        lambda: all(
            (m := p.table.get(suspect.local.id)) is not None
            and m.record.state is PeerState.ALIVE
            and m.record.incarnation == refuted
            for p in others
        ),
        what="the refutation everywhere",
        timeout=FAST.suspicion_timeout_s / 2,
    )
    # And nobody ever declared it dead
    await asyncio.sleep(FAST.suspicion_timeout_s)
    assert all(("n7", PeerState.DEAD) not in c.history[n] for n in names[:-1])


@_run
async def test_refutations_in_a_burst_are_pushed_to_every_member_once_per_probe_interval(c: Cluster) -> None:
    # Given four members, and n3 counting what it pushes to every member at once
    await _quiet_cluster(c, 4)
    suspect = c.nodes["n3"]
    pushed: list[MemberRecord] = []
    suspect._push_to_all = pushed.append  # type: ignore[method-assign, assignment]
    # When it refutes three suspicions within one probe interval
    for _ in range(3):
        await suspect.handle_gossip(
            Gossip(c.nodes["n0"].local, (suspect.local.with_state(PeerState.SUSPECT),))
        )
    # Then it refuted each (three incarnations up), and pushed only the first to everyone
    assert [r.incarnation for r in pushed] == [suspect.local.incarnation - 2]
    assert suspect.table.counters.refutations == 3


@_run
async def test_a_suspicion_only_one_member_holds_runs_longer_and_the_suspect_refutes_in_time(
    c: Cluster,
) -> None:
    # Given five members, and n4 suspected by n0 alone (n0 may be the slow one)
    names = await _quiet_cluster(c, 5)
    suspect = c.nodes["n4"]
    c.network.pause("n4:1")  # gossip of the suspicion does not reach it meanwhile
    suspicion = suspect.local.with_state(PeerState.SUSPECT, suspected_by=c.nodes["n0"].local.id)
    # (and by suspectors that are no members: what a lying peer could make up)
    forged = [replace(suspicion, suspected_by=f"made-up-{i}") for i in range(3)]
    await _tell_all_but_the_last(c, names, suspicion, *forged)
    # When n4 hears of it only after twice the shortest suspicion timeout
    await asyncio.sleep(2 * FAST.suspicion_timeout_s)
    assert {n: c.state(n, "n4") for n in names[:-1]} == dict.fromkeys(names[:-1], PeerState.SUSPECT)
    c.network.resume("n4:1")
    await suspect.handle_gossip(Gossip(c.nodes["n0"].local, (suspicion,)))
    # Then its refutation still makes it ALIVE everywhere, and nobody declared it dead
    await async_wait_for(
        lambda: all(c.state(n, "n4") is PeerState.ALIVE for n in names[:-1]), what="the refutation everywhere"
    )
    assert all(("n4", PeerState.DEAD) not in c.history[n] for n in names[:-1])


@_run
async def test_a_suspicion_that_two_more_members_confirm_runs_the_shortest_timeout(c: Cluster) -> None:
    # Given five members, and n4 suspected by n0, then by n1 and n2 on their own
    names = await _quiet_cluster(c, 5)
    c.network.pause("n4:1")  # it cannot refute
    loop = asyncio.get_running_loop()
    started = loop.time()
    for suspector in ("n0", "n1", "n2"):
        record = c.nodes["n4"].local.with_state(PeerState.SUSPECT, suspected_by=c.nodes[suspector].local.id)
        await c.nodes["n3"].handle_gossip(Gossip(c.nodes[suspector].local, (record,)))
    # Then n3 declares it dead after the shortest timeout, not the longest, and everyone learns it
    shortest = SLOW_ROUNDS.suspicion_timeout_s
    await async_wait_for(
        lambda: all(c.state(n, "n4") is PeerState.DEAD for n in names[:-1]),
        what="n4 dead everywhere",
        timeout=(shortest + shortest * SLOW_ROUNDS.suspicion_max_mult) / 2,
    )
    assert loop.time() - started >= SLOW_ROUNDS.suspicion_timeout_s


@_run
async def test_a_crash_in_a_cluster_big_enough_to_confirm_is_declared_dead_before_the_longest_timeout(
    c: Cluster,
) -> None:
    # Given six members probing often (each suspicion is soon confirmed by other probers)
    names = await _members(c, 6)
    loop = asyncio.get_running_loop()
    crashed = loop.time()
    c.network.crash("n5:1")
    # Then it is dead everywhere sooner than an unconfirmed suspicion would run
    await async_wait_for(
        lambda: all(c.state(n, "n5") is PeerState.DEAD for n in names[:-1]), what="n5 dead everywhere"
    )
    assert loop.time() - crashed < FAST.suspicion_timeout_s * FAST.suspicion_max_mult


@_run
async def test_only_members_in_the_view_count_towards_the_confirmations_a_suspicion_can_get(
    c: Cluster,
) -> None:
    # Given four members: a suspicion of one can be confirmed by the two others
    await _quiet_cluster(c, 4)
    n0, n1 = c.nodes["n0"], c.nodes["n1"]

    def suspected(name: str) -> int:
        """The confirmations n0 waits for once n1 tells it `name` is suspect."""
        record = c.nodes[name].local.with_state(PeerState.SUSPECT, suspected_by=n1.local.id)
        n0._merge(record, source=n1.local.id)
        return n0._suspicions[record.id].needed

    assert suspected("n2") == 2
    # When n3 is gone (a tombstone in the table) and n2 is suspected again at a new incarnation
    n0._merge(c.nodes["n3"].local.with_state(PeerState.DEAD), source=n1.local.id)
    c.nodes["n2"].table.bump_local()
    n0._merge(c.nodes["n2"].local, source=c.nodes["n2"].local.id)
    # Then only n1 could confirm it: the suspicion runs the shortest timeout
    assert suspected("n2") == 0


@_run
async def test_a_node_cut_off_stretches_its_probe_timings_and_recovers_when_its_probes_are_answered(
    c: Cluster,
) -> None:
    # Given three members in one view, all healthy (Lifeguard's local health score 0)
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c"})
    await asyncio.sleep(10 * FAST.probe_interval_s)
    assert {n: p.health.score for n, p in c.nodes.items()} == {"a": 0, "b": 0, "c": 0}

    # When a's links fail (the helpers it asks do not answer either: the fault looks like a's own)
    c.network.cut("a:1", "b:1")
    c.network.cut("a:1", "c:1")
    await async_wait_for(lambda: c.nodes["a"].health.score >= 2, what="a's local health to drop")
    a = c.nodes["a"]
    assert a.table.counters.local_health == a.health.score
    assert a._probe_interval() == FAST.probe_interval_s * (a.health.score + 1)

    # Then once the link heals, its probes are answered and its timings are the configured ones
    c.network.heal()
    await async_wait_for(lambda: a.health.score == 0, what="a's local health to recover")
    assert a._probe_interval() == FAST.probe_interval_s
    await c.converged({"a", "b", "c"})


@_run
async def test_a_leaving_member_is_gone_from_every_view_at_once(c: Cluster) -> None:
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c"})
    await c.nodes["c"].leave()
    # leave() returns after every member acknowledged: no waiting for gossip
    assert c.state("a", "c") is PeerState.LEFT
    assert c.state("b", "c") is PeerState.LEFT


@_run
async def test_a_partition_splits_the_views_and_its_heal_merges_them(c: Cluster) -> None:
    for name, seeds in (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("a",))):
        await c.add(name, seeds)
    await c.converged({"a", "b", "c", "d"})
    for left in ("a", "b"):
        for right in ("c", "d"):
            c.network.cut(f"{left}:1", f"{right}:1")
    await c.converged({"a", "b"})
    await c.converged({"c", "d"})
    c.network.heal()
    await c.converged({"a", "b", "c", "d"})


@_run
async def test_a_restarted_member_replaces_its_previous_run(c: Cluster) -> None:
    await c.add("a")
    old = await c.add("b", seeds=("a",))
    await c.converged({"a", "b"})
    c.network.crash("b:1")
    await old.stop()
    new = await c.add("b", seeds=("a",), instance_id=old.local.id, address="b2")
    await async_wait_for(
        lambda: (
            (m := c.nodes["a"].table.get(old.local.id)) is not None
            and m.record.info.start_time_us == new.local.info.start_time_us
            and m.record.state is PeerState.ALIVE
        ),
        what="the new run of b in a's table",
    )


@_run
async def test_a_second_live_member_with_the_same_id_is_refused_and_the_first_stays(c: Cluster) -> None:
    await c.add("a")
    first = await c.add("b", seeds=("a",))
    await c.converged({"a", "b"})
    copy = await c.add("b-copy", seeds=("a",), instance_id=first.local.id)
    failure = await asyncio.wait_for(copy.wait_failure(), TIMEOUT_S)
    assert "refuses to join" in str(failure)
    assert first.local.id in str(failure)
    assert not first.failed
    await asyncio.sleep(FAST.suspicion_timeout_s)
    member = c.nodes["a"].table.get(first.local.id)
    assert member is not None
    assert member.record.info.name == "b"
    assert member.record.state is PeerState.ALIVE
