"""The journal's SQLite schema and its migrations.

Each migration is applied once, in order, inside one transaction; `meta.schema_version`
records the last one. Add a migration to change the schema; never edit an applied one.
"""

from __future__ import annotations

import sqlite3

from node.errors import JournalError
from node.journal.property_index import MIGRATION as PROPERTY_INDEX

MIGRATIONS: tuple[str, ...] = (
    # v1: jobs, their payloads, and node metadata.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,              -- insertion order; internal
        id TEXT NOT NULL UNIQUE,              -- public, time-ordered UUIDv7
        topic TEXT NOT NULL,
        queue TEXT NOT NULL,
        state INTEGER NOT NULL,               -- JobState
        properties TEXT,                      -- typed JSON, see node/properties.py
        origin TEXT NOT NULL,                 -- instance id where the job was added
        target TEXT,                          -- instance id that runs it; NULL = unassigned
        retry_count INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,   -- fences results of earlier attempts
        created_us INTEGER NOT NULL,
        due_us INTEGER NOT NULL,              -- earliest start (retry delay)
        started_us INTEGER,
        finished_us INTEGER,
        result_message TEXT NOT NULL DEFAULT '',
        payload_size INTEGER NOT NULL DEFAULT 0,
        output_size INTEGER NOT NULL DEFAULT 0,
        stop_requested INTEGER NOT NULL DEFAULT 0
    );
    -- What a queue runner claims next: small, because only QUEUED rows are in it.
    CREATE INDEX jobs_ready ON jobs (target, queue, due_us, seq) WHERE state = 1;
    CREATE INDEX jobs_state ON jobs (state, seq);
    CREATE INDEX jobs_topic ON jobs (topic, state, seq);
    CREATE TABLE payloads (
        job_seq INTEGER NOT NULL,
        kind INTEGER NOT NULL,                -- 1 input, 2 output
        data BLOB NOT NULL,
        PRIMARY KEY (job_seq, kind)
    ) WITHOUT ROWID;
    """,
    # v2: the full job manager: queues, progress, logs, events, statistics, schedules, dedup.
    """
    ALTER TABLE jobs ADD COLUMN dedup_key TEXT;
    ALTER TABLE jobs ADD COLUMN retry_delay_us INTEGER;   -- per-job override; NULL: the queue's
    ALTER TABLE jobs ADD COLUMN timeout_us INTEGER;       -- per-job override; NULL: the queue's
    ALTER TABLE jobs ADD COLUMN progress_total INTEGER;
    ALTER TABLE jobs ADD COLUMN progress_done INTEGER;
    ALTER TABLE jobs ADD COLUMN eta_us INTEGER;
    ALTER TABLE jobs ADD COLUMN log_count INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX jobs_dedup ON jobs (dedup_key) WHERE dedup_key IS NOT NULL;
    -- Ordered queues pick strictly by seq.
    CREATE INDEX jobs_ready_seq ON jobs (target, queue, seq) WHERE state = 1;
    CREATE TABLE job_log (
        job_seq INTEGER NOT NULL,
        line INTEGER NOT NULL,
        time_us INTEGER NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (job_seq, line)
    ) WITHOUT ROWID;
    CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY,                -- never reused: see meta events_seq_floor
        type INTEGER NOT NULL,
        time_us INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        queue TEXT NOT NULL,
        state INTEGER NOT NULL,
        retry_count INTEGER NOT NULL,
        message TEXT,
        progress_total INTEGER,
        progress_done INTEGER,
        eta_us INTEGER,
        target TEXT
    );
    CREATE TABLE job_stats (
        scope INTEGER NOT NULL,                  -- 0 global, 1 queue, 2 topic
        name TEXT NOT NULL,
        finished INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        waiting_us INTEGER NOT NULL DEFAULT 0,
        waiting_count INTEGER NOT NULL DEFAULT 0,
        processing_us INTEGER NOT NULL DEFAULT 0,
        processing_count INTEGER NOT NULL DEFAULT 0,
        last_activated_us INTEGER NOT NULL DEFAULT 0,
        last_finished_us INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, name)
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        suspended INTEGER NOT NULL DEFAULT 0,
        config TEXT                              -- JSON of a queue set over the API; NULL: none
    );
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        job BLOB NOT NULL,                       -- serialized jobmesh.v1.NewJob
        rules BLOB NOT NULL,                     -- serialized repeated jobmesh.v1.ScheduleRule
        suspended INTEGER NOT NULL DEFAULT 0,
        next_us INTEGER,                         -- NULL: no occurrence left
        last_us INTEGER,
        fired_count INTEGER NOT NULL DEFAULT 0,
        last_job_id TEXT,
        created_us INTEGER NOT NULL
    );
    CREATE INDEX schedules_due ON schedules (next_us) WHERE suspended = 0 AND next_us IS NOT NULL;
    """,
    # v3: offloading: assignment epochs and the durable per-peer transfer outbox.
    """
    ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;      -- raised on every reassignment
    ALTER TABLE jobs ADD COLUMN report_seq INTEGER NOT NULL DEFAULT 0; -- origin: last applied report
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- delivery order; never reused
        peer TEXT NOT NULL,                      -- instance id to deliver to
        kind INTEGER NOT NULL,                   -- OutboxKind (node/transfer/outbox.py)
        job_id TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0      -- report: 1 if caused by a PROGRESS event
    );
    CREATE INDEX outbox_peer ON outbox (peer, seq);
    CREATE INDEX jobs_remote ON jobs (target, state) WHERE state IN (1, 2);
    CREATE TABLE topic_consumption (
        pattern TEXT PRIMARY KEY,                -- topic pattern
        setting INTEGER NOT NULL                 -- 2 disabled, 3 exclusive (enabled: no row)
    );
    """,
    # v4: integrity at rest: every payload carries its checksum (see node/journal/payloads.py);
    # the payloads stored before get theirs here, computed from the bytes as they are now.
    """
    ALTER TABLE payloads ADD COLUMN crc32 INTEGER NOT NULL DEFAULT 0;
    UPDATE payloads SET crc32 = jobmesh_crc32(data);
    """,
    # v5: the jobs waiting for a target, by origin and topic: placement (node/transfer/assign.py)
    # visits the topics that wait, not every waiting job. Jobs placed at insert (a consumer here)
    # never enter it.
    """
    CREATE INDEX jobs_unassigned ON jobs (origin, topic, queue) WHERE state = 1 AND target IS NULL;
    """,
    # v6: the audit journal: admin actions with their caller (node/journal/audit.py).
    """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- order of the entries; never reused
        time_us INTEGER NOT NULL,
        caller TEXT NOT NULL,                    -- token, certificate, instance or CLI user
        action TEXT NOT NULL,                    -- gRPC method or `token create` / `token revoke`
        request TEXT NOT NULL,                   -- protobuf text, truncated
        status TEXT NOT NULL,                    -- OK or a gRPC status code name
        message TEXT NOT NULL DEFAULT ''
    );
    """,
    # v7: every job's properties by name, typed value and topic, searched by FindJobs templates;
    # written with the job's row by its writers (node/journal/property_index.py).
    PROPERTY_INDEX,
    # v8: one job's history (the console's job page, node/journal/events.py `job_history`)
    # without scanning every event: the rowid (seq) ends each entry, so a page is a range of
    # the index in seq order. PROGRESS events stay out of it: a job may report millions of
    # them, at a rate no other event has, and an indexed PROGRESS event cost 2.5x an unindexed
    # one; the job's row holds its current progress (docs/benchmarks.md, "A job's event history").
    """
    CREATE INDEX job_events_job ON job_events (job_id) WHERE type != 3;
    """,
    # v9: the jobs of other origins queued here, by origin (node/transfer/answers.py): a target
    # confirms each origin's jobs every few seconds, which visited every job queued here,
    # the local backlog too. A job placed where it was added (origin = target) never enters it;
    # jobs this node offloaded sit in it while QUEUED at their target.
    """
    CREATE INDEX jobs_foreign_queued ON jobs (target, origin, seq) WHERE state = 1 AND origin != target;
    """,
    # v10: a round-robin queue's topics and each one's next jobs (node/journal/claims.py): a
    # claim ranked every due job of its queue, 138-211 ms at 100,000 of them, on the single writer.
    """
    CREATE INDEX jobs_ready_topic ON jobs (target, queue, topic, due_us, seq) WHERE state = 1;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the database (0 for a new one)."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row["value"]) if row else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version. The connection must be in autocommit."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise JournalError(
            f"the journal has schema version {current}, newer than this jobmesh supports "
            f"({SCHEMA_VERSION}); upgrade jobmesh or use another data dir"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        try:
            conn.executescript(
                "BEGIN IMMEDIATE;"
                + MIGRATIONS[version - 1]
                + f";INSERT INTO meta (key, value) VALUES ('schema_version', '{version}') "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value; COMMIT;"
            )
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise JournalError(f"migrating the journal to schema version {version} failed: {e}") from e
    return SCHEMA_VERSION
