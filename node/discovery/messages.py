"""The membership protocol's messages as values, with their proto forms (membership.proto).

Decoding checks every record and raises InvalidArgument for one a peer cannot have meant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jobmesh.peer.v1 import membership_pb2

from node.discovery.membership import MemberRecord


def _encode(records: Iterable[MemberRecord]) -> list[membership_pb2.MemberRecord]:
    return [r.to_proto() for r in records]


def _decode(protos: Sequence[membership_pb2.MemberRecord], field: str) -> tuple[MemberRecord, ...]:
    return tuple(MemberRecord.from_proto(p, f"{field}[{i}]") for i, p in enumerate(protos))


@dataclass(frozen=True)
class Ping:
    """A direct probe."""

    sender: MemberRecord
    target_id: str
    gossip: tuple[MemberRecord, ...] = ()

    def to_proto(self) -> membership_pb2.PingRequest:
        """The wire form."""
        return membership_pb2.PingRequest(
            sender=self.sender.to_proto(), target_id=self.target_id, gossip=_encode(self.gossip)
        )

    @classmethod
    def from_proto(cls, proto: membership_pb2.PingRequest) -> Ping:
        """Decode; raises InvalidArgument."""
        return cls(
            MemberRecord.from_proto(proto.sender, "sender"), proto.target_id, _decode(proto.gossip, "gossip")
        )


@dataclass(frozen=True)
class Ack:
    """The answer to a Ping."""

    responder: MemberRecord
    gossip: tuple[MemberRecord, ...] = ()

    def to_proto(self) -> membership_pb2.PingResponse:
        """The wire form."""
        return membership_pb2.PingResponse(responder=self.responder.to_proto(), gossip=_encode(self.gossip))

    @classmethod
    def from_proto(cls, proto: membership_pb2.PingResponse) -> Ack:
        """Decode; raises InvalidArgument."""
        return cls(MemberRecord.from_proto(proto.responder, "responder"), _decode(proto.gossip, "gossip"))


@dataclass(frozen=True)
class IndirectPing:
    """A request to probe `target_id` at `target_address` on the sender's behalf."""

    sender: MemberRecord
    target_id: str
    target_address: str
    timeout_s: float
    gossip: tuple[MemberRecord, ...] = ()

    def to_proto(self) -> membership_pb2.IndirectPingRequest:
        """The wire form."""
        return membership_pb2.IndirectPingRequest(
            sender=self.sender.to_proto(),
            target_id=self.target_id,
            target_address=self.target_address,
            timeout_ms=max(1, round(self.timeout_s * 1000)),
            gossip=_encode(self.gossip),
        )

    @classmethod
    def from_proto(cls, proto: membership_pb2.IndirectPingRequest) -> IndirectPing:
        """Decode; raises InvalidArgument."""
        return cls(
            MemberRecord.from_proto(proto.sender, "sender"),
            proto.target_id,
            proto.target_address,
            proto.timeout_ms / 1000,
            _decode(proto.gossip, "gossip"),
        )


@dataclass(frozen=True)
class IndirectAck:
    """The answer to an IndirectPing."""

    reachable: bool
    target: MemberRecord | None
    responder: MemberRecord
    gossip: tuple[MemberRecord, ...] = ()

    def to_proto(self) -> membership_pb2.IndirectPingResponse:
        """The wire form."""
        proto = membership_pb2.IndirectPingResponse(
            reachable=self.reachable, responder=self.responder.to_proto(), gossip=_encode(self.gossip)
        )
        if self.target is not None:
            proto.target.CopyFrom(self.target.to_proto())
        return proto

    @classmethod
    def from_proto(cls, proto: membership_pb2.IndirectPingResponse) -> IndirectAck:
        """Decode; raises InvalidArgument."""
        target = MemberRecord.from_proto(proto.target, "target") if proto.HasField("target") else None
        return cls(
            proto.reachable,
            target,
            MemberRecord.from_proto(proto.responder, "responder"),
            _decode(proto.gossip, "gossip"),
        )


@dataclass(frozen=True)
class Sync:
    """A push-pull exchange of whole member tables."""

    sender: MemberRecord
    members: tuple[MemberRecord, ...]

    def to_proto(self) -> membership_pb2.SyncRequest:
        """The wire form."""
        return membership_pb2.SyncRequest(sender=self.sender.to_proto(), members=_encode(self.members))

    @classmethod
    def from_proto(cls, proto: membership_pb2.SyncRequest) -> Sync:
        """Decode; raises InvalidArgument."""
        return cls(MemberRecord.from_proto(proto.sender, "sender"), _decode(proto.members, "members"))


@dataclass(frozen=True)
class SyncReply:
    """The answer to a Sync: the responder's whole table."""

    responder: MemberRecord
    members: tuple[MemberRecord, ...]

    def to_proto(self) -> membership_pb2.SyncResponse:
        """The wire form."""
        return membership_pb2.SyncResponse(responder=self.responder.to_proto(), members=_encode(self.members))

    @classmethod
    def from_proto(cls, proto: membership_pb2.SyncResponse) -> SyncReply:
        """Decode; raises InvalidArgument."""
        return cls(MemberRecord.from_proto(proto.responder, "responder"), _decode(proto.members, "members"))


@dataclass(frozen=True)
class Gossip:
    """Pushed membership news."""

    sender: MemberRecord
    records: tuple[MemberRecord, ...]

    def to_proto(self) -> membership_pb2.GossipRequest:
        """The wire form."""
        return membership_pb2.GossipRequest(sender=self.sender.to_proto(), records=_encode(self.records))

    @classmethod
    def from_proto(cls, proto: membership_pb2.GossipRequest) -> Gossip:
        """Decode; raises InvalidArgument."""
        return cls(MemberRecord.from_proto(proto.sender, "sender"), _decode(proto.records, "records"))


@dataclass(frozen=True)
class GossipAck:
    """The answer to a Gossip push."""

    responder: MemberRecord

    def to_proto(self) -> membership_pb2.GossipResponse:
        """The wire form."""
        return membership_pb2.GossipResponse(responder=self.responder.to_proto())

    @classmethod
    def from_proto(cls, proto: membership_pb2.GossipResponse) -> GossipAck:
        """Decode; raises InvalidArgument."""
        return cls(MemberRecord.from_proto(proto.responder, "responder"))
