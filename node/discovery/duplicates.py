"""Who speaks for an instance id: refuting claims about this node, asking a member itself
about hearsay, and two live nodes with one id (a copied data dir): finding out, who gives way.

Whoever hears from the other compares start times; the later one is answered ALREADY_EXISTS
(or fails itself) and stops. A new run that claims a live member's id is applied only once the
known run no longer answers. `DuplicateIds` is a part of `MembershipProtocol` (protocol.py);
everything here runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from node.discovery.config import DiscoveryConfig
from node.discovery.gossip import BroadcastQueue
from node.discovery.membership import MemberRecord, PeerTable
from node.discovery.messages import Ping
from node.discovery.peers import PeerTransport
from node.errors import DuplicateInstance, PeerUnavailable, Unavailable

log = logging.getLogger(__name__)


class DuplicateIds:
    """The duplicate-instance part of the membership protocol."""

    config: DiscoveryConfig
    table: PeerTable
    broadcasts: BroadcastQueue
    running: bool
    _transport: PeerTransport
    _rounds: list[asyncio.Task[Any]]
    _verifying: dict[str, MemberRecord]
    _checked_duplicates: set[tuple[str, int]]
    _failure: asyncio.Future[DuplicateInstance] | None
    _on_change: Callable[[], None]
    _confirmed_at: dict[str, float]
    _refutation_pushed_at: float

    # Provided by MembershipProtocol.
    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        raise NotImplementedError

    def _merge(
        self,
        record: MemberRecord,
        from_sync: bool = False,
        heard: bool = False,
        address: str | None = None,
        source: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _apply(self, record: MemberRecord) -> None:
        raise NotImplementedError

    def _health(self, delta: int) -> None:
        raise NotImplementedError

    def _push_to_all(self, record: MemberRecord) -> None:
        raise NotImplementedError

    def contact(self, address: str, expected_id: str | None = None) -> None:
        raise NotImplementedError

    async def wait_failure(self) -> DuplicateInstance:
        """Wait until this node must stop because another live node owns its instance id."""
        if self._failure is None:
            raise RuntimeError("the membership protocol is not started")
        return await asyncio.shield(self._failure)

    @property
    def failed(self) -> bool:
        """True once this node found it is a duplicate (it no longer talks to peers)."""
        return self._failure is not None and self._failure.done()

    def _settle_clash(self, sender: MemberRecord) -> None:
        """A message from another run with this node's id: the later run gives way."""
        local = self.table.local
        if sender.id != local.id or sender.info.start_time_us == local.info.start_time_us:
            return
        if (sender.info.start_time_us, sender.info.endpoints) > (
            local.info.start_time_us,
            local.info.endpoints,
        ):
            raise DuplicateInstance(_duplicate_message(local, sender, self_is_duplicate=False))
        self._fail(DuplicateInstance(_duplicate_message(sender, local, self_is_duplicate=True)))
        raise Unavailable("this node stops: its instance id belongs to an earlier node")

    def check_duplicate(self, address: str) -> None:
        """Probe a node at `address` that advertises this node's instance id (mDNS)."""
        if address in self.table.local.info.endpoints or not self.running:
            return
        self._spawn(self._ping_duplicate(address), f"duplicate-{address}")

    async def _ping_duplicate(self, address: str) -> None:
        ping = Ping(self.table.local, self.table.local.id)
        try:
            ack = await self._transport.ping(address, ping, self.config.probe_timeout_s * 2)
        except PeerUnavailable:
            return
        except DuplicateInstance as e:
            self._fail(e)
            return
        if ack.responder.id != self.table.local.id:
            self._merge(ack.responder, heard=True)

    def _own_id(self, record: MemberRecord, hearsay: bool = False) -> None:
        """Another run uses this node's id: keep this node on top, and check whether it is alive.

        `hearsay`: a third party says so. Then only the check runs (its answer needs the holder
        of this node's certificate); the incarnation a third party names is not outbid.
        """
        if not hearsay and record.incarnation >= self.table.local.incarnation:
            self.broadcasts.add(self.table.bump_local(above=record.incarnation))
            self._on_change()
        if not record.state.in_view or set(record.info.endpoints) & set(self.table.local.info.endpoints):
            return  # an earlier run of this node (it had our address): nothing to check
        key = (record.info.address, record.info.start_time_us)
        if key not in self._checked_duplicates:
            self._checked_duplicates.add(key)
            self.check_duplicate(record.info.address)

    def _verify(self, record: MemberRecord) -> None:
        """A new run claims a live member's id: apply it only if the known run no longer answers."""
        pending = self._verifying.get(record.id)
        if pending is None or record.incarnation > pending.incarnation:
            self._verifying[record.id] = record
        if pending is None:
            self._spawn(self._verify_takeover(record.id), f"verify-{record.id}")

    async def _verify_takeover(self, member_id: str) -> None:
        member = self.table.get(member_id)
        known = member.record if member else None
        alive = False
        if member is not None and known is not None:
            try:
                ack = await self._transport.ping(
                    member.address, Ping(self.table.local, member_id), self.config.probe_timeout_s
                )
                alive = ack.responder.id == member_id and ack.responder.info == known.info
            except (PeerUnavailable, DuplicateInstance):
                alive = False
        claim = self._verifying.pop(member_id)
        if alive and known is not None and known.info.leader_key < claim.info.leader_key:
            log.warning(
                "ignoring %s at %s: instance id %s belongs to the live %s at %s, which started earlier "
                "(a copied data dir?); the later node will be refused",
                claim.info.name,
                claim.info.address,
                member_id,
                known.info.name,
                known.info.address,
            )
            return
        current = self.table.get(member_id)
        if current is None or claim.incarnation > current.record.incarnation:
            self._apply(claim)

    def _confirm(self, record: MemberRecord) -> None:
        """Hearsay of a member's own word: Sync with the member itself (at most once per probe
        interval each), so its record enters the table only as it tells it."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._confirmed_at.get(record.id, -1.0) + self.config.probe_interval_s:
            return
        self._confirmed_at[record.id] = loop.time()
        member = self.table.get(record.id)
        known_run = member is not None and member.record.info.start_time_us == record.info.start_time_us
        self.contact(member.address if member is not None and known_run else record.info.address)

    def _refute(self, record: MemberRecord) -> None:
        """Someone suspects (or buried) this node: publish ALIVE with a higher incarnation."""
        log.info("refuting %s about this node (incarnation %d)", record.state.value, record.incarnation)
        alive = self.table.bump_local(above=record.incarnation)
        self.broadcasts.add(alive)
        # Relayed by others, a refutation is hearsay that each member must confirm with this
        # node before it believes it (`_confirm`), and a suspicion can run out meanwhile. Told
        # by this node itself, it is applied at once: so tell every member directly, at most
        # once per probe interval (a burst of suspicions must not become a burst of pushes;
        # the gossip above still carries the latest incarnation).
        now = asyncio.get_running_loop().time()
        if now >= self._refutation_pushed_at + self.config.probe_interval_s:
            self._refutation_pushed_at = now
            self._push_to_all(alive)
        self._health(1)  # Lifeguard: a suspected node is likely the slow one
        self._on_change()

    def _fail(self, error: DuplicateInstance) -> None:
        """This node is the later of two with one instance id: go silent and let the node stop."""
        if self._failure is None or self._failure.done():
            return
        log.critical("%s", error)
        self._failure.set_result(error)
        for task in self._rounds:
            task.cancel()


def _duplicate_message(owner: MemberRecord, duplicate: MemberRecord, self_is_duplicate: bool) -> str:
    who = "this node" if self_is_duplicate else f"the node at {duplicate.info.address}"
    return (
        f"instance id {owner.id} is already used by the live node {owner.info.name} at "
        f"{owner.info.address}, which started earlier: {who} ({duplicate.info.name}) refuses to join. "
        "Its data dir was probably copied from that node's; give it its own data dir "
        "(an empty one gets a fresh instance id)."
    )
