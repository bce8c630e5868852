"""What keeps the console's pages live: server-sent event streams fed by the node's own job
events (the journal's committed events, as WatchJobs serves them) and topology events (as
WatchTopology serves them), a timeline of topology events, and the job rates of the last hour.

Cost: the journal listener exists only while a page streams job events; per event it does one
dict store for each stream that wants it. Streams send what changed at most every `FLUSH_S`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from node.console.metrics import JobCounters
from node.discovery.events import Subscription, TopologyEvent
from node.discovery.topology import Topology
from node.journal.journal import Journal
from node.model.events import EventType, JobEvent

Current = Callable[[], Awaitable[list[dict[str, Any]]]]
FLUSH_S = 0.5
"""How often a stream sends what changed (a push, not a poll)."""
KEEPALIVE_S = 15.0
OVERVIEW_S = 2.0
"""How often the overview's stream sends the rates."""
RATE_SAMPLE_S = 10.0
RATE_SAMPLES = 360
"""One hour of samples, every `RATE_SAMPLE_S`."""
TIMELINE_EVENTS = 200
MAX_PENDING = 200
"""Changed jobs a stream keeps between two sends (beyond that it counts them only)."""


@dataclass
class JobStream:
    """One page's stream of job changes: all jobs (the jobs list) or the ones named."""

    job_ids: frozenset[str] = frozenset()
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: int = 0
    more: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, events: list[JobEvent]) -> None:
        """Note the events this stream wants (on the loop, per commit)."""
        for event in events:
            if self.job_ids and event.job_id not in self.job_ids:
                continue
            if event.type is EventType.ADDED:
                self.added += 1
            if len(self.changed) >= MAX_PENDING and event.job_id not in self.changed:
                self.more += 1
                continue
            row = self.changed.setdefault(event.job_id, {"id": event.job_id})
            row["state"] = event.state.name
            if event.type is EventType.PROGRESS:
                row.update(done=event.progress_done, total=event.progress_total, eta_us=event.eta_us or 0)
            elif event.message:
                row["message"] = event.message
        self.wake.set()

    def flush(self) -> dict[str, Any] | None:
        """What changed since the last flush, or None."""
        if not self.changed and not self.added and not self.more:
            return None
        data = {"jobs": list(self.changed.values()), "added": self.added, "more": self.more}
        self.changed, self.added, self.more = {}, 0, 0
        return data


class LiveFeeds:
    """The console's live state of one node (on the node's loop)."""

    def __init__(self, journal: Journal, topology: Topology, counters: JobCounters) -> None:
        self._journal = journal
        self._topology = topology
        self._counters = counters
        self._streams: list[JobStream] = []
        self._remove_listener: Callable[[], None] | None = None
        self._subscription: Subscription | None = None
        self._topology_waiters: list[asyncio.Event] = []
        self.timeline: collections.deque[TopologyEvent] = collections.deque(maxlen=TIMELINE_EVENTS)
        self.rates: collections.deque[tuple[float, int, int, int]] = collections.deque(maxlen=RATE_SAMPLES)
        """(unix time, added, succeeded, failed) totals, one sample every RATE_SAMPLE_S."""
        self.closing = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow topology events and sample the job rates."""
        self._subscription = self._topology.subscribe(self._topology_event)
        self._sample()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_loop(), name="console-rates")

    async def stop(self) -> None:
        """End every stream and stop following."""
        self.closing.set()
        for stream in self._streams:
            stream.wake.set()
        for waiter in self._topology_waiters:
            waiter.set()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        self._unlisten()

    # --- rates ---

    def totals(self) -> tuple[int, int, int]:
        """Jobs added, succeeded and failed (given up or in error) so far."""
        c = self._counters
        succeeded = failed = 0
        for (_queue, _topic, state), count in list(c.ended.items()):
            if state == "SUCCEEDED":
                succeeded += count
            elif state in ("GIVEN_UP", "ERROR"):
                failed += count
        return sum(list(c.added.values())), succeeded, failed

    def _sample(self) -> None:
        self.rates.append((time.time(), *self.totals()))

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(RATE_SAMPLE_S)
            self._sample()

    def rate_series(self) -> list[tuple[float, float, float, float]]:
        """(unix time, added/s, succeeded/s, failed/s) between consecutive samples, and up to now."""
        samples = [*self.rates, (time.time(), *self.totals())]
        series = []
        for (t0, a0, s0, f0), (t1, a1, s1, f1) in itertools.pairwise(samples):
            span = max(t1 - t0, 1e-3)
            series.append((t1, (a1 - a0) / span, (s1 - s0) / span, (f1 - f0) / span))
        return series

    # --- topology ---

    def _topology_event(self, event: TopologyEvent) -> None:
        self.timeline.appendleft(event)
        for waiter in self._topology_waiters:
            waiter.set()

    async def topology_stream(self, request: web.Request) -> web.StreamResponse:
        """`text/event-stream`: one message per topology event (the page re-renders)."""
        response = await _open_stream(request)
        waiter = asyncio.Event()
        self._topology_waiters.append(waiter)
        try:
            while not self.closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), KEEPALIVE_S)
                if self.closing.is_set():
                    break
                if waiter.is_set():
                    waiter.clear()
                    latest = self.timeline[0] if self.timeline else None
                    await _send(response, {"type": latest.type.value if latest else ""})
                    await asyncio.sleep(1.0)  # a burst of events is one re-render
                else:
                    await response.write(b": keepalive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._topology_waiters.remove(waiter)
        return response

    async def overview_stream(self, request: web.Request) -> web.StreamResponse:
        """`text/event-stream`: the job rates every `OVERVIEW_S` (the overview's chart and totals)."""
        response = await _open_stream(request)
        try:
            while not self.closing.is_set():
                series = self.rate_series()
                added, succeeded, failed = self.totals()
                await _send(
                    response,
                    {
                        "rates": series[-RATE_SAMPLES:],
                        "added": added,
                        "succeeded": succeeded,
                        "failed": failed,
                    },
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), OVERVIEW_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    # --- jobs ---

    def _listen(self, events: list[JobEvent]) -> None:
        for stream in self._streams:
            stream.take(events)

    def _unlisten(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    async def job_stream(
        self, request: web.Request, job_ids: frozenset[str], current: Current | None = None
    ) -> web.StreamResponse:
        """`text/event-stream` of job changes (all jobs, or those of `job_ids`). `current`
        reads the named jobs as they are once the stream follows the events, so a change
        between the page's rendering and the stream's start is not missed."""
        response = await _open_stream(request)
        stream = JobStream(job_ids)
        self._streams.append(stream)
        if self._remove_listener is None:
            self._remove_listener = self._journal.add_event_listener(self._listen)
        last_sent = time.monotonic()
        try:
            if current is not None:
                await _send(response, {"jobs": await current(), "added": 0, "more": 0})
            while not self.closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.wake.wait(), KEEPALIVE_S)
                stream.wake.clear()
                if self.closing.is_set():
                    break
                data = stream.flush()
                if data is not None:
                    await _send(response, data)
                    last_sent = time.monotonic()
                    await asyncio.sleep(FLUSH_S)
                elif time.monotonic() - last_sent >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_sent = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.remove(stream)
            if not self._streams:
                self._unlisten()
        return response


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n")
