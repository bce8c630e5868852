"""Offloading is on from a node's first transaction: the outbox hook is registered before any
queue runner starts (the start-up race of the streams issue: a job of another origin that
finished in the first milliseconds after a restart wrote no report, and its origin never
learned its end). A queued job of another origin starts only once this node's lease on that
origin is confirmed (node/transfer/lease.py): after a restart it waits for its origin."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import node
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.node import JOURNAL_FILE
from node.transfer.outbox import OutboxKind

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


async def _until_succeeded(n: node.Node, job_id: str) -> None:
    while True:
        if (await n.jobs.get_job(job_id)).state is node.JobState.SUCCEEDED:
            return
        await asyncio.sleep(0.01)


async def test_jobs_of_another_origin_that_end_during_start_are_reported_to_their_origin(
    tmp_path: Path,
) -> None:
    # Given a journal with two jobs offloaded here by another origin: one left ACTIVE by a crash
    # with no retries left, one queued for this node
    config = node.NodeConfig.for_tests(tmp_path)
    journal = Journal.open(config.data_dir / JOURNAL_FILE)
    try:
        await journal.set_meta("instance_id", "target-1")
        await JobStore(journal).add_jobs(
            [
                NewJobRecord(job_id, "t/a", None, "main", "origin-1", "target-1", 0, 1, None)
                for job_id in ("crashed", "queued")
            ]
        )
        await journal.write(
            lambda c: c.execute("UPDATE jobs SET state = 2, attempt = 1 WHERE id = 'crashed'")
        )
    finally:
        journal.close()

    # When the node starts with a consumer for them: crash recovery gives the first up inside
    # the job manager's start, long before discovery and the transfer streams are up; the
    # second waits for its origin (unreachable here: the test confirms the lease itself), then
    # runs as soon as it may
    n = node.Node(config)
    n.consumers.register(["t/**"], lambda _job, _context: None)
    async with n:
        assert "origin-1" in n.jobs.hold().origins
        assert (await n.jobs.get_job("queued")).state is node.JobState.QUEUED
        n.transfer_receiver.lease.confirmed("origin-1", time.monotonic())  # type: ignore[attr-defined]
        n.jobs.wake_runners()
        await asyncio.wait_for(_until_succeeded(n, "queued"), 10)
        assert (await n.jobs.get_job("crashed")).state is node.JobState.GIVEN_UP
        outbox = await n.journal.read(
            lambda c: c.execute("SELECT peer, kind, job_id FROM outbox ORDER BY seq").fetchall()
        )

    # Then every change waits in the outbox as a report to their origin: the recovery's end,
    # then the second job's STARTED and FINISHED
    report = ("origin-1", OutboxKind.REPORT)
    assert [tuple(row) for row in outbox] == [(*report, "crashed"), (*report, "queued"), (*report, "queued")]
