"""The namespace lab: multi-host test networks of network namespaces, inside the suite's private one.

Each host is a network namespace held open by an `unshare --net sleep` process (no `ip netns`,
so no mount namespace is needed); nodes run in it through `nsenter --net`. Hosts plug into
bridges that live in a separate "fabric" namespace; a router namespace joins subnets, so
link-local multicast (mDNS) stays inside one subnet while unicast crosses. Every host also has
a management link straight to the test's namespace (10.78.<n>.0/30, interfaces `jm*`, which
the conftest guard allows), so the test can reach a node even while its data link is cut.

Addresses exist only inside these namespaces: 10.77.<subnet>.0/24 data, 10.78.<n>.0/30
management. Nothing reaches the machine's own network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .waiting import wait_for

ROUTER_HOST = 254


class Namespace:
    """A network namespace kept alive by a `sleep` process in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._process = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"], stdin=subprocess.DEVNULL
        )
        own = os.readlink("/proc/self/ns/net")
        wait_for(lambda: os.readlink(self.path) != own, 5, f"namespace {name}")
        self.sh("ip link set lo up")

    @property
    def pid(self) -> int:
        """The holder's pid (`ip link set X netns PID` moves a link here)."""
        return self._process.pid

    @property
    def path(self) -> str:
        """`/proc/PID/ns/net`, for `nsenter --net=`."""
        return f"/proc/{self._process.pid}/ns/net"

    def sh(self, script: str) -> None:
        """Run a shell script inside the namespace; fail with its output on error."""
        result = subprocess.run(
            ["nsenter", f"--net={self.path}", "--", "sh", "-ec", script],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"in namespace {self.name}: {script!r} failed: {result.stderr.strip()}")

    def close(self) -> None:
        """Let the namespace go (it lives on while node processes still run in it)."""
        self._process.kill()
        self._process.wait()


@dataclass
class Host:
    """A namespace with a data link (`eth0`) on a subnet and a management link to the test."""

    name: str
    netns: Namespace
    address: str
    """Data address (10.77.<subnet>.<n>); what peers use."""
    mgmt_address: str
    """Management address the test dials."""
    port: str = field(default="")
    """The fabric-side port name of its data link (cut it to isolate the host)."""


def require_iptables() -> None:
    """Skip the test unless iptables is installed (the silent drops of `Lab.drop_subnet`)."""
    if shutil.which("iptables") is None and not os.path.exists("/usr/sbin/iptables"):
        pytest.skip("silent packet drop needs iptables: run scripts/setup-netlab (apt-get install iptables)")


class LabUnsupported(Exception):
    """This kernel cannot build the lab (no veth or bridge devices, e.g. in some containers)."""


def check_supported() -> None:
    """Raise LabUnsupported unless veth pairs and bridges can be created here."""
    probe = Namespace("probe")
    try:
        probe.sh("ip link add jmprobe0 type veth peer name jmprobe1 && ip link add jmprobe2 type bridge")
    except RuntimeError as e:
        if "Unknown device type" in str(e) or "not supported" in str(e).lower():
            raise LabUnsupported(f"multi-host tests need veth and bridge devices: {e}") from e
        raise
    finally:
        probe.close()


class Lab:
    """Subnets (bridges), hosts on them, and a router joining the subnets."""

    def __init__(self) -> None:
        self.fabric = Namespace("fabric")
        self.router = Namespace("router")
        self.router.sh("sysctl -qw net.ipv4.ip_forward=1")
        self.hosts: list[Host] = []
        self._subnets: set[int] = set()
        self._links = 0

    def _veth(self, a: tuple[Namespace | None, str], b: tuple[Namespace, str]) -> None:
        """A veth pair with one end in `a` (None: the test's namespace) and the other in `b`."""
        self._links += 1
        tmp_a, tmp_b = f"jmt{self._links}a", f"jmt{self._links}b"
        commands = [["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b]]
        commands.append(["ip", "link", "set", tmp_b, "netns", str(b[0].pid)])
        if a[0] is not None:
            commands.append(["ip", "link", "set", tmp_a, "netns", str(a[0].pid)])
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        b[0].sh(f"ip link set {tmp_b} name {b[1]} && ip link set {b[1]} up")
        if a[0] is not None:
            a[0].sh(f"ip link set {tmp_a} name {a[1]} && ip link set {a[1]} up")
        else:
            subprocess.run(["ip", "link", "set", tmp_a, "name", a[1]], check=True)
            subprocess.run(["ip", "link", "set", a[1], "up"], check=True)

    def _subnet(self, subnet: int) -> None:
        if subnet in self._subnets:
            return
        self._subnets.add(subnet)
        bridge = f"br{subnet}"
        self.fabric.sh(f"ip link add {bridge} type bridge && ip link set {bridge} up")
        self._veth((self.router, f"leg{subnet}"), (self.fabric, f"r{subnet}"))
        self.fabric.sh(f"ip link set r{subnet} master {bridge}")
        self.router.sh(f"ip addr add 10.77.{subnet}.{ROUTER_HOST}/24 dev leg{subnet}")

    def add_host(self, name: str, subnet: int) -> Host:
        """A new host on `subnet` (10.77.<subnet>.0/24), routed to the other subnets."""
        self._subnet(subnet)
        index = len(self.hosts) + 1
        netns = Namespace(name)
        port = f"h{index}"
        self._veth((netns, "eth0"), (self.fabric, port))
        self.fabric.sh(f"ip link set {port} master br{subnet}")
        address = f"10.77.{subnet}.{index}"
        netns.sh(
            f"ip addr add {address}/24 dev eth0 && ip route add default via 10.77.{subnet}.{ROUTER_HOST}"
        )
        mgmt = f"jmm{index}"
        self._veth((None, mgmt), (netns, "mg0"))
        subprocess.run(["ip", "addr", "add", f"10.78.{index}.1/30", "dev", mgmt], check=True)
        netns.sh(f"ip addr add 10.78.{index}.2/30 dev mg0")
        host = Host(name, netns, address, f"10.78.{index}.2", port)
        self.hosts.append(host)
        return host

    def drop_subnet(self, subnet: int) -> None:
        """Make the router drop every packet to and from `subnet`, silently: no RST, no ICMP,
        every link stays up (a cable pulled beyond the switch, a frozen middlebox), so only
        keepalive or a heartbeat can tell. Needs iptables (scripts/setup-netlab; see
        `require_iptables`)."""
        self.router.sh(
            f"iptables -A FORWARD -i leg{subnet} -j DROP && iptables -A FORWARD -o leg{subnet} -j DROP"
        )

    def undrop_subnet(self, subnet: int) -> None:
        """Undo `drop_subnet`."""
        self.router.sh(
            f"iptables -D FORWARD -i leg{subnet} -j DROP && iptables -D FORWARD -o leg{subnet} -j DROP"
        )

    def cut_subnet(self, subnet: int) -> None:
        """Take the router's leg into `subnet` down: that subnet is cut off from the others."""
        self.router.sh(f"ip link set leg{subnet} down")

    def heal_subnet(self, subnet: int) -> None:
        """Undo `cut_subnet` (the leg's address and routes come back with it)."""
        self.router.sh(f"ip link set leg{subnet} up")

    def cut_host(self, host: Host) -> None:
        """Take the bridge port of `host`'s data link down: it is cut off from every other host,
        its subnet's included (a partition inside one subnet), while its management link stays up."""
        self.fabric.sh(f"ip link set {host.port} down")

    def heal_host(self, host: Host) -> None:
        """Undo `cut_host`."""
        self.fabric.sh(f"ip link set {host.port} up")

    def close(self) -> None:
        """Remove the management links and let the namespaces go."""
        for index in range(1, len(self.hosts) + 1):
            subprocess.run(["ip", "link", "del", f"jmm{index}"], check=False, capture_output=True)
        for host in self.hosts:
            host.netns.close()
        self.router.close()
        self.fabric.close()


@contextlib.contextmanager
def lab_or_skip() -> Iterator[Lab]:
    """A Lab for the duration of the block; skips the test where the kernel cannot build one.

    Tests take it as the `lab` (per test) or `module_lab` (per module) fixture of the conftest.
    """
    try:
        check_supported()
    except LabUnsupported as e:
        pytest.skip(str(e))
    net = Lab()
    try:
        yield net
    finally:
        net.close()
