"""Integrity at rest: payloads carry a checksum, damage is reported (DATA_LOSS), never served.

The damage is real: bytes overwritten inside a stopped node's journal file, found by a
recognisable pattern written as the payload (SQLite's integrity_check does not notice them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from node.errors import PayloadDamaged
from node.journal.connection import Durability, open_connection
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.payloads import PAYLOAD_OUTPUT, store_payload
from node.journal.records import NewJobRecord
from node.journal.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from node.model.job import JobState
from node.transfer.store import TransferStore
from tests.cli_support import failed, jobmesh
from tests.support.job_calls import JobFiles, add_job, get_job, rpc_error, wait_for_state
from tests.support.launcher import JOURNAL_FILE, NodeFactory, NodeProcess

EXIT_DAMAGED = 8
EXIT_IN_USE = 5
# No "X" in it: the damage written over it is 64 of them.
PATTERN = b"JOBMESH-INTEGRITY-PATTERN-0123456789-" * 200


# A queued job of topic t/a from `origin` (id, topic, properties, queue, origin, target,
# max_retries, created_us, payload); each test gives it an id, a payload and a target.
_JOB = NewJobRecord("", "t/a", None, "main", "origin", None, 3, 1, None)


def _record(job_id: str, payload: bytes, target: str | None = None) -> NewJobRecord:
    return dataclasses.replace(_JOB, id=job_id, payload=payload, target=target)


def _damage_journal(journal: Path, pattern: bytes) -> None:
    """Overwrite 64 bytes inside the one stored copy of `pattern` in the file of a stopped node."""
    with sqlite3.connect(journal) as conn:  # everything into the main file, none left in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(journal.read_bytes())
    where = data.find(pattern[:512])
    assert where >= 0, "the payload's bytes are not in the journal file"
    data[where + 300 : where + 364] = b"X" * 64
    journal.write_bytes(bytes(data))
    with sqlite3.connect(journal) as conn:  # the damage that SQLite's own check does not see
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _check(data_dir: Path) -> tuple[int, str]:
    result = jobmesh("check", "--data-dir", str(data_dir))
    return result.returncode, result.stdout + result.stderr


def test_damaged_payload_is_data_loss_its_consumer_never_runs_and_check_finds_it(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a stopped node with two queued jobs (no consumer yet), one of them then damaged on disk
    node = nodes.start("integrity")
    damaged_files, clean_files = JobFiles.under(tmp_path, "damaged"), JobFiles.under(tmp_path, "clean")
    damaged_id = add_job(node.stub, "integrity/damaged", PATTERN, **damaged_files.properties())
    clean_id = add_job(node.stub, "integrity/clean", b"clean bytes", **clean_files.properties())
    assert node.terminate() == 0
    assert _check(node.data_dir)[0] == 0
    _damage_journal(node.data_dir / JOURNAL_FILE, PATTERN)

    # When `jobmesh check` looks at it
    code, output = _check(node.data_dir)

    # Then it finds the damaged job, and only that one
    assert code == EXIT_DAMAGED, output
    assert damaged_id in output
    assert clean_id not in output
    assert "integrity_check: ok" in output
    assert "2 checked, 1 damaged" in output

    # When the node restarts with a consumer for both jobs
    node.consumers = ("integrity/**=consumers:succeed",)
    node.start()

    # Then reading the damaged payload is DATA_LOSS naming the job, every time
    for _ in range(2):
        error = rpc_error(lambda: get_job(node.stub, damaged_id, include_payloads=True))
        assert error.code() == grpc.StatusCode.DATA_LOSS
        assert damaged_id in (error.details() or "")
    # And downloading it with GetPayload is DATA_LOSS before any piece is sent
    pieces: list[jobs_pb2.GetPayloadResponse] = []
    request = jobs_pb2.GetPayloadRequest(job_id=damaged_id, kind=jobs_pb2.PAYLOAD_KIND_INPUT)
    error = rpc_error(lambda: pieces.extend(node.stub.GetPayload(request, timeout=10)))
    assert (error.code(), damaged_id in (error.details() or ""), pieces) == (
        grpc.StatusCode.DATA_LOSS,
        True,
        [],
    )
    assert get_job(node.stub, damaged_id).payload_size == len(PATTERN)  # the job itself is readable
    # And the damaged job ends in ERROR at its first attempt without its consumer running
    job = wait_for_state(node.stub, damaged_id, jobs_pb2.JOB_STATE_ERROR)
    assert "damaged" in job.result_message
    assert job.retry_count == 0
    assert not damaged_files.attempts.exists()
    # While the clean job runs with its intact payload
    wait_for_state(node.stub, clean_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    assert get_job(node.stub, clean_id, include_payloads=True).payload == b"clean bytes"
    # And the node counts one damaged payload, and logs one ERROR for it, not one per read
    statistics = node.stub.GetStatistics(jobs_pb2.GetStatisticsRequest())
    assert statistics.damaged_payloads == 1
    assert node.log_text().count(f"job {damaged_id}: its input payload is damaged") == 1

    # And `jobmesh check` refuses, in one line, while the node runs
    result = jobmesh("check", "--data-dir", str(node.data_dir))
    assert "in use" in failed(result, EXIT_IN_USE)


def test_a_clean_journal_checks_clean_and_a_missing_one_is_named(nodes: NodeFactory, tmp_path: Path) -> None:
    node: NodeProcess = nodes.start("clean")
    add_job(node.stub, "integrity/none", b"some payload")
    assert node.terminate() == 0

    result = jobmesh("check", "--data-dir", str(node.data_dir), "--json")

    assert result.returncode == 0, result.stderr
    assert '"clean": true' in result.stdout
    assert '"payloads_checked": 1' in result.stdout
    assert "no journal" in failed(jobmesh("check", "--data-dir", str(tmp_path / "nothing")), 3)


def test_migration_gives_existing_payloads_their_checksum(tmp_path: Path) -> None:
    # Given a journal of schema v3 with a payload stored before checksums existed
    path = tmp_path / "old.sqlite"
    conn = open_connection(path, Durability.NORMAL)
    for version, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(script + f";INSERT OR REPLACE INTO meta VALUES ('schema_version', '{version}')")
    conn.execute(
        "INSERT INTO jobs (id, topic, queue, state, origin, max_retries, created_us, due_us) "
        "VALUES ('old', 't', 'main', 1, 'me', 0, 1, 1)"
    )
    conn.execute("INSERT INTO payloads (job_seq, kind, data) SELECT seq, 1, x'00ff10' FROM jobs")

    # When it is migrated
    assert migrate(conn) == SCHEMA_VERSION

    # Then the payload has the checksum of its bytes
    assert conn.execute("SELECT crc32 FROM payloads").fetchone()[0] == zlib.crc32(b"\x00\xff\x10")
    conn.close()


def _damage_in_place(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE payloads SET data = x'0102'")  # new bytes, the old checksum: damage


async def test_damage_is_counted_per_read_and_logged_once_per_payload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path / "j.sqlite")
    try:
        jobs = JobStore(journal)
        await jobs.add_jobs([_record("j1", b"good bytes")])
        await journal.write(_damage_in_place)
        with caplog.at_level(logging.ERROR, logger="node.journal.payloads"):
            for _ in range(3):
                with pytest.raises(PayloadDamaged, match="job j1: its input payload is damaged"):
                    await jobs.get_job("j1", include_payloads=True)
            with pytest.raises(PayloadDamaged):
                await jobs.get_payload("j1")
        assert (journal.integrity.damaged_reads, journal.integrity.damaged_payloads) == (4, 1)
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    finally:
        journal.close()


@contextlib.asynccontextmanager
async def _transfer_store(
    path: Path, local_id: str
) -> AsyncIterator[tuple[Journal, JobStore, TransferStore]]:
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        yield journal, jobs, TransferStore(journal, jobs, local_id)
    finally:
        journal.close()


async def test_a_job_with_a_damaged_payload_is_dropped_instead_of_sent_to_a_peer(tmp_path: Path) -> None:
    async with _transfer_store(tmp_path / "origin.sqlite", "origin") as (journal, jobs, store):
        # Given two jobs offloaded to `peer`, the first one's payload damaged at rest
        await jobs.add_jobs([_record("bad", b"bad bytes", "peer")])
        await journal.write(_damage_in_place)
        await jobs.add_jobs([_record("good", b"good bytes", "peer")])

        # When the next frame for the peer is built
        frame = await store.next_frame("peer", 0, 10, 1 << 20)

        # Then it carries only the intact job; the damaged one is DROPPED, saying why
        assert frame is not None
        assert [j.job_id for j in frame.jobs] == ["good"]
        assert frame.jobs[0].payload == b"good bytes"
        bad = await jobs.get_job("bad")
        assert bad.state is JobState.DROPPED
        assert "damaged" in bad.result_message


async def test_a_damaged_output_is_left_out_of_the_report_to_the_origin(tmp_path: Path) -> None:
    async with _transfer_store(tmp_path / "target.sqlite", "target") as (journal, jobs, store):
        # Given a job of `origin` that finished here with an output, damaged since
        await jobs.add_jobs([_record("j1", b"in", "target")])

        def finish(c: sqlite3.Connection) -> None:
            c.execute("UPDATE jobs SET state = 3, finished_us = 9, result_message = 'done', output_size = 3")
            store_payload(c, 1, PAYLOAD_OUTPUT, b"out")
            c.execute("UPDATE payloads SET data = x'000000' WHERE kind = ?", (PAYLOAD_OUTPUT,))
            c.execute("INSERT INTO outbox (peer, kind, job_id, epoch) VALUES ('origin', 2, 'j1', 0)")

        await journal.write(finish)

        # When its report is built
        frame = await store.next_frame("origin", 0, 10, 1 << 20)

        # Then the report goes without the damaged bytes, and its message says why
        assert frame is not None
        (report,) = frame.reports
        assert report.output_payload == b""
        assert report.result_message.startswith(
            "done; output not sent: job j1: its output payload is damaged"
        )
