"""The index of job properties that FindJobs templates search (schema v7, `job_properties`).

Every property of every job is one row (name, kind, value, topic, job_seq), so a template's condition is
a range of the primary key, not a scan of every job's JSON (node/templates.py compiles conditions
to both forms). The three writers of `jobs.properties` keep it equal to them in their own
transaction: `JobStore.insert` (AddJobs, transferred and scheduled jobs) calls `index_jobs_after`,
`Attempts.set_property` and `delete_jobs` call `unindex_job` / `index_job`. Not triggers: a
trigger's statement inside the writer's SAVEPOINT costs in proportion to the table (measured 20x
slower at 30,000 jobs), one statement per batch costs per job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from node.templates import PropertyKind

_T = "'$.\"$t\"'"
_B = "'$.\"$b\"'"


def property_rows(properties: str, seq: str, topic: str, source: str = "") -> str:
    """A SELECT of (name, kind, value, topic, job_seq) for each property in the JSON text
    `properties` (an SQL expression) of the job `seq` with `topic`, joined after `source`
    (e.g. "jobs, "): the rows of
    `job_properties`. Text that is not a JSON object gives no rows, never an error; JSON null and
    objects other than bytes and timestamps give none either (no template condition matches them)."""
    each = (
        f"json_each(CASE WHEN json_valid({properties}) THEN "
        f"CASE WHEN json_type({properties}) = 'object' THEN {properties} END END)"
    )
    k = PropertyKind
    return (
        "SELECT name, kind, value, topic, job_seq FROM (SELECT key AS name, "
        f"CASE type WHEN 'true' THEN {k.BOOL:d} WHEN 'false' THEN {k.BOOL:d} "
        f"WHEN 'integer' THEN {k.NUMBER:d} WHEN 'real' THEN {k.NUMBER:d} WHEN 'text' THEN {k.TEXT:d} "
        f"WHEN 'array' THEN {k.LIST:d} WHEN 'object' THEN "
        f"CASE WHEN json_type(value, {_T}) = 'integer' THEN {k.TIMESTAMP:d} "
        f"WHEN json_type(value, {_B}) = 'text' THEN {k.BYTES:d} END END AS kind, "
        "CASE type WHEN 'true' THEN 1 WHEN 'false' THEN 0 WHEN 'array' THEN value WHEN 'object' THEN "
        f"CASE WHEN json_type(value, {_T}) = 'integer' THEN json_extract(value, {_T}) "
        f"ELSE json_extract(value, {_B}) END ELSE atom END AS value, {topic} AS topic, {seq} AS job_seq "
        f"FROM {source}{each}) WHERE kind IS NOT NULL AND value IS NOT NULL"
    )


_INSERT = "INSERT OR IGNORE INTO job_properties (name, kind, value, topic, job_seq) "
_AFTER = _INSERT + property_rows("jobs.properties", "jobs.seq", "jobs.topic", "jobs, ").replace(
    ") WHERE kind IS NOT NULL", " WHERE jobs.seq > ?) WHERE kind IS NOT NULL"
)
_ONE = _INSERT + property_rows("jobs.properties", "jobs.seq", "jobs.topic", "jobs, ").replace(
    ") WHERE kind IS NOT NULL", " WHERE jobs.seq = ?) WHERE kind IS NOT NULL"
)
# All five key columns: each row is one primary-key seek, whatever the index holds.
_DELETE = (
    "DELETE FROM job_properties WHERE (name, kind, value, topic, job_seq) IN ("
    + property_rows("jobs.properties", "jobs.seq", "jobs.topic", "jobs, ").replace(
        ") WHERE kind IS NOT NULL", " WHERE jobs.seq = ?) WHERE kind IS NOT NULL"
    )
    + ")"
)


def top_seq(conn: sqlite3.Connection) -> int:
    """The highest job seq (0: none); the jobs inserted next all have higher ones."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0])


def index_jobs_after(conn: sqlite3.Connection, seq: int) -> None:
    """Index the properties of the jobs with a seq above `seq` (those just inserted)."""
    conn.execute(_AFTER, (seq,))


def index_job(conn: sqlite3.Connection, seq: int) -> None:
    """Index the properties of the job `seq` as its row holds them now."""
    conn.execute(_ONE, (seq,))


def unindex_jobs(conn: sqlite3.Connection, seqs: Iterable[int]) -> None:
    """Remove the index rows of the jobs `seqs` (call before their properties change or go)."""
    conn.executemany(_DELETE, [(seq,) for seq in seqs])


MIGRATION = f"""
    CREATE TABLE job_properties (
        name TEXT NOT NULL,
        kind INTEGER NOT NULL,                   -- PropertyKind (node/templates.py)
        value NOT NULL,                          -- no affinity: 1/0, the number, text, list JSON, $b, $t
        topic TEXT NOT NULL,                     -- the job's (never changes): a topic + template
                                                 -- query counts its matches without reading jobs
        job_seq INTEGER NOT NULL,
        PRIMARY KEY (name, kind, value, topic, job_seq)
    ) WITHOUT ROWID;
    {_AFTER.replace("?", "0")};
"""
"""Schema v7: the table, and the properties of the jobs already in the journal."""
