"""What a node's metrics count and read, without Prometheus: node/console/metrics.py makes the
families when `/metrics` is scraped, and it loads only with the console.

Job counters and histograms are folded in once per group commit (`JobCounters`, the journal
recorder's commit observer, on the writer thread): one dict increment or one bisect per job.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node.discovery.membership import MembershipCounters
from node.jobs.remote import RemoteWorkers
from node.journal.journal import Journal
from node.model.events import EventType
from node.model.job import JobState

WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
RUN_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
BATCH_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
_ENDED_TYPES = frozenset(
    {int(EventType.FINISHED), int(EventType.FAILED), int(EventType.CANCELLED), int(EventType.STOPPED)}
)
_STATE_NAMES = {int(s): s.name for s in JobState}


class Buckets:
    """A histogram kept as plain counts: one bisect and one increment per observation."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count `value` in its bucket."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class JobCounters:
    """Job events and timings per commit (a `CommitObserver`; its `committed` runs on the
    journal's writer thread, the families are read on the loop)."""

    def __init__(self) -> None:
        self.added: dict[tuple[str, str], int] = {}
        self.ended: dict[tuple[str, str, str], int] = {}
        self.retried: dict[tuple[str, str], int] = {}
        self.removed: dict[tuple[str, str], int] = {}
        self.waiting = Buckets(WAIT_BUCKETS_S)
        self.running = Buckets(RUN_BUCKETS_S)
        self.batches = Buckets(BATCH_BUCKETS)
        self.commits = 0

    def committed(
        self,
        operations: int,
        events: list[tuple[Any, ...]],
        stats: list[tuple[str, str, int, int | None, int]],
    ) -> None:
        """Fold one commit in (see `node.journal.recorder.CommitObserver`)."""
        self.commits += 1
        self.batches.observe(operations)
        for event in events:
            kind, key = event[1], (event[5], event[4])  # queue, topic
            if kind == EventType.ADDED:
                self.added[key] = self.added.get(key, 0) + 1
            elif kind in _ENDED_TYPES:
                if event[6] == JobState.QUEUED:  # a failed attempt that will be retried
                    self.retried[key] = self.retried.get(key, 0) + 1
                else:
                    ended = (*key, _STATE_NAMES.get(event[6], str(event[6])))
                    self.ended[ended] = self.ended.get(ended, 0) + 1
            elif kind == EventType.REMOVED:
                self.removed[key] = self.removed.get(key, 0) + 1
        for _queue, _topic, kind, value, _now in stats:
            if value is not None:
                (self.waiting if kind == 0 else self.running).observe(value / 1e6)


@dataclass
class Sources:
    """The parts of a node the metrics read (set as the node starts)."""

    journal: Journal
    workers: RemoteWorkers
    membership: Callable[[], MembershipCounters | None]
    members: Callable[[], dict[str, int]]
    """Members this node knows, by state name (itself included)."""
    frames: Callable[[], tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]]
    """Frames sent, bytes sent, frames received, bytes received, per peer."""
    reconciled: Callable[[], dict[str, int]] = dict
    """What reconciliation did (node/transfer/reconcile.py ReconcileCounts, by field name)."""
