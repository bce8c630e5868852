"""The start-up banner tells the truth: the address the node is bound to, what clients on its
host dial, and the addresses it advertises to peers, checked against the real socket and
against what peers are told (GetTopology) and can dial."""

from __future__ import annotations

import re
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.netlab import Namespace
from tests.support.topology import view
from tests.support.waiting import wait_for

BANNER = re.compile(r"^jobmesh node (\S+) serving: .*$", re.MULTILINE)
TCP_LISTEN = "0A"
NODE_ADDRESS = "10.79.1.2"
TEST_SIDE_ADDRESS = "10.79.1.1"
TEST_SIDE_LINK = "jmbanner0"  # `jm*`: a link the conftest's namespace guard allows


def banner(node: NodeProcess) -> str:
    """The node's start-up line from its log."""
    found = wait_for(lambda: BANNER.search(node.log_text()), what="the start-up banner")
    return found.group(0)


def listening_hosts(pid: int, port: int) -> set[IPv4Address | IPv6Address]:
    """Addresses the process's network namespace has a TCP socket listening on at `port`."""
    hosts: set[IPv4Address | IPv6Address] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == TCP_LISTEN and int(port_hex, 16) == port:
                # The kernel prints each 32-bit word in host order (little-endian here).
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
                host = ip_address(raw)
                mapped = host.ipv4_mapped if isinstance(host, IPv6Address) else None
                hosts.add(mapped or host)  # gRPC listens on IPv4 through v4-mapped IPv6 sockets
    return hosts


def local_endpoints(node: NodeProcess) -> list[str]:
    """The endpoints the node tells peers (its own instance in its topology view)."""
    return next(list(i.endpoints) for i in view(node).instances if i.local)


def test_a_node_bound_to_every_interface_says_so_and_advertises_its_routable_address(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a host (namespace) with loopback and one routable address, linked to the test
    host = Namespace("banner")
    try:
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                TEST_SIDE_LINK,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                str(host.pid),
            ],
            check=True,
        )
        subprocess.run(["ip", "addr", "add", f"{TEST_SIDE_ADDRESS}/30", "dev", TEST_SIDE_LINK], check=True)
        subprocess.run(["ip", "link", "set", TEST_SIDE_LINK, "up"], check=True)
        host.sh(f"ip addr add {NODE_ADDRESS}/30 dev eth0 && ip link set eth0 up")

        # When a node there listens on 0.0.0.0 (the default outside the test preset)
        node = nodes.start("wide", extra_args=["--host", "0.0.0.0"], netns=host.path, dial_host=NODE_ADDRESS)
        assert node.process is not None
        port = int(str(node.info["port"]))

        # Then the banner names the wildcard bind, the loopback address for local clients,
        # and the routable address as the one peers are told
        line = banner(node)
        name = BANNER.search(line).group(1)  # type: ignore[union-attr]
        assert line == (
            f"jobmesh node {name} serving: bound to 0.0.0.0:{port} (clients on this host dial "
            f"127.0.0.1:{port}), advertised to peers as {NODE_ADDRESS}:{port}"
        )
        # And that is the truth: the socket listens on every interface (gRPC makes 0.0.0.0 a
        # dual-stack [::] socket, which takes IPv4 on every interface too),
        listening = listening_hosts(node.process.pid, port)
        assert listening, "no listening socket"
        assert all(host.is_unspecified for host in listening), listening
        # peers are told exactly the advertised address, and it answers from another host
        assert local_endpoints(node) == [f"{NODE_ADDRESS}:{port}"]
        assert node.info["bound"] == f"0.0.0.0:{port}"
        assert node.info["advertised"] == [f"{NODE_ADDRESS}:{port}"]
        node.terminate()
    finally:
        subprocess.run(["ip", "link", "del", TEST_SIDE_LINK], check=False, capture_output=True)
        host.close()


def test_a_node_bound_to_one_address_advertises_what_it_is_told_to(nodes: NodeFactory) -> None:
    # Given a node on loopback only that must advertise a NAT address to its peers
    node = nodes.start(
        "narrow",
        extra_args=["--host", "127.0.0.1"],
        settings={"discovery.advertise_addresses": "192.0.2.7:9000"},
    )
    assert node.process is not None
    port = int(str(node.info["port"]))
    name = BANNER.search(banner(node)).group(1)  # type: ignore[union-attr]
    # Then the banner says both, and both are what the node really does
    assert banner(node) == (
        f"jobmesh node {name} serving: bound to 127.0.0.1:{port} (clients on this host dial "
        f"127.0.0.1:{port}), advertised to peers as 192.0.2.7:9000"
    )
    assert listening_hosts(node.process.pid, port) == {ip_address("127.0.0.1")}
    assert local_endpoints(node) == ["192.0.2.7:9000"]
