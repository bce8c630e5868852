"""The index of job properties that FindJobs templates search (schema v7, `job_properties`).

Every property of every job is one row (name, kind, value, job_seq), so a template's condition is
a range of the primary key, not a scan of every job's JSON (node/templates.py compiles conditions
to both forms). Triggers on `jobs` keep the index equal to `jobs.properties` whatever writes it:
AddJobs, a transferred job, a consumer's set_property, a mirrored report, purge and remove.
"""

from __future__ import annotations

from node.templates import PropertyKind

_T = "'$.\"$t\"'"
_B = "'$.\"$b\"'"


def property_rows(properties: str, seq: str, source: str = "") -> str:
    """A SELECT of (name, kind, value, job_seq) for each property in the JSON text `properties` (an
    SQL expression) of the job `seq`, joined after `source` (e.g. "jobs, "): the rows of
    `job_properties`. Text that is not a JSON object gives no rows, never an error; JSON null and
    objects other than bytes and timestamps give none either (no template condition matches them)."""
    each = (
        f"json_each(CASE WHEN json_valid({properties}) THEN "
        f"CASE WHEN json_type({properties}) = 'object' THEN {properties} END END)"
    )
    k = PropertyKind
    return (
        "SELECT name, kind, value, job_seq FROM (SELECT key AS name, "
        f"CASE type WHEN 'true' THEN {k.BOOL:d} WHEN 'false' THEN {k.BOOL:d} "
        f"WHEN 'integer' THEN {k.NUMBER:d} WHEN 'real' THEN {k.NUMBER:d} WHEN 'text' THEN {k.TEXT:d} "
        f"WHEN 'array' THEN {k.LIST:d} WHEN 'object' THEN "
        f"CASE WHEN json_type(value, {_T}) = 'integer' THEN {k.TIMESTAMP:d} "
        f"WHEN json_type(value, {_B}) = 'text' THEN {k.BYTES:d} END END AS kind, "
        "CASE type WHEN 'true' THEN 1 WHEN 'false' THEN 0 WHEN 'array' THEN value WHEN 'object' THEN "
        f"CASE WHEN json_type(value, {_T}) = 'integer' THEN json_extract(value, {_T}) "
        f"ELSE json_extract(value, {_B}) END ELSE atom END AS value, {seq} AS job_seq "
        f"FROM {source}{each}) WHERE kind IS NOT NULL AND value IS NOT NULL"
    )


def _insert(properties: str, seq: str, source: str = "") -> str:
    return (
        "INSERT OR IGNORE INTO job_properties (name, kind, value, job_seq) "
        f"{property_rows(properties, seq, source)};"
    )


def _delete(properties: str, seq: str) -> str:
    # All four key columns: each row is one primary-key seek, whatever the index holds.
    return (
        "DELETE FROM job_properties WHERE (name, kind, value, job_seq) IN "
        f"({property_rows(properties, seq)});"
    )


MIGRATION = f"""
    CREATE TABLE job_properties (
        name TEXT NOT NULL,
        kind INTEGER NOT NULL,                   -- PropertyKind (node/templates.py)
        value NOT NULL,                          -- no affinity: 1/0, the number, text, list JSON, $b, $t
        job_seq INTEGER NOT NULL,
        PRIMARY KEY (name, kind, value, job_seq)
    ) WITHOUT ROWID;
    CREATE TRIGGER job_properties_insert AFTER INSERT ON jobs WHEN new.properties IS NOT NULL BEGIN
        {_insert("new.properties", "new.seq")}
    END;
    CREATE TRIGGER job_properties_delete AFTER DELETE ON jobs WHEN old.properties IS NOT NULL BEGIN
        {_delete("old.properties", "old.seq")}
    END;
    CREATE TRIGGER job_properties_update AFTER UPDATE OF properties ON jobs
    WHEN old.properties IS NOT new.properties BEGIN
        {_delete("old.properties", "old.seq")}
        {_insert("new.properties", "new.seq")}
    END;
    {_insert("jobs.properties", "jobs.seq", "jobs, ")}
"""
"""Schema v7: the table, its triggers, and the properties of the jobs already in the journal."""
