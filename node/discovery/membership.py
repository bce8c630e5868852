"""The peer table: what this node knows about every member, and the rules that merge news.

Pure bookkeeping (no I/O, no clock reads): `protocol.MembershipProtocol` feeds it records from
probes, gossip and syncs and acts on its verdicts. Must be used from one thread (the loop).

Precedence follows SWIM/memberlist. A record is versioned by its incarnation; for one run of
a member (same start time) a higher incarnation wins, and at equal incarnation
LEFT > DEAD > SUSPECT > ALIVE. A node starts at incarnation = its start time in microseconds,
so a restarted node's records beat those of its previous run. Records about this node are
never applied; suspicions about it are refuted by bumping its own incarnation.

A member speaks only for itself (its record's sender is bound to its certificate): what a third
party says about it is hearsay, which never sets its properties, endpoints or incarnation
(`PeerTable.judge`, `Verdict.CONFIRM`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from jobmesh.peer.v1 import membership_pb2
from jobmesh.v1 import topology_pb2

from node.discovery.identity import InstanceInfo
from node.errors import InvalidArgument


class PeerState(enum.Enum):
    """Membership state of a member, ordered by precedence at equal incarnation."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def in_view(self) -> bool:
        """ALIVE and SUSPECT members are part of topology views; DEAD and LEFT are not."""
        return self in (PeerState.ALIVE, PeerState.SUSPECT)

    @property
    def rank(self) -> int:
        """Precedence at equal incarnation."""
        return _RANK[self]

    def to_proto(self) -> topology_pb2.InstanceState.ValueType:
        """The InstanceState enum value."""
        return _TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int, field: str = "state") -> PeerState:
        """Decode an InstanceState; raises InvalidArgument for UNSPECIFIED or unknown values."""
        for state, number in _TO_PROTO.items():
            if number == value:
                return state
        raise InvalidArgument(f"{field}: {value} is not a member state (ALIVE, SUSPECT, DEAD or LEFT)")


_RANK = {PeerState.ALIVE: 0, PeerState.SUSPECT: 1, PeerState.DEAD: 2, PeerState.LEFT: 3}
_TO_PROTO = {
    PeerState.ALIVE: topology_pb2.INSTANCE_STATE_ALIVE,
    PeerState.SUSPECT: topology_pb2.INSTANCE_STATE_SUSPECT,
    PeerState.DEAD: topology_pb2.INSTANCE_STATE_DEAD,
    PeerState.LEFT: topology_pb2.INSTANCE_STATE_LEFT,
}


MAX_INCARNATION = 2**63 - 1
"""Incarnations at or above this are refused: one more (a refutation) must still be an int64."""
MAX_SUSPECTOR_LENGTH = 128
"""Longest `suspected_by` accepted (instance ids are UUIDs, 36 characters)."""


@dataclass(frozen=True)
class MemberRecord:
    """What is known about one member at one incarnation: the unit of gossip."""

    info: InstanceInfo
    incarnation: int
    state: PeerState
    properties: Mapping[str, str] = field(default_factory=dict)
    suspected_by: str = ""
    """SUSPECT records only: the instance id of the member whose failed probe raised it
    (counted by dynamic suspicion, suspicion.py); empty in every other state."""

    @property
    def id(self) -> str:
        """The member's instance id."""
        return self.info.id

    def with_state(
        self, state: PeerState, incarnation: int | None = None, suspected_by: str = ""
    ) -> MemberRecord:
        """A copy in `state`; DEAD and LEFT records drop the properties (nobody reads them),
        and only a SUSPECT record names who suspects."""
        properties = {} if not state.in_view else self.properties
        inc = self.incarnation if incarnation is None else incarnation
        suspector = suspected_by if state is PeerState.SUSPECT else ""
        return replace(self, state=state, incarnation=inc, properties=properties, suspected_by=suspector)

    def outranks(self, other: MemberRecord) -> bool:
        """True if this record is newer news than `other` about the same run of a member."""
        if self.incarnation != other.incarnation:
            return self.incarnation > other.incarnation
        return self.state.rank > other.state.rank

    def to_proto(self) -> membership_pb2.MemberRecord:
        """The wire form."""
        return membership_pb2.MemberRecord(
            info=self.info.to_proto(),
            incarnation=self.incarnation,
            state=self.state.to_proto(),
            properties=dict(self.properties),
            suspected_by=self.suspected_by,
        )

    @classmethod
    def from_proto(cls, proto: membership_pb2.MemberRecord, field: str = "record") -> MemberRecord:
        """Decode a peer's record; raises InvalidArgument when it is unusable."""
        if not proto.HasField("info"):
            raise InvalidArgument(f"{field}.info is missing")
        if proto.incarnation >= MAX_INCARNATION:  # refuting it must still fit in an int64
            raise InvalidArgument(f"{field}.incarnation {proto.incarnation} is out of range (< 2^63-1)")
        state = PeerState.from_proto(proto.state, f"{field}.state")
        if proto.suspected_by and state is not PeerState.SUSPECT:
            raise InvalidArgument(
                f"{field}.suspected_by is set on a record in state {state.value.upper()}; only SUSPECT records name a suspector"
            )
        if len(proto.suspected_by) > MAX_SUSPECTOR_LENGTH:
            raise InvalidArgument(
                f"{field}.suspected_by is {len(proto.suspected_by)} characters; an instance id has at most "
                f"{MAX_SUSPECTOR_LENGTH}"
            )
        return cls(
            info=InstanceInfo.from_proto(proto.info, f"{field}.info"),
            incarnation=proto.incarnation,
            state=state,
            properties=dict(proto.properties),
            suspected_by=proto.suspected_by,
        )


@dataclass
class Member:
    """A peer in the table, with this node's bookkeeping about it."""

    record: MemberRecord
    address: str
    """Where this node dials it: where it was last reached, else its preferred endpoint."""
    last_heard_us: int
    """Wall-clock time of the last evidence that it is alive."""
    changed_at: float
    """Monotonic time of its last state change (tombstones expire from it)."""


class Verdict(enum.Enum):
    """What the protocol must do with a record (see `PeerTable.judge`)."""

    IGNORE = "ignore"
    """Old or redundant news."""
    APPLY = "apply"
    """News about a peer: apply it and pass it on."""
    REFUTE = "refute"
    """A suspicion (or death) of this node: bump the local incarnation above it."""
    VERIFY = "verify"
    """Another run claims a live peer's id: check the known one still answers before applying."""
    OWN_ID = "own_id"
    """Another run claims this node's id: an earlier run of ours, or a copied data dir."""
    CONFIRM = "confirm"
    """Hearsay of a member's own word (it joined, restarted, or has new properties): ask the
    member itself; only its own answer enters the table."""
    SUSPECTED_AGAIN = "suspected_again"
    """A suspicion of the incarnation this node already suspects: maybe another member's own
    (dynamic suspicion counts it, suspicion.py); the table stays as it is."""


def _verdict(record: MemberRecord, current: MemberRecord) -> Verdict:
    """APPLY newer news about a known run of a member, SUSPECTED_AGAIN for its suspicion once
    more, else IGNORE."""
    if record.outranks(current):
        return Verdict.APPLY
    same = record.state is PeerState.SUSPECT and current.state is PeerState.SUSPECT
    if same and record.incarnation == current.incarnation:
        return Verdict.SUSPECTED_AGAIN
    return Verdict.IGNORE


@dataclass
class MembershipCounters:
    """Counts since start: probe targets chosen, members this node saw turn SUSPECT, and
    suspicions of this node it refuted; and this node's local health score now (health.py)."""

    probes: int = 0
    suspicions: int = 0
    refutations: int = 0
    local_health: int = 0


class PeerTable:
    """This node's record and every member it knows (tombstones included), keyed by instance id."""

    def __init__(self, local: MemberRecord) -> None:
        self.local = local
        self._members: dict[str, Member] = {}
        self._probe_order: list[str] = []
        self.counters = MembershipCounters()
        """What the protocol did so far (metrics)."""

    # --- reading ---

    def get(self, member_id: str) -> Member | None:
        """The member with this id (any state), or None."""
        return self._members.get(member_id)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    def live(self) -> list[Member]:
        """Members in ALIVE or SUSPECT state (the ones in views), excluding this node."""
        return [m for m in self._members.values() if m.record.state.in_view]

    def records(self) -> list[MemberRecord]:
        """This node's record and every member's, tombstones included (what Sync sends)."""
        return [self.local, *(m.record for m in self._members.values())]

    # --- judging and applying news ---

    def judge(
        self, record: MemberRecord, from_sync: bool = False, source: str | None = None
    ) -> tuple[Verdict, MemberRecord]:
        """Decide what `record` means here; returns the verdict and the record to act on.

        `from_sync`: the record comes from another node's whole table. A DEAD there may be a
        partition's artefact, so for a member live here it only makes it SUSPECT: the member
        then gets the chance to refute (memberlist does the same).

        `source`: the instance that told this node (the authenticated sender or responder);
        None for this node's own conclusions. A member speaks only for itself: what a third
        party says about it (`source` another instance) is hearsay, see `_judge_hearsay`.
        """
        local = self.local
        hearsay = source is not None and source != record.id
        if record.id == local.id:
            if local.state is PeerState.LEFT:
                return Verdict.IGNORE, record  # leaving: nothing to refute or defend any more
            if record.info.start_time_us != local.info.start_time_us:
                return Verdict.OWN_ID, record
            if record.state is not PeerState.ALIVE and record.incarnation >= local.incarnation:
                # Nobody knows a later incarnation of this run than this node itself: refute one
                # above its own, never above a number a peer chose (that could exhaust int64).
                self.counters.refutations += 1
                return Verdict.REFUTE, replace(record, incarnation=local.incarnation)
            return Verdict.IGNORE, record
        member = self._members.get(record.id)
        if hearsay:
            return self._judge_hearsay(record, member, from_sync, source or "")
        if member is None:
            return Verdict.APPLY, record
        current = member.record
        if record.info.start_time_us != current.info.start_time_us:
            if record.incarnation <= current.incarnation:
                return Verdict.IGNORE, record
            if current.state.in_view and not set(record.info.endpoints) & set(current.info.endpoints):
                return Verdict.VERIFY, record
            return Verdict.APPLY, record
        if from_sync and record.state is PeerState.DEAD and current.state.in_view:
            record = record.with_state(PeerState.SUSPECT, suspected_by=source or "")
            record = replace(record, properties=current.properties)
        return _verdict(record, current), record

    @staticmethod
    def _judge_hearsay(
        record: MemberRecord, member: Member | None, from_sync: bool, source: str
    ) -> tuple[Verdict, MemberRecord]:
        """A third party's news about a member: never its properties, endpoints or incarnation.

        A member unknown here, a new run, or a newer ALIVE is the member's own word at second
        hand: CONFIRM (ask the member). SUSPECT and DEAD (SWIM's failure reports) apply to the
        run and incarnation known here, with what the member itself said, so the member can
        always refute them one incarnation up. Only a member itself says it LEFT: from anyone
        else that is a DEAD report.
        """
        if member is None or record.info.start_time_us != member.record.info.start_time_us:
            newer = member is None or record.incarnation > member.record.incarnation
            return (Verdict.CONFIRM if newer and record.state.in_view else Verdict.IGNORE), record
        current = member.record
        if record.state is PeerState.ALIVE:
            newer = record.incarnation > current.incarnation
            return (Verdict.CONFIRM if newer else Verdict.IGNORE), record
        state = PeerState.DEAD if record.state is PeerState.LEFT else record.state
        suspector = record.suspected_by
        if from_sync and state is PeerState.DEAD and current.state.in_view:
            state, suspector = PeerState.SUSPECT, source
        claim = current.with_state(state, min(record.incarnation, current.incarnation), suspector)
        return _verdict(claim, current), claim

    def apply(self, record: MemberRecord, now_us: int, now: float) -> MemberRecord | None:
        """Store `record` (already judged APPLY); returns the record it replaced, if any."""
        member = self._members.get(record.id)
        if member is None:
            self._members[record.id] = Member(record, record.info.address, now_us, now)
            if record.state.in_view:
                self._probe_order.insert(random.randint(0, len(self._probe_order)), record.id)
            return None
        previous = member.record
        if record.state is PeerState.SUSPECT and previous.state is PeerState.ALIVE:
            self.counters.suspicions += 1
        if previous.info.start_time_us != record.info.start_time_us:
            member.address = record.info.address
        if previous.state is not record.state or previous.info != record.info:
            member.changed_at = now
        member.record = record
        if record.state.in_view:
            if record.state is PeerState.ALIVE:  # fresh news from the member itself
                member.last_heard_us = max(member.last_heard_us, now_us)
            if record.id not in self._probe_order:
                self._probe_order.insert(random.randint(0, len(self._probe_order)), record.id)
        return previous

    def heard_from(self, member_id: str, address: str | None, now_us: int) -> None:
        """Note direct evidence that a member is alive (and the address that reached it)."""
        member = self._members.get(member_id)
        if member is not None:
            member.last_heard_us = now_us
            if address is not None:
                member.address = address

    def forget(self, member_id: str) -> Member | None:
        """Drop a member entirely (an expired tombstone)."""
        return self._members.pop(member_id, None)

    # --- this node's own record ---

    def bump_local(self, above: int = 0, properties: Mapping[str, str] | None = None) -> MemberRecord:
        """A new ALIVE incarnation of this node, higher than `above` (refutation, new properties)."""
        local = self.local
        self.local = replace(
            local,
            incarnation=max(local.incarnation, above) + 1,
            state=PeerState.ALIVE,
            properties=dict(local.properties if properties is None else properties),
        )
        return self.local

    def leave_local(self) -> MemberRecord:
        """This node's LEFT record (one incarnation up, so it beats every earlier record)."""
        self.local = self.local.with_state(PeerState.LEFT, self.local.incarnation + 1)
        return self.local

    # --- probing ---

    def next_probe_target(self) -> Member | None:
        """The next live member to probe: round robin over a shuffled order, reshuffled each pass."""
        for _ in range(2):
            while self._probe_order:
                member = self._members.get(self._probe_order.pop())
                if member is not None and member.record.state.in_view:
                    self.counters.probes += 1
                    return member
            self._probe_order = [m.record.id for m in self.live()]
            random.shuffle(self._probe_order)
        return None
