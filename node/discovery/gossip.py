"""The broadcast queue: membership news waiting to be piggybacked on messages or pushed.

memberlist's TransmitLimitedQueue: each record is sent a limited number of times,
`retransmit_mult * ceil(log10(members + 1))`, which reaches every member with high
probability; the least-sent records go first, and newer news about a member replaces older.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from node.discovery.membership import MemberRecord


@dataclass
class _Pending:
    record: MemberRecord
    sent: int = 0


class BroadcastQueue:
    """Pending membership news, at most one record per member. Use from one thread (the loop)."""

    def __init__(self, retransmit_mult: int, on_news: Callable[[], None] | None = None) -> None:
        self.retransmit_mult = retransmit_mult
        self._pending: dict[str, _Pending] = {}
        self._on_news = on_news
        """Called after every `add` (the gossip round sleeps while nothing is pending)."""

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: MemberRecord) -> None:
        """Queue `record`, replacing any older news about the same member."""
        self._pending[record.id] = _Pending(record)
        if self._on_news is not None:
            self._on_news()

    def retransmit_limit(self, members: int) -> int:
        """How often one record is sent in a cluster of `members` (this node included)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(members + 1)))

    def take(self, limit: int, members: int) -> list[MemberRecord]:
        """Up to `limit` records for one message, least-sent first; counts them as sent."""
        if not self._pending or limit <= 0:
            return []
        chosen = sorted(self._pending.values(), key=lambda p: p.sent)[:limit]
        budget = self.retransmit_limit(members)
        for pending in chosen:
            pending.sent += 1
            if pending.sent >= budget:
                del self._pending[pending.record.id]
        return [p.record for p in chosen]
