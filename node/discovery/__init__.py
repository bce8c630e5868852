"""Discovery: finding peers (mDNS, seeds), keeping them alive (membership), and the topology view.

The data path: `identity` (who this node is) -> `mdns` (peers on the LAN) -> `protocol`
(SWIM membership over gRPC, through `peers`, with `membership` rules, `gossip` queue and
`messages`) -> `view` (snapshots, cluster views, leaders) -> `events` (settled views, Sling
events). `properties` are this node's instance properties; `topology.Topology` ties it all
together and is what the rest of the node uses (`node.topology`).
"""

from node.discovery.config import DiscoveryConfig
from node.discovery.events import (
    EventStream,
    Subscription,
    TopologyEvent,
    TopologyEventType,
    TopologyListener,
)
from node.discovery.identity import InstanceInfo
from node.discovery.membership import PeerState
from node.discovery.properties import TOPICS_PROPERTY, InstanceProperties, PropertyProvider, parse_topics
from node.discovery.topology import Topology
from node.discovery.view import ClusterView, InstanceDescription, TopologyView

__all__ = [
    "TOPICS_PROPERTY",
    "ClusterView",
    "DiscoveryConfig",
    "EventStream",
    "InstanceDescription",
    "InstanceInfo",
    "InstanceProperties",
    "PeerState",
    "PropertyProvider",
    "Subscription",
    "Topology",
    "TopologyEvent",
    "TopologyEventType",
    "TopologyListener",
    "TopologyView",
    "parse_topics",
]
