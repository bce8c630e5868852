"""A node shows itself only where it listens: bound to one address, mDNS advertises and browses
on that address's interface, never on the host's other interfaces (netns hosts, netlab.py)."""

from __future__ import annotations

import socket
import time

from tests.support.launcher import NodeFactory
from tests.support.netlab import Lab
from tests.support.waiting import wait_for

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
PORT = 7710


def test_a_node_bound_to_one_address_announces_itself_on_that_interface_only(
    lab: Lab, nodes: NodeFactory
) -> None:
    # Given two hosts on one subnet; each also has a second interface (its management link,
    # whose other end is in this test's namespace), and the test listens for mDNS there
    h1, h2 = lab.add_host("h1", 1), lab.add_host("h2", 1)
    index = lab.hosts.index(h1) + 1
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("", MDNS_PORT))
    membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton(f"10.78.{index}.1")
    listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    listener.settimeout(0.2)
    heard: list[tuple[str, bytes]] = []
    try:
        # When a node on each starts bound to its data address only (no discovery.interfaces)
        started = []
        for host in (h1, h2):
            node = nodes.create(
                host.name,
                settings={"discovery.mdns": "true"},
                extra_args=["--name", host.name, "--host", host.address, "--port", str(PORT)],
                netns=host.netns.path,
                dial_host=host.mgmt_address,
            )
            node.start()
            started.append(node)
        a, b = started

        # Then they find each other by mDNS on the data link (no seeds) ...
        # (read from their logs: bound to the data address only, they cannot be dialled from here)
        wait_for(
            lambda: "member h2" in a.log_text() and "member h1" in b.log_text(),
            15,
            "h1 and h2 to meet by mDNS",
        )
        deadline = time.monotonic() + 2.0  # announcements repeat: listen a little longer
        while time.monotonic() < deadline:
            try:
                data, (source, _) = listener.recvfrom(9000)
            except TimeoutError:
                continue
            heard.append((source, data))
    finally:
        listener.close()
    # ... and nothing of it reaches the management link
    assert not [s for s, data in heard if b"_jobmesh" in data], heard
    assert f"on {h1.address}" in a.log_text()
    assert "all interfaces" not in a.log_text()
