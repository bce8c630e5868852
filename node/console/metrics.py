"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Nothing here runs per job on the hot path beyond one dict increment or one bisect: job counters
and histograms are folded in once per group commit (`JobCounters`, the journal recorder's
commit observer, on the writer thread); everything else is read when `/metrics` is scraped
(`NodeMetrics.scrape`): QUEUED/ACTIVE totals and outbox depths with one covering-index query
each (the per-queue-and-topic breakdown, which reads every unfinished job's row, at most every
`BREAKDOWN_REFRESH_S`), and counters other parts already keep (membership, transfer frames,
remote workers).
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from node.discovery.membership import MembershipCounters
from node.jobs.remote import RemoteWorkers
from node.journal.counts import unfinished_counts
from node.journal.journal import Journal
from node.model.events import EventType
from node.model.job import JobState

WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
RUN_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
BREAKDOWN_REFRESH_S = 10.0
"""How often a scrape re-reads the QUEUED/ACTIVE counts per queue and topic (the totals are
read at every scrape)."""
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

    def family(self, name: str, documentation: str, unit: str = "") -> HistogramMetricFamily:
        """The cumulative Prometheus form."""
        counts = list(self.counts)  # a copy: the writer thread may add while this runs
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum, unit=unit)


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

    def families(self) -> Iterator[Metric]:
        """Counters and histograms as Prometheus families."""
        labels = ["queue", "topic"]
        for name, doc, table in (
            ("jobmesh_jobs_added", "Jobs added to this node's journal (its own and peers').", self.added),
            ("jobmesh_job_retries", "Attempts that failed and were queued again.", self.retried),
            ("jobmesh_jobs_removed", "Jobs removed by a user.", self.removed),
        ):
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in list(table.items()):
                family.add_metric(list(key), value)
            yield family
        ended = CounterMetricFamily(
            "jobmesh_jobs_finished", "Jobs that reached a final state.", labels=[*labels, "state"]
        )
        for key3, value in list(self.ended.items()):
            ended.add_metric(list(key3), value)
        yield ended
        yield self.waiting.family(
            "jobmesh_job_wait_seconds", "Time from queued (or due) to the start of an attempt.", "seconds"
        )
        yield self.running.family("jobmesh_job_run_seconds", "Run time of attempts that ended.", "seconds")
        yield CounterMetricFamily(
            "jobmesh_journal_commits", "Journal transactions committed.", value=self.commits
        )
        yield self.batches.family("jobmesh_journal_commit_operations", "Operations per group commit.")


@dataclass
class Snapshot:
    """What a scrape reads from the journal first (on a reader thread)."""

    totals: dict[int, int] = field(default_factory=dict)
    """State -> count of QUEUED and ACTIVE jobs (one covering index: cheap at every scrape)."""
    unfinished: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(queue, topic, state, count) of QUEUED and ACTIVE jobs (`unfinished_counts`: an index
    entry per waiting job, a row per running one; read at most every `BREAKDOWN_REFRESH_S`)."""
    outbox: list[tuple[str, int]] = field(default_factory=list)
    """(peer, undelivered items)."""
    breakdown_at: float = 0.0


def _read_snapshot(conn: sqlite3.Connection, previous: Snapshot, now: float) -> Snapshot:
    totals = conn.execute(
        "SELECT state, count(*) FROM jobs INDEXED BY jobs_state WHERE state IN (1, 2) GROUP BY state"
    ).fetchall()
    unfinished, breakdown_at = previous.unfinished, previous.breakdown_at
    if now - breakdown_at >= BREAKDOWN_REFRESH_S:
        rows = unfinished_counts(conn)
        unfinished, breakdown_at = [(queue, topic, int(state), n) for queue, topic, state, n in rows], now
    outbox = conn.execute("SELECT peer, count(*) FROM outbox GROUP BY peer").fetchall()
    return Snapshot(
        {int(r[0]): int(r[1]) for r in totals}, unfinished, [tuple(r) for r in outbox], breakdown_at
    )


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


class NodeMetrics:
    """The node's registry: job counters, scrape-time gauges and the process collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = JobCounters()
        self._sources: Sources | None = None
        self._snapshot = Snapshot()
        self.registry.register(self)
        ProcessCollector(namespace="jobmesh", registry=self.registry)

    def attach(self, sources: Sources) -> None:
        """Start observing the journal's commits and read the other parts at scrapes."""
        self._sources = sources
        sources.journal.recorder.observer = self.jobs

    def detach(self) -> None:
        """Stop observing (the node is closing)."""
        if self._sources is not None and self._sources.journal.recorder.observer is self.jobs:
            self._sources.journal.recorder.observer = None

    async def scrape(self) -> bytes:
        """The text exposition, after reading the journal's live counts."""
        if self._sources is not None and not self._sources.journal.closed:
            previous, now = self._snapshot, time.monotonic()
            self._snapshot = await self._sources.journal.read(lambda c: _read_snapshot(c, previous, now))
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        """Nothing up front: families are made at collection."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family but the process collector's (prometheus_client's Collector protocol)."""
        yield from self.jobs.families()
        totals = self._snapshot.totals
        yield GaugeMetricFamily(
            "jobmesh_jobs_queued", "Jobs QUEUED now.", value=totals.get(JobState.QUEUED, 0)
        )
        yield GaugeMetricFamily(
            "jobmesh_jobs_active", "Jobs ACTIVE now.", value=totals.get(JobState.ACTIVE, 0)
        )
        doc = f"Jobs {{}} now, by queue and topic (refreshed at most every {BREAKDOWN_REFRESH_S:g} s)."
        labels = ["queue", "topic"]
        gauges = {
            JobState.QUEUED: GaugeMetricFamily(
                "jobmesh_jobs_queued_by_topic", doc.format("QUEUED"), labels=labels
            ),
            JobState.ACTIVE: GaugeMetricFamily(
                "jobmesh_jobs_active_by_topic", doc.format("ACTIVE"), labels=labels
            ),
        }
        for queue, topic, state, count in self._snapshot.unfinished:
            gauges[JobState(state)].add_metric([queue, topic], count)
        yield from gauges.values()
        outbox = GaugeMetricFamily(
            "jobmesh_outbox_items", "Undelivered transfer outbox items.", labels=["peer"]
        )
        for peer, count in self._snapshot.outbox:
            outbox.add_metric([peer], count)
        yield outbox
        if self._sources is not None:
            yield from self._parts(self._sources)

    def _parts(self, sources: Sources) -> Iterator[Metric]:
        members = GaugeMetricFamily("jobmesh_members", "Members this node knows, by state.", labels=["state"])
        for state, count in sources.members().items():
            members.add_metric([state], count)
        yield members
        counters = sources.membership()
        if counters is not None:
            for name, doc, value in (
                ("jobmesh_membership_probes", "Membership probes sent.", counters.probes),
                ("jobmesh_membership_suspicions", "Members seen turning SUSPECT.", counters.suspicions),
                (
                    "jobmesh_membership_refutations",
                    "Suspicions of this node it refuted.",
                    counters.refutations,
                ),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            yield GaugeMetricFamily(
                "jobmesh_membership_local_health",
                "This node's local health score (0 healthy; probe timings are stretched score + 1 times).",
                value=counters.local_health,
            )
        names = (
            ("jobmesh_transfer_frames_sent", "Transfer frames sent to a peer."),
            ("jobmesh_transfer_sent_bytes", "Encoded bytes of the transfer frames sent to a peer."),
            ("jobmesh_transfer_frames_received", "Transfer frames received from a peer."),
            ("jobmesh_transfer_received_bytes", "Encoded bytes of the transfer frames received from a peer."),
        )
        for (name, doc), table in zip(names, sources.frames(), strict=True):
            family = CounterMetricFamily(name, doc, labels=["peer"])
            for peer, value in list(table.items()):
                family.add_metric([peer], value)
            yield family
        reconciled = sources.reconciled()
        for key, doc in (
            (
                "reports_resent",
                "Offloaded jobs whose report their target sent again when asked (lost or late).",
            ),
            ("reassigned_unknown", "Offloaded jobs reassigned because their target did not know them."),
            (
                "dropped_fenced",
                "Queued jobs of other origins dropped unrun: their origin had reassigned them.",
            ),
            ("confirmations", "Leases on origins confirmed by asking them (Reconcile)."),
        ):
            yield CounterMetricFamily(f"jobmesh_reconcile_{key}", doc, value=reconciled.get(key, 0))
        workers = sources.workers.workers
        yield GaugeMetricFamily("jobmesh_worker_streams", "Connected remote workers.", value=len(workers))
        in_flight = GaugeMetricFamily(
            "jobmesh_worker_jobs_in_flight", "Jobs sent to a remote worker, unanswered.", labels=["worker"]
        )
        for worker in workers:
            in_flight.add_metric([worker.name], worker.outstanding)
        yield in_flight
