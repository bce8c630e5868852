"""How many jobs wait and run, by queue and topic: read by GetStatistics, ListQueues and the
metrics' per-queue-and-topic breakdown."""

from __future__ import annotations

import sqlite3

from node.journal.records import ACTIVE, QUEUED
from node.model.job import JobState

# QUEUED jobs from the entries of jobs_ready_topic alone, grouped in the index's own order: no
# row is read and no sort is needed (a GROUP BY over the jobs read every row: 1.1 s at 1,000,000
# queued jobs, 0.14 s this way). ACTIVE ones are few (what runs, and what peers run for this
# origin): their rows are read.
_QUEUED = (
    f"SELECT queue, topic, count(*) FROM jobs INDEXED BY jobs_ready_topic WHERE state = {QUEUED} "
    "GROUP BY target, queue, topic"
)
_ACTIVE = f"SELECT queue, topic, count(*) FROM jobs INDEXED BY jobs_state WHERE state = {ACTIVE} GROUP BY queue, topic"


def unfinished_counts(conn: sqlite3.Connection) -> list[tuple[str, str, JobState, int]]:
    """(queue, topic, state, count) of the QUEUED and ACTIVE jobs, one row per combination."""
    counts: dict[tuple[str, str, JobState], int] = {}
    for statement, state in ((_QUEUED, JobState.QUEUED), (_ACTIVE, JobState.ACTIVE)):
        for queue, topic, count in conn.execute(statement):
            key = (queue, topic, state)  # QUEUED: one row per target
            counts[key] = counts.get(key, 0) + int(count)
    return [(queue, topic, state, count) for (queue, topic, state), count in counts.items()]
