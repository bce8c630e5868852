"""Which instance each peer address's server proves in a TLS handshake, checked sparingly.

A member speaks only for itself: an answer from `address` that names instance X is believed
only once the server at `address` showed a certificate naming X (peers.py). The proof is a TLS
handshake of its own (grpc does not show a client the server's certificate), so it is cached
per address, and it is never repeated for every answer:

- concurrent answers from one address wait for the one handshake in flight;
- a handshake that failed or timed out (a peer busy or still starting) proves nothing either
  way: answers naming an unproven instance are refused until the next check, at most one per
  `recheck_s` per address, so a loaded cluster is not loaded further by handshakes;
- a handshake that proved another instance (a liar, or a new node at an old address) is also
  checked again only after `recheck_s`.

Event-loop contract: every method runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

RECHECK_S = 1.0
"""The least time between two identity handshakes with one address."""


@dataclass(frozen=True)
class Proof:
    """What one handshake with an address showed."""

    instance: str | None
    """The instance id its certificate names; None if the handshake did not complete."""
    problem: str = ""
    """Why the last handshake did not complete (timed out, refused, ...); `instance` is then
    what an earlier one proved, if any."""
    at: float = 0.0
    """Monotonic time the handshake ended."""


class ServerProofs:
    """Cached, shared, rate-limited identity handshakes, one address at a time."""

    def __init__(
        self, handshake: Callable[[str], Awaitable[str | None]], recheck_s: float = RECHECK_S
    ) -> None:
        self._handshake = handshake
        """Returns the instance id the server at an address proves; raises OSError/TimeoutError."""
        self._recheck_s = recheck_s
        self._last: dict[str, Proof] = {}
        self._checking: dict[str, asyncio.Future[Proof]] = {}

    async def proof(self, address: str, claim: str) -> Proof:
        """A proof about `address` that is fresh enough to judge `claim` (an instance id):
        the cached one if it names `claim` or is younger than `recheck_s`, else a new handshake
        (shared with any other caller asking meanwhile)."""
        last = self._last.get(address)
        if last is not None and (last.instance == claim or time.monotonic() - last.at < self._recheck_s):
            return last
        pending = self._checking.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._check(address))
            self._checking[address] = pending
            pending.add_done_callback(lambda _: self._checking.pop(address, None))
        # A caller that is cancelled (its probe timed out) leaves the handshake to the others.
        return await asyncio.shield(pending)

    async def _check(self, address: str) -> Proof:
        try:
            instance = await self._handshake(address)
        except (OSError, TimeoutError) as e:
            # Nothing proven now; what was proven before stands (dated: the next check waits).
            before = self._last.get(address)
            proof = Proof(before.instance if before else None, str(e) or type(e).__name__, time.monotonic())
        else:
            proof = Proof(instance, "", time.monotonic())
        self._last[address] = proof
        return proof

    def forget(self, address: str) -> None:
        """Drop what is known about `address` (a member gone for good)."""
        self._last.pop(address, None)
