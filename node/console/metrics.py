"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Nothing here runs per job: job counters and histograms are folded in once per group commit
(node/console/counting.py, which the node keeps from its start); everything else is read when
`/metrics` is scraped (`NodeMetrics.scrape`): QUEUED/ACTIVE totals and outbox depths with one
covering-index query each (the per-queue-and-topic breakdown, which reads every unfinished
job's row, at most every `BREAKDOWN_REFRESH_S`), and counters other parts already keep
(membership, transfer frames, remote workers).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from node.console.counting import Buckets, JobCounters, Sources
from node.journal.counts import unfinished_counts
from node.model.job import JobState

BREAKDOWN_REFRESH_S = 10.0
"""How often a scrape re-reads the QUEUED/ACTIVE counts per queue and topic (the totals are
read at every scrape)."""


def histogram(buckets: Buckets, name: str, documentation: str, unit: str = "") -> HistogramMetricFamily:
    """The cumulative Prometheus form of `buckets`."""
    counts = list(buckets.counts)  # a copy: the writer thread may add while this runs
    cumulative, cells = 0, []
    for bound, count in zip((*map(str, buckets.bounds), "+Inf"), counts, strict=True):
        cumulative += count
        cells.append((bound, float(cumulative)))
    return HistogramMetricFamily(name, documentation, buckets=cells, sum_value=buckets.sum, unit=unit)


def job_families(counters: JobCounters) -> Iterator[Metric]:
    """The job counters and histograms as Prometheus families."""
    labels = ["queue", "topic"]
    for name, doc, table in (
        ("jobmesh_jobs_added", "Jobs added to this node's journal (its own and peers').", counters.added),
        ("jobmesh_job_retries", "Attempts that failed and were queued again.", counters.retried),
        ("jobmesh_jobs_removed", "Jobs removed by a user.", counters.removed),
    ):
        family = CounterMetricFamily(name, doc, labels=labels)
        for key, value in list(table.items()):
            family.add_metric(list(key), value)
        yield family
    ended = CounterMetricFamily(
        "jobmesh_jobs_finished", "Jobs that reached a final state.", labels=[*labels, "state"]
    )
    for key3, value in list(counters.ended.items()):
        ended.add_metric(list(key3), value)
    yield ended
    yield histogram(
        counters.waiting,
        "jobmesh_job_wait_seconds",
        "Time from queued (or due) to the start of an attempt.",
        "seconds",
    )
    yield histogram(
        counters.running, "jobmesh_job_run_seconds", "Run time of attempts that ended.", "seconds"
    )
    yield CounterMetricFamily(
        "jobmesh_journal_commits", "Journal transactions committed.", value=counters.commits
    )
    yield histogram(counters.batches, "jobmesh_journal_commit_operations", "Operations per group commit.")


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


class NodeMetrics:
    """The node's registry: job counters, scrape-time gauges and the process collector."""

    def __init__(self, counters: JobCounters, sources: Sources) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = counters
        self._sources = sources
        self._snapshot = Snapshot()
        self.registry.register(self)
        ProcessCollector(namespace="jobmesh", registry=self.registry)

    async def scrape(self) -> bytes:
        """The text exposition, after reading the journal's live counts."""
        if not self._sources.journal.closed:
            previous, now = self._snapshot, time.monotonic()
            self._snapshot = await self._sources.journal.read(lambda c: _read_snapshot(c, previous, now))
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        """Nothing up front: families are made at collection."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family but the process collector's (prometheus_client's Collector protocol)."""
        yield from job_families(self.jobs)
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
