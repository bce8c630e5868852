"""The target's lease on each origin: no fenced work after a pause or a partition.

An origin reassigns a target's jobs only after the target has been out of contact (gone from
its view, with no transfer frame and no Reconcile call from it) for `offload.reassign_grace_s`.
So a target that heard from an origin at time t may start that origin's jobs until
t + `offload.confirm_window_s` (shorter than the grace): the origin cannot have reassigned them
by then. "Heard" counts only round trips the target started, from when it started them (a
frame the origin acknowledged, a Reconcile the origin answered), never a frame that merely
arrives: one sent before a pause could be read long after it.

Past the window (after a SIGSTOP monotonic time has jumped at once; in a partition it runs
out) the runners leave that origin's QUEUED jobs alone (`hold`, asked at every claim), and the
offloader asks the origin with Reconcile which of them are still this node's; it drops the
others unrun and the hold lifts. Only that answer lifts it: another round trip that renews the
lease first (a report frame acknowledged after a heal) does not, as the jobs queued here
through the lapse may have been reassigned in it. Likewise after a restart. A lease is renewed
before it lapses when the origin's jobs wait here and nothing else renewed it, so a steady flow
never waits.

A hold only begins by time passing (which the runners see at their next claim) and only ends in
`heard` or `confirmed`: both call `on_release` when an origin's hold ends, so runners that found
its jobs held and went idle look again. Without that, a renewal by a report frame lifted a hold
that no one acted on, and the jobs stayed QUEUED on an idle node.

Event-loop contract: every method runs on the node's loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node.journal.claims import NO_HOLD, Hold

IDLE_WINDOWS = 4
"""An origin with nothing queued here is asked about again after this many windows at most."""


class Lease:
    """When this node last heard from each origin whose jobs it holds, and what that allows."""

    def __init__(self, local_id: str, window_s: float, on_release: Callable[[], None] = lambda: None) -> None:
        self.local_id = local_id
        self.window_s = window_s
        self._on_release = on_release
        """Called when an origin's hold ends (the runners should look again)."""
        self._heard: dict[str, float] = {}
        """origin instance id -> monotonic time a round trip to it started (that it completed)."""
        self._origins: set[str] | None = None
        """Origins whose jobs came here (kept: a retry may queue one again); None until loaded at
        start (until then every job of another origin is held)."""
        self._idle_until: dict[str, float] = {}
        """origin -> monotonic time before which it is not asked (nothing of it was queued)."""
        self._lapsed: set[str] = set()
        """Origins whose lease lapsed (or that were queued here before a restart): their jobs
        queued here may have been reassigned meanwhile, so they stay held until a Reconcile about
        them is answered (`confirmed`), whatever other round trip renews the lease first."""

    def load(self, origins: set[str]) -> None:
        """The origins of the jobs queued here, read at start: none is heard from yet, and the
        node was down for a while, so each must be confirmed."""
        self._origins = set(origins) | (self._origins or set())
        self._lapsed |= set(origins) - {self.local_id}

    def arrived(self, origin: str) -> None:
        """A job of `origin` arrived here (its lease starts unconfirmed if it is new)."""
        if self._origins is not None and origin != self.local_id:
            self._origins.add(origin)
        self._idle_until.pop(origin, None)

    def nothing_queued(self, origin: str) -> None:
        """`origin` has no job queued here now: not asked again for `IDLE_WINDOWS` windows, unless a
        job of it arrives. It stays held when its lease lapses: a job of it that a retry queues
        here again waits for the next question (the retry's delay plus at most that long)."""
        self._idle_until[origin] = time.monotonic() + IDLE_WINDOWS * self.window_s

    def heard(self, origin: str, started_at: float) -> None:
        """A round trip to `origin` that started at monotonic `started_at` completed. It renews
        the lease, but if the lease ran out since the last one, the lapse stands until confirmed."""
        was_held = self.holds(origin)
        previous = self._heard.get(origin)
        if previous is not None and started_at - previous >= self.window_s:
            self._lapsed.add(origin)  # a gap: what is queued here may have been reassigned in it
        if previous is None or started_at > previous:
            self._heard[origin] = started_at
        self._released_if(was_held, origin)

    def confirmed(self, origin: str, asked_at: float) -> None:
        """A Reconcile about every job of `origin` queued here, asked at monotonic `asked_at`, was
        answered and applied: the lease runs from the question, and any lapse is over."""
        was_held = self.holds(origin)
        self._lapsed.discard(origin)
        if asked_at > self._heard.get(origin, float("-inf")):
            self._heard[origin] = asked_at
        self._released_if(was_held, origin)

    def _released_if(self, was_held: bool, origin: str) -> None:
        if was_held and not self.holds(origin) and self._origins is not None:
            self._on_release()

    def holds(self, origin: str, now: float | None = None) -> bool:
        """True if `origin`'s jobs may not start here now: its lease lapsed (and was not
        confirmed since) or never began."""
        now = time.monotonic() if now is None else now
        return origin in self._lapsed or now - self._heard.get(origin, float("-inf")) >= self.window_s

    def hold(self) -> Hold:
        """What the runners leave QUEUED now (the JobManager's `hold`, asked at every claim)."""
        if self._origins is None:
            return Hold(local_id=self.local_id)
        now = time.monotonic()
        held = frozenset(o for o in self._origins if self.holds(o, now))
        return Hold(origins=held) if held else NO_HOLD

    def to_confirm(self) -> list[str]:
        """Origins to ask now: lapsed, or past half their window (renewed before they lapse)."""
        if self._origins is None:
            return []
        now = time.monotonic()
        return sorted(
            o
            for o in self._origins
            if (o in self._lapsed or now - self._heard.get(o, float("-inf")) >= self.window_s / 2)
            and self._idle_until.get(o, 0.0) <= now
        )
