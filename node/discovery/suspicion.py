"""Suspicion timers and death declarations: the part of the membership protocol that turns a
SUSPECT member DEAD when it does not refute in time, and pushes that news to every member.

Lifeguard's dynamic suspicion: a suspicion that only one member holds may be that member's own
trouble (a node starved of CPU sees its probes time out), so it runs for
`suspicion_max_mult * suspicion_timeout_s`. Each other member that suspects the same
incarnation on its own (its record names it in `suspected_by`) shortens it, down to
`suspicion_timeout_s` once `SUSPICION_CONFIRMATIONS` of them agree: a crashed member, which
every prober fails to reach, is declared dead as fast as before, and a slow one gets time to
refute. Small clusters (too few members to confirm) use `suspicion_timeout_s` throughout.

A timer that fires late (this node was stalled: paused, overloaded) gives the suspect another
full timeout instead of burying it: it had no fair chance to refute. `Suspicions` is a part of
`MembershipProtocol` (protocol.py); everything here runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from node.discovery.config import DiscoveryConfig
from node.discovery.gossip import BroadcastQueue
from node.discovery.health import LocalHealth
from node.discovery.membership import MemberRecord, PeerState, PeerTable
from node.discovery.messages import Gossip
from node.discovery.peers import PeerTransport
from node.errors import DuplicateInstance, PeerUnavailable

log = logging.getLogger(__name__)

MIN_STALL_S = 0.25
"""A timer firing this much later than due means the loop (or the process) was stalled."""
SUSPICION_CONFIRMATIONS = 2
"""Independent suspicions, beyond the first, that bring a suspicion's timeout down to
`suspicion_timeout_s` (memberlist: its suspicion multiplier minus 2)."""


def suspicion_timeout(min_s: float, max_s: float, confirmations: int, needed: int) -> float:
    """How long a suspicion runs in all, from `max_s` with no confirmation down to `min_s` with
    `needed` of them, on a log scale (memberlist's remainingSuspicionTime): the first
    confirmations count most."""
    if needed < 1 or confirmations >= needed:
        return min_s
    fraction = math.log(confirmations + 1) / math.log(needed + 1)
    return max(min_s, max_s - fraction * (max_s - min_s))


@dataclass
class Suspicion:
    """This node's suspicion of one incarnation of one member."""

    incarnation: int
    started: float
    """Loop time it began."""
    needed: int
    """Confirmations that bring it down to the shortest timeout (0 in a small cluster)."""
    suspectors: set[str] = field(default_factory=set)
    """Instance ids of the members known to suspect it on their own (the first included)."""
    handle: asyncio.TimerHandle | None = None

    @property
    def confirmations(self) -> int:
        """Independent suspicions beyond the first."""
        return max(0, len(self.suspectors) - 1)


class Suspicions:
    """The suspicion part of the membership protocol."""

    config: DiscoveryConfig
    health: LocalHealth
    table: PeerTable
    running: bool
    _transport: PeerTransport
    _suspicions: dict[str, Suspicion]
    broadcasts: BroadcastQueue

    def _apply(self, record: MemberRecord) -> None:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        raise NotImplementedError

    def _start_suspicion(self, record: MemberRecord, suspectors: set[str] | None = None) -> None:
        self._cancel_suspicion(record.id)
        members = len(self.table.live()) + 1  # this node and the members in its view, no tombstones
        # memberlist: with fewer than the confirmations' worth of other members to probe the
        # suspect, nobody could confirm: every suspicion runs the shortest timeout.
        needed = SUSPICION_CONFIRMATIONS if members - 2 >= SUSPICION_CONFIRMATIONS else 0
        suspicion = Suspicion(
            record.incarnation,
            asyncio.get_running_loop().time(),
            needed,
            suspectors if suspectors is not None else {record.suspected_by},
        )
        self._suspicions[record.id] = suspicion
        self._schedule(record.id, suspicion)

    def _schedule(self, member_id: str, suspicion: Suspicion) -> None:
        """(Re)arm the timer for the suspicion's timeout at its current confirmations."""
        if suspicion.handle is not None:
            suspicion.handle.cancel()
        loop = asyncio.get_running_loop()
        config = self.config
        timeout = suspicion_timeout(
            config.suspicion_timeout_s,
            config.suspicion_timeout_s * config.suspicion_max_mult,
            suspicion.confirmations,
            suspicion.needed,
        )
        # Never in the past: a confirmation that cuts the timeout below the time already run
        # ends the suspicion now, and must not look like a stalled timer.
        due = max(suspicion.started + timeout, loop.time())
        suspicion.handle = loop.call_at(due, self._suspicion_over, member_id, suspicion.incarnation, due)

    def _suspected_again(self, record: MemberRecord) -> None:
        """A suspicion of the incarnation already suspected here: a new suspector shortens it,
        and is passed on so that the others count it too."""
        suspicion = self._suspicions.get(record.id)
        if suspicion is None or suspicion.incarnation != record.incarnation:
            return
        if record.suspected_by in suspicion.suspectors or suspicion.confirmations >= suspicion.needed:
            return  # nothing new, or nothing left to shorten (so the set stays small)
        known = record.suspected_by == self.table.local.id or self.table.get(record.suspected_by) is not None
        if not known:
            return  # a suspector nobody knows is no member's probe (a peer's record names it)
        suspicion.suspectors.add(record.suspected_by)
        self.broadcasts.add(record)
        self._schedule(record.id, suspicion)

    def _cancel_suspicion(self, member_id: str) -> None:
        suspicion = self._suspicions.pop(member_id, None)
        if suspicion is not None and suspicion.handle is not None:
            suspicion.handle.cancel()

    def _suspicion_over(self, member_id: str, incarnation: int, due: float) -> None:
        suspicion = self._suspicions.pop(member_id, None)
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - due > max(MIN_STALL_S, self.config.suspicion_timeout_s / 4):
            # This node was stalled: the suspect had no fair chance to refute. Give it one.
            member = self.table.get(member_id)
            if member is not None and member.record.state is PeerState.SUSPECT:
                self._start_suspicion(member.record, suspicion.suspectors if suspicion else None)
            return
        member = self.table.get(member_id)
        if member is None or member.record.state is not PeerState.SUSPECT:
            return
        if member.record.incarnation != incarnation:
            return
        dead = member.record.with_state(PeerState.DEAD)
        log.info("member %s (%s) did not refute the suspicion: dead", dead.info.name, member_id)
        self._apply(dead)
        self._push_to_all(dead)

    def _push_to_all(self, record: MemberRecord) -> None:
        """Push urgent news (a death, a refutation) to every live member at once, not by gossip."""
        message = Gossip(self.table.local, (record,))
        # Stretched like a probe's when this node is unhealthy: pushes that time out because
        # this node is slow would otherwise retire healthy channels (peers.py).
        timeout = self.health.scale(self.config.probe_timeout_s)
        for member in self.table.live():
            self._spawn(self._push(member.address, message, timeout), "push")

    async def _push(self, address: str, message: Gossip, timeout_s: float) -> None:
        with contextlib.suppress(PeerUnavailable, DuplicateInstance):
            await self._transport.gossip(address, message, timeout_s)
