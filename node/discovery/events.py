"""Topology events (Sling's TopologyEvent) and the tracker that settles views and emits them.

Membership news arrives in bursts (a node joins and gossip brings it from several peers; a
partition kills half the cluster). The tracker publishes a new view only after
`settle_delay_s` without further change (and at most 5 settle delays after the first), so a
burst becomes one event:

- TOPOLOGY_INIT (old none, new = current view): the first event every listener gets;
- TOPOLOGY_CHANGING (old = current view, new none): as soon as membership starts changing;
- TOPOLOGY_CHANGED (old, new): once it settled; always follows a CHANGING;
- PROPERTIES_CHANGED (old, new): same instances, new instance properties.

A change of state alone (ALIVE <-> SUSPECT) or of last-heard times is no event: it shows in
the live fields of `Topology.view`.

Listener contract: listeners are called on the node's event loop, one event at a time, in
order, and must return quickly (hand slow work to a task or a thread). An exception in a
listener is logged and does not affect other listeners. `EventStream` is the async-iterator
form with its own queue.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from jobmesh.v1 import topology_pb2

from node.discovery.view import TopologyView, timestamp_us
from node.instance import now_us

log = logging.getLogger(__name__)

MAX_SETTLE_FACTOR = 5
"""A burst that keeps going is published after at most this many settle delays."""
STREAM_QUEUE_LIMIT = 1000
"""Events an EventStream buffers before its reader counts as hopelessly behind."""


class TopologyEventType(enum.Enum):
    """The kinds of topology events."""

    TOPOLOGY_INIT = "TOPOLOGY_INIT"
    TOPOLOGY_CHANGING = "TOPOLOGY_CHANGING"
    TOPOLOGY_CHANGED = "TOPOLOGY_CHANGED"
    PROPERTIES_CHANGED = "PROPERTIES_CHANGED"

    def to_proto(self) -> topology_pb2.TopologyEventType.ValueType:
        """The TopologyEventType enum value."""
        return _TO_PROTO[self]


_TO_PROTO = {
    TopologyEventType.TOPOLOGY_INIT: topology_pb2.TOPOLOGY_EVENT_TYPE_INIT,
    TopologyEventType.TOPOLOGY_CHANGING: topology_pb2.TOPOLOGY_EVENT_TYPE_CHANGING,
    TopologyEventType.TOPOLOGY_CHANGED: topology_pb2.TOPOLOGY_EVENT_TYPE_CHANGED,
    TopologyEventType.PROPERTIES_CHANGED: topology_pb2.TOPOLOGY_EVENT_TYPE_PROPERTIES_CHANGED,
}


@dataclass(frozen=True)
class TopologyEvent:
    """One topology event: its type, the view before (None for INIT) and after (None for CHANGING)."""

    type: TopologyEventType
    old_view: TopologyView | None
    new_view: TopologyView | None
    time_us: int

    def to_proto(self) -> topology_pb2.TopologyEvent:
        """The API form."""
        proto = topology_pb2.TopologyEvent(type=self.type.to_proto(), time=timestamp_us(self.time_us))
        if self.old_view is not None:
            proto.old_view.CopyFrom(self.old_view.to_proto())
        if self.new_view is not None:
            proto.new_view.CopyFrom(self.new_view.to_proto())
        return proto


TopologyListener = Callable[[TopologyEvent], None]
"""Called with each event, on the node's event loop; must not block."""


class Subscription:
    """A registered listener; `cancel()` stops delivery."""

    def __init__(self, tracker: ViewTracker, listener: TopologyListener) -> None:
        self._tracker = tracker
        self.listener = listener

    def cancel(self) -> None:
        """Stop delivering events to the listener."""
        self._tracker._unsubscribe(self)


class EventStreamOverflow(Exception):
    """An EventStream's reader fell more than STREAM_QUEUE_LIMIT events behind."""


class EventStream:
    """Topology events as an async iterator: `async for event in topology.events(): ...`.

    Ends when the node stops or `close()` is called; raises EventStreamOverflow if the reader
    falls too far behind. Use it on the node's event loop.
    """

    def __init__(self, tracker: ViewTracker) -> None:
        self._queue: asyncio.Queue[TopologyEvent | None] = asyncio.Queue()
        self._overflow = False
        self._tracker = tracker
        tracker._streams.add(self)
        self._subscription = tracker.subscribe(self._put)

    def _put(self, event: TopologyEvent | None) -> None:
        if self._queue.qsize() >= STREAM_QUEUE_LIMIT:
            self._overflow = True
            self._subscription.cancel()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop the stream; a pending or later `__anext__` ends the iteration."""
        self._tracker._streams.discard(self)
        self._subscription.cancel()
        self._queue.put_nowait(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TopologyEvent:
        event = await self._queue.get()
        if event is None:
            if self._overflow:
                raise EventStreamOverflow(f"the reader fell more than {STREAM_QUEUE_LIMIT} events behind")
            self._queue.put_nowait(None)  # stay ended for every later call
            raise StopAsyncIteration
        return event


class ViewTracker:
    """Settles membership changes into views and emits events. Runs on the node's event loop.

    `snapshot(version)` builds a view of the membership as it is now; `changed()` is called
    after every membership change.
    """

    def __init__(
        self, settle_delay_s: float, snapshot: Callable[[int, Callable[[TopologyView], bool]], TopologyView]
    ) -> None:
        self.settle_delay_s = settle_delay_s
        self._snapshot = snapshot
        self._version = 1
        self._view = snapshot(1, self._is_current)
        self.changing = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._first_change = 0.0
        self._subscriptions: list[Subscription] = []
        self._streams: set[EventStream] = set()

    @property
    def view(self) -> TopologyView:
        """The current settled view."""
        return self._view

    def _is_current(self, view: TopologyView) -> bool:
        return view.version == self._version and not self.changing and not self._closed

    def subscribe(self, listener: TopologyListener) -> Subscription:
        """Register `listener`; it gets TOPOLOGY_INIT now (and CHANGING if a change is settling)."""
        subscription = Subscription(self, listener)
        self._subscriptions.append(subscription)
        self._deliver(
            subscription, TopologyEvent(TopologyEventType.TOPOLOGY_INIT, None, self._view, now_us())
        )
        if self.changing:
            event = TopologyEvent(TopologyEventType.TOPOLOGY_CHANGING, self._view, None, now_us())
            self._deliver(subscription, event)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def changed(self) -> None:
        """Membership or properties may have changed: start (or extend) settling."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        candidate = self._snapshot(self._version, lambda _: False)
        members_differ = not candidate.same_members(self._view)
        if members_differ and not self.changing:
            self.changing = True
            self._emit(TopologyEvent(TopologyEventType.TOPOLOGY_CHANGING, self._view, None, now_us()))
        if not members_differ and candidate.same_properties(self._view):
            # Only live fields (state, last heard) changed, or a change was undone: nothing new
            # to wait for. A pending settle still runs (a CHANGING must be followed by CHANGED).
            return
        now = loop.time()
        if self._timer is None:
            self._first_change = now
        else:
            self._timer.cancel()
        due = min(now + self.settle_delay_s, self._first_change + MAX_SETTLE_FACTOR * self.settle_delay_s)
        self._timer = loop.call_at(due, self._settle)

    def _settle(self) -> None:
        self._timer = None
        if self._closed:
            return
        old = self._view
        new = self._snapshot(self._version + 1, self._is_current)
        if self.changing or not new.same_members(old):
            kind = TopologyEventType.TOPOLOGY_CHANGED
        elif not new.same_properties(old):
            kind = TopologyEventType.PROPERTIES_CHANGED
        else:
            return
        self._version += 1
        self._view = new
        self.changing = False
        self._emit(TopologyEvent(kind, old, new, now_us()))

    def close(self) -> None:
        """Stop: the current view is no longer current; streams end."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in list(self._streams):
            stream.close()
        self._subscriptions.clear()

    def _emit(self, event: TopologyEvent) -> None:
        log.debug("topology event %s (view %d)", event.type.value, self._version)
        for subscription in list(self._subscriptions):
            self._deliver(subscription, event)

    @staticmethod
    def _deliver(subscription: Subscription, event: TopologyEvent) -> None:
        try:
            subscription.listener(event)
        except Exception:
            log.exception("topology listener %r failed on %s", subscription.listener, event.type.value)
