"""The `discovery` section of the node configuration: mDNS, seeds, cluster label, timings.

LAN defaults meet the discovery targets on a LAN: a joining node is in every view within
1 s, a crashed node is declared dead everywhere within 3 s, a graceful leave is seen within
0.5 s, and a node paused for less than `suspicion_timeout_s` is never declared dead.
`for_tests()` shortens everything and turns mDNS off (tests turn it on where they need it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

from node.discovery.properties import validate_properties
from node.errors import ConfigError, InvalidArgument
from node.ranges import NON_NEGATIVE_S, POSITIVE_S, Range

_LABEL = re.compile(r"[A-Za-z0-9._-]*")
MAX_CLUSTER_LENGTH = 63


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a node finds its peers and keeps its topology view alive."""

    cluster: str = ""
    """Cluster label; instances with the same label form one cluster view with one leader."""
    mdns: bool = True
    """Advertise and browse `_jobmesh._tcp.local.` by mDNS (zeroconf) on the LAN."""
    interfaces: tuple[str, ...] = ()
    """mDNS interfaces, by name (`eth0`) or IPv4 address; empty: the addresses the server is
    bound to (all IPv4 interfaces only when it is bound to all, `0.0.0.0`)."""
    seeds: tuple[str, ...] = ()
    """`host:port` of peers to join where mDNS cannot reach (comma-separated in env/flags)."""
    advertise_addresses: tuple[str, ...] = ()
    """`host` or `host:port` peers should dial; empty: derived from `server.host` and interfaces."""
    properties: dict[str, str] = field(default_factory=dict)
    """Instance properties to publish (TOML table; env/flags `name=value;name=value`)."""
    max_properties_bytes: Annotated[int, Range(2, 1024 * 1024, unit="bytes")] = 16 * 1024
    """Largest encoded size (UTF-8 names plus values) of this node's instance properties."""
    probe_interval_s: Annotated[float, POSITIVE_S] = 0.5
    """Protocol period: each node probes one peer (round robin) per period. Each probe is a gRPC
    call costing about 2 ms of CPU per side, the bulk of an idle node's CPU (docs/benchmarks.md:
    10 nodes, 2.6% of a core at 0.2 s, 1.4% at 0.5 s); a kill -9 is still dead everywhere in
    about 2 s, as some member probes it soon and its refused connection fails the probe."""
    probe_timeout_s: Annotated[float, POSITIVE_S] = 0.25
    """How long a direct probe waits for its answer; indirect probes get twice this."""
    indirect_probes: Annotated[int, Range(0, 16)] = 3
    """Peers asked to probe a peer that did not answer a direct probe."""
    suspicion_timeout_s: Annotated[float, POSITIVE_S] = 1.5
    """A suspected peer that does not refute within this time is declared dead, once two other
    members suspect it on their own (a crash: every prober fails to reach it)."""
    suspicion_max_mult: Annotated[int, Range(1, 64)] = 4
    """A suspicion that no other member confirms runs this many `suspicion_timeout_s`
    (Lifeguard: the one suspecting may be the slow one); 1 turns that off."""
    gossip_interval_s: Annotated[float, POSITIVE_S] = 0.1
    """How often pending membership news is pushed to `gossip_fanout` random peers."""
    gossip_fanout: Annotated[int, Range(1, 64)] = 3
    """Peers each gossip round pushes news to."""
    retransmit_mult: Annotated[int, Range(1, 64)] = 4
    """Each piece of news is sent `retransmit_mult * ceil(log10(members + 1))` times."""
    sync_interval_s: Annotated[float, POSITIVE_S] = 2.0
    """Full member-table exchange with one random peer; also retries seeds and dead peers."""
    settle_delay_s: Annotated[float, NON_NEGATIVE_S] = 0.1
    """Quiet time after a change before the new view is published (batches bursts)."""
    leave_timeout_s: Annotated[float, NON_NEGATIVE_S] = 0.3
    """On shutdown, how long to wait for peers to acknowledge the leave."""
    dead_retention_s: Annotated[float, POSITIVE_S] = 60.0
    """How long dead/left members are remembered (and dead ones retried, to heal partitions)."""
    provider_interval_s: Annotated[float, POSITIVE_S] = 1.0
    """How often Python property providers are re-read (`properties.refresh()` is immediate)."""

    @classmethod
    def lan(cls) -> DiscoveryConfig:
        """LAN defaults."""
        return cls()

    @classmethod
    def for_tests(cls) -> DiscoveryConfig:
        """Short timings, mDNS off (each test turns it on where it needs it)."""
        return cls(
            mdns=False,
            probe_interval_s=0.1,
            probe_timeout_s=0.2,
            suspicion_timeout_s=1.0,
            gossip_interval_s=0.05,
            sync_interval_s=0.5,
            settle_delay_s=0.05,
            leave_timeout_s=0.3,
            dead_retention_s=30.0,
            provider_interval_s=0.2,
        )

    def validate(self) -> None:
        """Raise ConfigError for an invalid label, seed or property (numbers: `node.ranges`)."""
        if not _LABEL.fullmatch(self.cluster) or len(self.cluster) > MAX_CLUSTER_LENGTH:
            raise ConfigError(
                f"discovery.cluster {self.cluster!r} is invalid: use up to {MAX_CLUSTER_LENGTH} "
                "letters, digits, '.', '_' or '-'"
            )
        for seed in self.seeds:
            host, sep, port = seed.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"discovery.seeds: {seed!r} is not HOST:PORT")
        try:
            validate_properties(self.properties, self.max_properties_bytes, "discovery.properties")
        except InvalidArgument as e:
            raise ConfigError(str(e)) from e
