"""Who a node is on the network: id, name, start time, endpoints, cluster, protocol version.

The instance id is persisted in the journal (a copied data dir therefore carries it along;
`membership` detects two live nodes with one id). The start time orders leadership; a
restarted node gets a new one and goes to the back.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr
from jobmesh.peer.v1 import membership_pb2

from node.errors import ConfigError, InvalidArgument

PROTOCOL_VERSION = 1
SERVICE_TYPE = "_jobmesh._tcp.local."
"""The DNS-SD service type nodes advertise and browse."""
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class InstanceInfo:
    """One run of a node, as peers see it. Fixed for the lifetime of the process."""

    id: str
    name: str
    start_time_us: int
    endpoints: tuple[str, ...]
    cluster: str = ""
    protocol_version: int = PROTOCOL_VERSION

    @property
    def address(self) -> str:
        """The preferred `host:port` to dial."""
        return self.endpoints[0]

    @property
    def leader_key(self) -> tuple[int, str]:
        """Sort key of the leader order: earliest start first, ties by id."""
        return (self.start_time_us, self.id)

    def to_proto(self) -> membership_pb2.MemberInfo:
        """The wire form."""
        return membership_pb2.MemberInfo(
            id=self.id,
            name=self.name,
            start_time_us=self.start_time_us,
            endpoints=list(self.endpoints),
            cluster=self.cluster,
            protocol_version=self.protocol_version,
        )

    @classmethod
    def from_proto(cls, proto: membership_pb2.MemberInfo, field: str = "info") -> InstanceInfo:
        """Decode and check a peer's MemberInfo; raises InvalidArgument when it is unusable."""
        if not proto.id:
            raise InvalidArgument(f"{field}.id is empty")
        if not proto.endpoints:
            raise InvalidArgument(f"{field}.endpoints is empty; a member needs an address")
        for endpoint in proto.endpoints:
            split_endpoint(endpoint, f"{field}.endpoints")
        return cls(
            id=proto.id,
            name=proto.name,
            start_time_us=proto.start_time_us,
            endpoints=tuple(proto.endpoints),
            cluster=proto.cluster,
            protocol_version=proto.protocol_version,
        )


def format_endpoint(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_endpoint(endpoint: str, field: str = "endpoint") -> tuple[str, int]:
    """(host, port) of `host:port` / `[v6]:port`; raises InvalidArgument."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{field}: {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def interface_addresses(wanted: Sequence[str] = ()) -> list[str]:
    """IPv4 addresses of the named interfaces (or given addresses); all interfaces when empty.

    Raises ConfigError for a name or address this machine does not have.
    """
    adapters = ifaddr.get_adapters()
    by_name: dict[str, list[str]] = {}
    for adapter in adapters:
        for ip in adapter.ips:
            if ip.is_IPv4:
                by_name.setdefault(adapter.nice_name, []).append(str(ip.ip))
    every = [address for addresses in by_name.values() for address in addresses]
    if not wanted:
        return every
    found: list[str] = []
    for item in wanted:
        if item in by_name:
            found += by_name[item]
        elif item in every:
            found.append(item)
        else:
            raise ConfigError(
                f"discovery.interfaces: {item!r} is neither an interface with an IPv4 address nor an "
                f"address of this machine (have: {', '.join(sorted(by_name)) or 'none'})"
            )
    return found


def local_endpoints(
    server_host: str, port: int, advertise: Sequence[str] = (), interfaces: Sequence[str] = ()
) -> tuple[str, ...]:
    """The `host:port` addresses peers should dial, preferred first.

    `advertise` wins; a node bound to one address advertises it; a node bound to all
    interfaces advertises their non-loopback IPv4 addresses (loopback only if that is all).
    """
    if advertise:
        endpoints = []
        for item in advertise:
            host, sep, maybe_port = item.rpartition(":")
            if sep and maybe_port.isdigit() and (host.startswith("[") or ":" not in host):
                endpoints.append(format_endpoint(host, int(maybe_port)))
            else:
                endpoints.append(format_endpoint(item, port))
        return tuple(endpoints)
    if server_host not in _WILDCARDS:
        return (format_endpoint(server_host, port),)
    addresses = interface_addresses(interfaces)
    routable = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return tuple(format_endpoint(a, port) for a in (routable or addresses or ["127.0.0.1"]))


def mdns_addresses(server_host: str, interfaces: Sequence[str] = ()) -> list[str]:
    """The IPv4 addresses mDNS advertises and browses on: the named `interfaces`, else the ones
    the server is bound to (every interface only for a wildcard bind), so a node started with
    `--host 127.0.0.1` shows itself on loopback and nowhere else.

    Raises ConfigError for a bound host without an IPv4 address (set discovery.interfaces).
    """
    if interfaces or server_host in _WILDCARDS:
        return interface_addresses(interfaces)
    host = server_host.strip("[]")
    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        found = []
    addresses = list(dict.fromkeys(str(entry[4][0]) for entry in found))
    if not addresses:
        raise ConfigError(
            f"mDNS: the server is bound to {server_host!r}, which has no IPv4 address; "
            "name the interfaces (discovery.interfaces) or turn mDNS off (discovery.mdns = false)"
        )
    return addresses
