"""Discovery with real node processes on this namespace's loopback: mDNS, membership, views, events.

Nodes use the test preset (probe 0.1 s, suspicion 1 s, settle 0.05 s) unless a test pins the
LAN timings. Multi-host scenarios (seeds across hosts, partitions) are in
test_discovery_multihost.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import topology_pb2

from node.discovery.identity import SERVICE_TYPE
from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.topology import (
    create,
    instance,
    leader_names,
    names,
    start_all,
    stub,
    time_until,
    view,
    wait_views,
)
from tests.support.waiting import wait_for

MDNS = {"discovery.mdns": "true"}


# --- mDNS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mdns_trio(module_nodes: NodeFactory) -> list[NodeProcess]:
    """Three nodes with mDNS on and no seeds."""
    return start_all(*(create(module_nodes, f"m{i}", settings=MDNS) for i in (1, 2, 3)))


def test_three_nodes_find_each_other_by_mdns_alone_and_agree_on_one_leader(
    mdns_trio: list[NodeProcess],
) -> None:
    views = wait_views(mdns_trio, {"m1", "m2", "m3"})
    leaders = {tuple(leader_names(v)) for v in views.values()}
    assert len(leaders) == 1, f"nodes disagree about the leader: {leaders}"
    (leader,) = leaders.pop()
    earliest = min(views["m1"].instances, key=lambda i: (i.start_time.ToMicroseconds(), i.id))
    assert leader == earliest.name


def _ptr_query(name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 12, 1)


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) DNS name at `offset`; returns it and the offset after it."""
    parts: list[str] = []
    end = None
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            end = end if end is not None else offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return ".".join(parts) + ".", (end if end is not None else offset + 1)
        parts.append(packet[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length


def _ptr_answers(packet: bytes) -> list[str]:
    """PTR targets in a DNS response (a minimal parser: no zeroconf involved)."""
    _, _, questions, answers, _, _ = struct.unpack("!HHHHHH", packet[:12])
    offset = 12
    for _ in range(questions):
        offset = _read_name(packet, offset)[1] + 4
    found = []
    for _ in range(answers):
        _, offset = _read_name(packet, offset)
        rtype, _, _, rdlength = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if rtype == 12:
            found.append(_read_name(packet, offset)[0])
        offset += rdlength
    return found


def test_nodes_answer_a_plain_dns_sd_ptr_query(mdns_trio: list[NodeProcess]) -> None:
    # Given the nodes advertise (registration probes the name for about a second first)
    wait_views(mdns_trio, {"m1", "m2", "m3"})
    # When a standard one-shot mDNS query for the service type's PTR goes out (RFC 6762 5.1:
    # sent from an ephemeral port, answered by unicast), built by hand without zeroconf
    found: set[str] = set()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.settimeout(0.3)
        deadline = time.monotonic() + 10
        while len(found) < 3 and time.monotonic() < deadline:
            sock.sendto(_ptr_query(SERVICE_TYPE), ("224.0.0.251", 5353))
            try:
                while True:
                    found.update(_ptr_answers(sock.recvfrom(9000)[0]))
            except TimeoutError:
                pass
    finally:
        sock.close()
    # Then every node answers with its instance name under _jobmesh._tcp.local.
    assert {n.split(".")[0].rsplit("-", 1)[0] for n in found} == {"m1", "m2", "m3"}, found
    assert all(n.endswith("." + SERVICE_TYPE) for n in found)


# --- failure detection and leaving ---------------------------------------------------------------


def _trio(nodes: NodeFactory, settings: dict[str, object] | None = None) -> list[NodeProcess]:
    a = create(nodes, "a", settings=settings).start()
    rest = start_all(*(create(nodes, n, seeds=[a], settings=settings) for n in ("b", "c")))
    return [a, *rest]


def test_kill_9_is_declared_dead_everywhere_and_a_graceful_leave_is_seen_at_once(nodes: NodeFactory) -> None:
    a, b, c = _trio(nodes)
    wait_views([a, b, c], {"a", "b", "c"})
    sent = time.monotonic()
    c.kill()
    died = time_until([a, b], "c declared dead", lambda v: "c" not in names(v), since=sent)
    b.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    left = time_until([a], "b gone after leaving", lambda v: "b" not in names(v), since=sent)
    assert b.wait_exit() == 0
    # Test preset: probe 0.1 s, suspicion 1 s; a leave waits for no timeout at all
    assert died < 3.0, f"kill -9 took {died:.2f}s to be declared"
    assert left < 0.5, f"a graceful leave took {left:.2f}s"
    assert "did not refute the suspicion: dead" in a.log_text() + b.log_text()


def test_a_node_paused_shorter_than_the_suspicion_timeout_is_not_declared_dead(nodes: NodeFactory) -> None:
    a, b, c = _trio(nodes)
    before = wait_views([a, b, c], {"a", "b", "c"})
    inc = instance(before["a"], "c").incarnation  # type: ignore[union-attr]
    seen: list[topology_pb2.Instance | None] = []

    def observe() -> list[topology_pb2.Instance | None]:
        found = [instance(view(node), "c") for node in (a, b)]
        seen.extend(found)
        return found

    # When c is stopped for 0.8 s (the test preset's suspicion timeout is 1.0 s)
    c.send_signal(signal.SIGSTOP)
    paused_until = time.monotonic() + 0.8
    try:
        while time.monotonic() < paused_until:
            observe()
            time.sleep(0.02)
    finally:
        c.send_signal(signal.SIGCONT)

    # Then it refutes: ALIVE everywhere with a higher incarnation...
    def refuted() -> bool:
        return all(
            i is not None and i.state == topology_pb2.INSTANCE_STATE_ALIVE and i.incarnation > inc
            for i in observe()
        )

    wait_for(refuted, 5.0, "c to refute the suspicion")
    # ...after having been suspected, never dropped: no view changed membership
    after = wait_views([a, b, c], {"a", "b", "c"})
    assert None not in seen, "c disappeared from a view"
    assert topology_pb2.INSTANCE_STATE_SUSPECT in {i.state for i in seen if i}, (
        "the pause raised no suspicion"
    )
    assert {k: v.version for k, v in after.items()} == {k: v.version for k, v in before.items()}


# --- leader ---------------------------------------------------------------------------------------


def test_leader_is_stable_across_joins_and_a_restarted_leader_goes_to_the_back(nodes: NodeFactory) -> None:
    a = create(nodes, "a").start()
    b = create(nodes, "b", seeds=[a]).start()
    assert leader_names(wait_views([a, b], {"a", "b"})["b"]) == ["a"]
    c = create(nodes, "c", seeds=[b]).start()
    views = wait_views([a, b, c], {"a", "b", "c"})
    assert {tuple(leader_names(v)) for v in views.values()} == {("a",)}
    # When the leader restarts, it comes back with a later start time: b leads now
    a.extra_args = (*a.extra_args, "--seed", b.address)
    a.restart()
    views = wait_views([a, b, c], {"a", "b", "c"})
    assert {tuple(leader_names(v)) for v in views.values()} == {("b",)}


# --- properties -------------------------------------------------------------------------------------


def test_instance_properties_reach_every_peer_within_a_second(nodes: NodeFactory) -> None:
    a = create(nodes, "a").start()
    b, c = start_all(
        create(nodes, "b", seeds=[a], extra_args=["--consumer", "demo/**,other/x=consumers:succeed"]),
        create(nodes, "c", seeds=[a], settings={"discovery.properties": "rack=r1"}),
    )
    views = wait_views([a, b, c], {"a", "b", "c"})
    assert instance(views["a"], "b").properties["jobmesh.topics"] == "demo/**,other/x"  # type: ignore[union-attr]
    assert instance(views["a"], "c").properties["rack"] == "r1"  # type: ignore[union-attr]

    sent = time.monotonic()
    response = stub(c).SetInstanceProperties(
        topology_pb2.SetInstancePropertiesRequest(set={"rack": "r2", "load": "0.5"}), timeout=2
    )
    assert response.properties["load"] == "0.5"
    took = time_until(
        [a, b],
        "the new properties of c",
        # the node's own (jobmesh.*) properties, such as jobmesh.admits, aside
        lambda v: (
            {k: p for k, p in instance(v, "c").properties.items() if not k.startswith("jobmesh.")}  # type: ignore[union-attr]
            == {"rack": "r2", "load": "0.5"}
        ),
        since=sent,
    )
    assert took < 1.0, f"properties took {took:.2f}s to reach every peer"

    for bad, message in (({"bad name": "x"}, "invalid"), ({"jobmesh.topics": "x"}, "published by the node")):
        error = rpc_error(
            lambda bad=bad: stub(c).SetInstanceProperties(  # type: ignore[misc]
                topology_pb2.SetInstancePropertiesRequest(set=bad), timeout=2
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()
    error = rpc_error(
        lambda: stub(c).SetInstanceProperties(
            topology_pb2.SetInstancePropertiesRequest(set={"huge": "x" * 20_000}), timeout=2
        )
    )
    assert "limit" in error.details()


# --- duplicate instance id ---------------------------------------------------------------------------


def test_a_copied_data_dir_is_refused_and_the_original_stays(nodes: NodeFactory, tmp_path: Path) -> None:
    a = create(nodes, "a").start()
    b = create(nodes, "b", seeds=[a]).start()
    wait_views([a, b], {"a", "b"})
    # Given b's data dir copied (consistently: b stopped meanwhile) and b running again
    assert b.terminate() == 0
    shutil.copytree(b.data_dir, tmp_path / "b-copy")
    b.start()
    before = wait_views([a, b], {"a", "b"})
    # When the copy starts and joins
    copy = create(nodes, "b-copy", seeds=[a])
    copy.spawn()
    copy.expected_exit = 1
    # Then it refuses to join with a clear error and exits 1
    assert copy.wait_exit(10) == 1
    assert "refuses to join" in copy.log_text()
    assert b.instance_id in copy.log_text()
    # And the original stays in every view, never replaced
    after = wait_views([a, b], {"a", "b"})
    assert instance(after["a"], "b").start_time == instance(before["a"], "b").start_time  # type: ignore[union-attr]


# --- events and the CLI --------------------------------------------------------------------------------


def _watch(node: NodeProcess) -> tuple[list[topology_pb2.TopologyEvent], grpc.Future]:
    events: list[topology_pb2.TopologyEvent] = []
    call = stub(node).WatchTopology(topology_pb2.WatchTopologyRequest())

    def read() -> None:
        try:
            for response in call:
                events.append(response.event)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, name="watch-topology", daemon=True).start()
    return events, call


def test_watch_streams_init_changing_changed_and_properties_changed(nodes: NodeFactory) -> None:
    a = create(nodes, "a").start()
    events, call = _watch(a)
    try:
        wait_for(lambda: events, 5, "TOPOLOGY_INIT")
        b = create(nodes, "b", seeds=[a]).start()
        wait_for(lambda: len(events) >= 3, 5, "CHANGING and CHANGED")
        stub(b).SetInstanceProperties(topology_pb2.SetInstancePropertiesRequest(set={"k": "v"}), timeout=2)
        wait_for(lambda: len(events) >= 4, 5, "PROPERTIES_CHANGED")
        assert b.terminate() == 0
        wait_for(lambda: len(events) >= 6, 5, "CHANGING and CHANGED after the leave")
    finally:
        call.cancel()
    kinds = [topology_pb2.TopologyEventType.Name(e.type).removeprefix("TOPOLOGY_EVENT_TYPE_") for e in events]
    assert kinds == ["INIT", "CHANGING", "CHANGED", "PROPERTIES_CHANGED", "CHANGING", "CHANGED"]
    init, changing, changed, props = events[:4]
    assert not init.HasField("old_view")
    assert names(init.new_view) == {"a"}
    assert not changing.HasField("new_view")
    assert not changing.old_view.current
    assert names(changed.new_view) == {"a", "b"}
    assert changed.new_view.version == changed.old_view.version + 1
    assert instance(props.new_view, "b").properties["k"] == "v"  # type: ignore[union-attr]
    assert names(events[5].new_view) == {"a"}


def test_topology_cli_prints_the_table_json_and_watches(nodes: NodeFactory) -> None:
    a = create(nodes, "a", extra_args=["--cluster", "blue"]).start()
    b = create(nodes, "b", seeds=[a], extra_args=["--consumer", "demo/**=consumers:succeed"]).start()
    wait_views([a, b], {"a", "b"})
    table = b.cli("topology", "--node", b.address)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "ID",
        "ADDRESS",
        "CLUSTER",
        "LEADER",
        "STATE",
        "TOPICS",
        "LAST",
        "HEARD",
    ]
    row_a = next(line for line in lines if line.startswith("a "))
    row_b = next(line for line in lines if line.startswith("b* "))
    assert row_a.split()[1:6] == [a.instance_id, a.address, "blue", "leader", "alive"]
    assert row_b.split()[3:7] == ["-", "leader", "alive", "demo/**"]  # b leads the default cluster
    assert row_b.split()[-1] == "now"
    data = json.loads(a.cli("topology", "--node", a.address, "--json").stdout)
    assert {i["name"] for i in data["instances"]} == {"a", "b"}
    watched = a.cli("topology", "--node", a.address, "--watch", "--events", "1")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.split()[1] == "TOPOLOGY_INIT"
    unreachable = a.cli("topology", "--node", "127.0.0.1:1", "--timeout", "1")
    assert unreachable.returncode == 4
