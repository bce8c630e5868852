"""Suspicion timers and death declarations: the part of the membership protocol that turns a
SUSPECT member DEAD when it does not refute in time, and pushes that news to every member.

A timer that fires late (this node was stalled: paused, overloaded) gives the suspect another
full timeout instead of burying it: it had no fair chance to refute. `Suspicions` is a part of
`MembershipProtocol` (protocol.py); everything here runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from node.discovery.config import DiscoveryConfig
from node.discovery.health import LocalHealth
from node.discovery.membership import MemberRecord, PeerState, PeerTable
from node.discovery.messages import Gossip
from node.discovery.peers import PeerTransport
from node.errors import DuplicateInstance, PeerUnavailable

log = logging.getLogger(__name__)

MIN_STALL_S = 0.25
"""A timer firing this much later than due means the loop (or the process) was stalled."""


class Suspicions:
    """The suspicion part of the membership protocol."""

    config: DiscoveryConfig
    health: LocalHealth
    table: PeerTable
    running: bool
    _transport: PeerTransport
    _suspicions: dict[str, asyncio.TimerHandle]

    def _apply(self, record: MemberRecord) -> None:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        raise NotImplementedError

    def _start_suspicion(self, record: MemberRecord) -> None:
        self._cancel_suspicion(record.id)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.config.suspicion_timeout_s
        self._suspicions[record.id] = loop.call_at(
            due, self._suspicion_over, record.id, record.incarnation, due
        )

    def _cancel_suspicion(self, member_id: str) -> None:
        handle = self._suspicions.pop(member_id, None)
        if handle is not None:
            handle.cancel()

    def _suspicion_over(self, member_id: str, incarnation: int, due: float) -> None:
        self._suspicions.pop(member_id, None)
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - due > max(MIN_STALL_S, self.config.suspicion_timeout_s / 4):
            # This node was stalled: the suspect had no fair chance to refute. Give it one.
            member = self.table.get(member_id)
            if member is not None and member.record.state is PeerState.SUSPECT:
                self._start_suspicion(member.record)
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
