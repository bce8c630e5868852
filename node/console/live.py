"""What keeps the console's pages live: server-sent event streams fed by the node's own job
events (the journal's committed events, as WatchJobs serves them) and topology events (as
WatchTopology serves them), a timeline of topology events, and the job rates of the last hour.

Cost: the journal row listener exists only while a page streams job events; per event and
stream it compares one number and looks the job id up in the set of jobs the page shows (event
rows are never turned into objects for it). Streams send what changed at most every `FLUSH_S`.
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

from node.console.counting import JobCounters
from node.discovery.events import Subscription, TopologyEvent
from node.discovery.topology import Topology
from node.journal.journal import Journal
from node.model.events import EventType
from node.model.job import JobState
from node.waits import wait_event

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
MAX_STREAM_JOBS = 100
"""Jobs one stream follows (a page of jobs, or one job)."""
_ADDED, _PROGRESS = int(EventType.ADDED), int(EventType.PROGRESS)
_STATE_NAMES = {int(s): s.name for s in JobState}


@dataclass
class JobStream:
    """One page's stream: changes of the jobs it shows, and how many jobs were added."""

    job_ids: frozenset[str] = frozenset()
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, rows: list[tuple[Any, ...]]) -> None:
        """Note the event rows (`EVENT_COLUMNS` order) this stream wants (on the loop, per
        commit): a counter and a set lookup per event, a dict only for the jobs shown."""
        ids = self.job_ids
        for row in rows:
            if row[1] == _ADDED:
                self.added += 1
            if row[3] not in ids:
                continue
            update = self.changed.setdefault(row[3], {"id": row[3]})
            update["state"] = _STATE_NAMES.get(row[6], str(row[6]))
            if row[1] == _PROGRESS:
                update.update(done=row[10] or 0, total=row[9] or 0, eta_us=row[11] or 0)
            elif row[8]:
                update["message"] = row[8]
        self.wake.set()

    def flush(self) -> dict[str, Any] | None:
        """What changed since the last flush, or None."""
        if not self.changed and not self.added:
            return None
        data = {"jobs": list(self.changed.values()), "added": self.added}
        self.changed, self.added = {}, 0
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
                await wait_event(waiter, KEEPALIVE_S)
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
                await wait_event(self.closing, OVERVIEW_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    # --- jobs ---

    def _listen(self, rows: list[tuple[Any, ...]]) -> None:
        for stream in self._streams:
            stream.take(rows)

    def _unlisten(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    async def job_stream(
        self, request: web.Request, job_ids: frozenset[str], current: Current | None = None
    ) -> web.StreamResponse:
        """`text/event-stream` of the changes of the jobs `job_ids` and of the count of jobs
        added. `current`
        reads the named jobs as they are once the stream follows the events, so a change
        between the page's rendering and the stream's start is not missed."""
        response = await _open_stream(request)
        stream = JobStream(job_ids)
        self._streams.append(stream)
        if self._remove_listener is None:
            self._remove_listener = self._journal.add_row_listener(self._listen)
        last_sent = time.monotonic()
        try:
            if current is not None:
                await _send(response, {"jobs": await current(), "added": 0})
            while not self.closing.is_set():
                await wait_event(stream.wake, KEEPALIVE_S)
                stream.wake.clear()
                if self.closing.is_set():
                    break
                data = stream.flush()
                if data is not None and current is not None:
                    data[
                        "jobs"
                    ] = await current()  # one job's page: its state, progress and log as they are now
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
