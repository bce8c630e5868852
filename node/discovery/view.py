"""Topology views: immutable snapshots of the live instances, their cluster views and leaders.

A view holds every instance in state ALIVE or SUSPECT (this node included), grouped by
`cluster` label into cluster views. Each cluster view's leader is the instance with the
earliest start time, ties broken by id: stable while it lives, and a restarted instance
(new start time) goes to the back. Nodes that see the same instances compute the same
leaders and the same `membership_digest`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import topology_pb2

from node.discovery.membership import Member, MemberRecord, PeerState
from node.discovery.properties import TOPICS_PROPERTY, parse_topics
from node.model.consumption import ConsumptionRules
from node.topics import TopicPattern

CONSUMERS_CACHE_TOPICS = 1024
"""Topics whose consumers one view remembers (consumers_of); past that it starts again."""


def timestamp_us(micros: int) -> Timestamp:
    """A Timestamp from microseconds since the epoch."""
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


@dataclass(frozen=True)
class InstanceDescription:
    """One instance in a view (Sling's InstanceDescription)."""

    id: str
    name: str
    start_time_us: int
    endpoints: tuple[str, ...]
    cluster: str
    state: PeerState
    incarnation: int
    properties: Mapping[str, str]
    last_heard_us: int
    is_local: bool
    is_leader: bool = False
    protocol_version: int = 1

    @property
    def address(self) -> str:
        """The preferred `host:port` of the instance's gRPC server."""
        return self.endpoints[0]

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic patterns the instance consumes (its `jobmesh.topics` property)."""
        return parse_topics(self.properties.get(TOPICS_PROPERTY))

    def consumes(self, topic: str) -> bool:
        """True if one of the instance's consumer patterns matches `topic`."""
        if not any(TopicPattern.parse(p).matches(topic) for p in self.topics):
            return False
        return ConsumptionRules.from_properties(self.properties).allows(topic)

    def to_proto(self) -> topology_pb2.Instance:
        """The API form."""
        return topology_pb2.Instance(
            id=self.id,
            name=self.name,
            start_time=timestamp_us(self.start_time_us),
            endpoints=list(self.endpoints),
            cluster=self.cluster,
            state=self.state.to_proto(),
            leader=self.is_leader,
            local=self.is_local,
            properties=dict(self.properties),
            last_heard=timestamp_us(self.last_heard_us),
            incarnation=self.incarnation,
            protocol_version=self.protocol_version,
        )


@dataclass(frozen=True)
class ClusterView:
    """The instances sharing one cluster label; the leader comes first."""

    cluster: str
    instances: tuple[InstanceDescription, ...]

    @property
    def leader(self) -> InstanceDescription:
        """The leader: earliest start time, ties by id."""
        return self.instances[0]

    def to_proto(self) -> topology_pb2.ClusterView:
        """The API form."""
        return topology_pb2.ClusterView(
            cluster=self.cluster, leader_id=self.leader.id, instance_ids=[i.id for i in self.instances]
        )


@dataclass(frozen=True)
class TopologyView:
    """A snapshot of the topology as this node sees it (Sling's TopologyView). Immutable.

    `is_current` turns false once a newer view exists, or while a change is settling.
    """

    version: int
    instances: tuple[InstanceDescription, ...]
    clusters: tuple[ClusterView, ...]
    local_id: str
    created_us: int
    _current: Callable[[TopologyView], bool] = field(repr=False, compare=False)

    @property
    def is_current(self) -> bool:
        """False once a newer view exists or a change is under way."""
        return self._current(self)

    @property
    def local(self) -> InstanceDescription:
        """This node's own instance."""
        found = self.find(self.local_id)
        assert found is not None, "a view always contains the local instance"
        return found

    @property
    def leader(self) -> InstanceDescription:
        """The leader of this node's cluster view."""
        return self.cluster_view().leader

    @property
    def membership_digest(self) -> str:
        """Hex digest of the instances (ids and start times); equal on nodes that see the same."""
        text = ";".join(sorted(f"{i.id}@{i.start_time_us}" for i in self.instances))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def find(self, instance_id: str) -> InstanceDescription | None:
        """The instance with this id, or None."""
        for instance in self.instances:
            if instance.id == instance_id:
                return instance
        return None

    def cluster_view(self, cluster: str | None = None) -> ClusterView:
        """The cluster view of `cluster` (default: this node's own cluster); KeyError if absent."""
        label = self.local.cluster if cluster is None else cluster
        for view in self.clusters:
            if view.cluster == label:
                return view
        raise KeyError(f"no instance of cluster {label!r} in this view")

    def consumers_of(self, topic: str) -> list[InstanceDescription]:
        """Instances whose published topic patterns match `topic`, this node's cluster first."""
        # Memoized per view (it is immutable): placement asks once per job it places, on the
        # writer, and parsing every instance's patterns and rules each time was a tenth of an
        # offloading origin's work.
        cache = self._consumers
        found = cache.get(topic)
        if found is None:
            own = self.local.cluster
            found = tuple(
                sorted((i for i in self.instances if i.consumes(topic)), key=lambda i: i.cluster != own)
            )
            if len(cache) >= CONSUMERS_CACHE_TOPICS:
                cache.clear()
            cache[topic] = found
        return list(found)

    @functools.cached_property
    def _consumers(self) -> dict[str, tuple[InstanceDescription, ...]]:
        return {}

    def same_members(self, other: TopologyView) -> bool:
        """True if both views hold the same instances (ids and start times)."""
        return _member_key(self.instances) == _member_key(other.instances)

    def same_properties(self, other: TopologyView) -> bool:
        """True if every instance has the same properties in both views."""
        return _property_key(self.instances) == _property_key(other.instances)

    def with_live_fields(self, live: Mapping[str, tuple[PeerState, int, int]]) -> TopologyView:
        """The same view with state, incarnation and last-heard time refreshed (same version)."""
        instances = tuple(
            replace(i, state=live[i.id][0], incarnation=live[i.id][1], last_heard_us=live[i.id][2])
            if i.id in live
            else i
            for i in self.instances
        )
        by_id = {i.id: i for i in instances}
        clusters = tuple(
            ClusterView(c.cluster, tuple(by_id[i.id] for i in c.instances)) for c in self.clusters
        )
        return replace(self, instances=instances, clusters=clusters)

    def to_proto(self) -> topology_pb2.TopologyView:
        """The API form."""
        return topology_pb2.TopologyView(
            version=self.version,
            membership_digest=self.membership_digest,
            current=self.is_current,
            local_id=self.local_id,
            instances=[i.to_proto() for i in self.instances],
            clusters=[c.to_proto() for c in self.clusters],
            created=timestamp_us(self.created_us),
        )


def _member_key(instances: Iterable[InstanceDescription]) -> frozenset[tuple[str, int]]:
    return frozenset((i.id, i.start_time_us) for i in instances)


def _property_key(instances: Iterable[InstanceDescription]) -> dict[str, dict[str, str]]:
    return {i.id: dict(i.properties) for i in instances}


def _describe(record: MemberRecord, last_heard_us: int, is_local: bool) -> InstanceDescription:
    info = record.info
    return InstanceDescription(
        id=info.id,
        name=info.name,
        start_time_us=info.start_time_us,
        endpoints=info.endpoints,
        cluster=info.cluster,
        state=record.state if not is_local else PeerState.ALIVE,
        incarnation=record.incarnation,
        properties=dict(record.properties),
        last_heard_us=last_heard_us,
        is_local=is_local,
        protocol_version=info.protocol_version,
    )


def build_view(
    version: int,
    local: MemberRecord,
    members: Iterable[Member],
    now_us: int,
    current: Callable[[TopologyView], bool],
) -> TopologyView:
    """The view of `local` plus every live member, with cluster views and leaders."""
    described = [_describe(local, now_us, True)]
    described += [_describe(m.record, m.last_heard_us, False) for m in members if m.record.state.in_view]
    by_cluster: dict[str, list[InstanceDescription]] = {}
    for instance in described:
        by_cluster.setdefault(instance.cluster, []).append(instance)
    clusters = []
    ordered: list[InstanceDescription] = []
    for label in sorted(by_cluster):
        group = sorted(by_cluster[label], key=lambda i: (i.start_time_us, i.id))
        group[0] = replace(group[0], is_leader=True)
        clusters.append(ClusterView(label, tuple(group)))
        ordered += group
    return TopologyView(version, tuple(ordered), tuple(clusters), local.id, now_us, current)
