"""Reading job statistics: cumulative counters from `job_stats`, live counts from `jobs`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, fields

from jobmesh.v1 import jobs_pb2

from node.durations import duration_from_us
from node.journal.counts import unfinished_counts
from node.journal.journal import Journal
from node.journal.recorder import SCOPE_GLOBAL, SCOPE_QUEUE, StatsDelta
from node.model.job import JobState


@dataclass
class Statistics(StatsDelta):
    """Counters and timings of a set of jobs (Sling's Statistics): the cumulative counters the
    recorder keeps in `job_stats`, plus the live QUEUED and ACTIVE counts."""

    queued: int = 0
    active: int = 0

    @property
    def processed(self) -> int:
        """Attempts that ended: finished + failed + cancelled."""
        return self.finished + self.failed + self.cancelled

    @property
    def average_waiting_us(self) -> int:
        """Average time from queued to started."""
        return round(self.waiting_us / self.waiting_count) if self.waiting_count else 0

    @property
    def average_processing_us(self) -> int:
        """Average time from started to ended."""
        return round(self.processing_us / self.processing_count) if self.processing_count else 0

    def to_proto(self) -> jobs_pb2.Statistics:
        """The public proto form."""
        proto = jobs_pb2.Statistics(
            queued=self.queued,
            active=self.active,
            finished=self.finished,
            failed=self.failed,
            cancelled=self.cancelled,
            processed=self.processed,
            average_waiting=duration_from_us(self.average_waiting_us),
            average_processing=duration_from_us(self.average_processing_us),
        )
        if self.last_activated_us:
            proto.last_activated.FromMicroseconds(self.last_activated_us)
        if self.last_finished_us:
            proto.last_finished.FromMicroseconds(self.last_finished_us)
        return proto


@dataclass
class StatisticsReport:
    """Statistics of the whole node, per queue and per topic."""

    global_: Statistics = field(default_factory=Statistics)
    queues: dict[str, Statistics] = field(default_factory=dict)
    topics: dict[str, Statistics] = field(default_factory=dict)
    offloaded: dict[tuple[str, JobState], int] = field(default_factory=dict)
    """(target instance, state) -> how many jobs this origin offloaded there are in that state."""
    jobs: dict[JobState, int] = field(default_factory=dict)
    """State -> how many jobs this node is the origin of are in it (each job once, wherever it
    ran: the counters above count attempts where they ran)."""


_COUNTERS = tuple(f.name for f in fields(StatsDelta))  # job_stats columns, in order


async def read_statistics(journal: Journal, local_id: str | None = None) -> StatisticsReport:
    """Statistics as of now; with `local_id`, also the jobs this origin offloaded, by target and state."""

    def select(conn: sqlite3.Connection) -> StatisticsReport:
        report = StatisticsReport()
        for row in conn.execute(f"SELECT scope, name, {', '.join(_COUNTERS)} FROM job_stats"):
            scope, name = row["scope"], row["name"]
            if scope == SCOPE_GLOBAL:
                stats = report.global_
            else:
                table = report.queues if scope == SCOPE_QUEUE else report.topics
                stats = table.setdefault(name, Statistics())
            for attribute in _COUNTERS:
                setattr(stats, attribute, row[attribute])
        for queue, topic, state, count in unfinished_counts(conn):
            attribute = "queued" if state == JobState.QUEUED else "active"
            for stats in (
                report.global_,
                report.queues.setdefault(queue, Statistics()),
                report.topics.setdefault(topic, Statistics()),
            ):
                setattr(stats, attribute, getattr(stats, attribute) + count)
        if local_id is not None:
            # One pass over this origin's jobs gives both views: each job once by state, and the
            # offloaded ones by target.
            for target, state, count in conn.execute(
                "SELECT CASE WHEN target IS NULL OR target = ?1 THEN NULL ELSE target END AS elsewhere, "
                "state, count(*) FROM jobs WHERE origin = ?1 GROUP BY elsewhere, state",
                (local_id,),
            ):
                job_state = JobState(state)
                report.jobs[job_state] = report.jobs.get(job_state, 0) + count
                if target is not None:
                    report.offloaded[(target, job_state)] = count
        return report

    return await journal.read(select)
