"""The origin's placement round (hand back, assign) and its periodic counts cost what changed,
not the backlog: every statement the round runs on a journal with waiting jobs nobody consumes
is an index search, never a scan of the jobs (a full 1,000,000-job backlog used to cost ~65% of
an idle node's writer), and the counts of outstanding jobs do the same work whatever the size of
the local backlog. Checked by the query plans of the statements the round really runs and by
SQLite's own count of the instructions the counts execute, on a real journal file; the figures
are in docs/benchmarks.md (benchmarks/run-backlog)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.instance import now_us
from node.journal.claims import Hold
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.transfer import answers, outbox
from node.transfer import store as transfer_store
from node.transfer.frames import FrameLimits, build_frame
from node.transfer.outbox import OutboxKind
from node.transfer.store import TransferStore
from tests.support.journal_work import queued_records, read_instructions

LOCAL = "origin-instance"


def waiting(count: int, origin: str, topic: str, target: str | None = None) -> list[NewJobRecord]:
    return queued_records([topic] * count, origin=origin, target=target)


def plan(path: Path, statement: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]


async def test_a_placement_round_searches_indexes_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, LOCAL)
        await jobs.add_jobs(waiting(500, LOCAL, "nobody/consumes"))
        await jobs.add_jobs(waiting(500, LOCAL, "remote/consumes"))
        await jobs.add_jobs(waiting(3, "another-origin", "nobody/here"))  # to be handed back
        statements: list[str] = []
        await journal.write(lambda conn: conn.set_trace_callback(statements.append))

        handed_back = await store.hand_back(now_us())
        moved = await store.assign(
            lambda topic, _queue: "peer" if topic.startswith("remote/") else None, now_us()
        )
        await journal.write(lambda conn: conn.set_trace_callback(None))
    finally:
        journal.close()

    assert (handed_back, moved) == (3, 500)
    round_statements = [s for s in statements if "FROM jobs" in s or "UPDATE jobs" in s]
    assert round_statements
    for statement in round_statements:
        steps = plan(path, statement)
        assert not [s for s in steps if s.startswith("SCAN jobs") or "jobs_state" in s], (statement, steps)


async def test_outstanding_counts_do_not_grow_with_the_local_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer_store, "LOCAL_COUNT_CAP", 100)
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, LOCAL)
        await jobs.add_jobs(waiting(7, LOCAL, "remote/a", target="peer-a"))
        await jobs.add_jobs(waiting(5, LOCAL, "remote/b", target="peer-b"))
        await jobs.add_jobs(waiting(4, "another-origin", "runs/here", target="peer-a"))  # not ours
        await jobs.add_jobs(waiting(300, LOCAL, "local/work", target=LOCAL))
        small = read_instructions(path, store._count_remote), read_instructions(path, store._count_here)
        await jobs.add_jobs(waiting(3000, LOCAL, "local/work", target=LOCAL))
        large = read_instructions(path, store._count_remote), read_instructions(path, store._count_here)
        assert await store.outstanding() == {"peer-a": 7, "peer-b": 5}
        assert await store.outstanding_here() == 100  # the cap
    finally:
        journal.close()

    (remote_small, remote_work), (here_small, here_work) = small
    (remote_large, remote_large_work), (here_large, here_large_work) = large
    assert remote_small == remote_large == {"peer-a": 7, "peer-b": 5}
    assert here_small == here_large == 100
    # 3,000 more local jobs: the same work, give or take a B-tree level (a scan would be 10x).
    assert remote_large_work <= remote_work * 1.2, (remote_work, remote_large_work)
    assert here_large_work <= here_work * 1.2, (here_work, here_large_work)


async def test_a_target_reads_an_origins_jobs_without_visiting_its_own(tmp_path: Path) -> None:
    # A target confirms each quiet origin's jobs every few seconds (node/transfer/reconcile.py):
    # the jobs it reads are that origin's, whatever else is queued here.
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        await jobs.add_jobs(waiting(6, "origin-a", "runs/here", target=LOCAL))
        await jobs.add_jobs(waiting(2, "origin-b", "runs/here", target=LOCAL))
        await jobs.add_jobs(waiting(3, "origin-b", "nobody/here"))  # waiting to be handed back
        await jobs.add_jobs(waiting(4, LOCAL, "offloaded", target="peer-a"))  # ours, run elsewhere
        await jobs.add_jobs(waiting(300, LOCAL, "local/work", target=LOCAL))

        def read(conn: sqlite3.Connection) -> tuple[int, set[str]]:
            return len(answers.queued_from(conn, LOCAL, "origin-a")), answers.queued_origins(conn, LOCAL)

        small = read_instructions(path, read)
        await jobs.add_jobs(waiting(3000, LOCAL, "local/work", target=LOCAL))
        large = read_instructions(path, read)
    finally:
        journal.close()

    (found_small, work_small), (found_large, work_large) = small, large
    assert found_small == found_large == (6, {"origin-a", "origin-b"})
    assert work_large <= work_small * 1.2, (work_small, work_large)  # jobs_ready's range: 10x


async def test_whether_other_origins_have_jobs_here_is_found_without_visiting_the_backlog(
    tmp_path: Path,
) -> None:
    # The outbox asks once per start whether to report changes to other origins at all.
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        await jobs.add_jobs(waiting(300, LOCAL, "local/work", target=LOCAL))
        await jobs.add_jobs(waiting(300, LOCAL, "nobody/consumes"))
        await jobs.add_jobs(waiting(2, LOCAL, "offloaded", target="peer-a"))  # ours, run elsewhere
        small = read_instructions(path, lambda c: outbox.has_foreign_jobs(c, LOCAL))
        await jobs.add_jobs(waiting(3000, LOCAL, "local/work", target=LOCAL))
        await jobs.add_jobs(waiting(3000, LOCAL, "nobody/consumes"))
        large = read_instructions(path, lambda c: outbox.has_foreign_jobs(c, LOCAL))

        found = []
        for job in (  # each form a job of another origin takes here, alone
            waiting(1, "origin-z", "runs/here", target=LOCAL),  # QUEUED for this node
            waiting(1, "origin-a", "nobody/here"),  # QUEUED unassigned, origin sorts before LOCAL
            waiting(1, "origin-z", "nobody/here"),  # and after it
        ):
            await jobs.add_jobs(job)
            found.append(read_instructions(path, lambda c: outbox.has_foreign_jobs(c, LOCAL))[0])
            await jobs.remove(job[0].id, now_us())
        await jobs.add_jobs(waiting(1, "origin-z", "runs/here", target=LOCAL))
        only_z = Hold(local_id="origin-z")  # a claim of origin-z's jobs alone
        started, _ = await jobs.claim(LOCAL, "main", now_us(), 10, hold=only_z)
        assert [j.origin_instance for j in started] == ["origin-z"]
        active = read_instructions(path, lambda c: outbox.has_foreign_jobs(c, LOCAL))[0]  # ACTIVE here
    finally:
        journal.close()

    (none_small, work_small), (none_large, work_large) = small, large
    assert none_small is none_large is False
    assert found == [True, True, True]
    assert active is True
    assert work_large <= work_small * 1.2, (work_small, work_large)  # the old probe: 10x


@pytest.mark.parametrize("kind", ["jobs", "reports"])
async def test_a_frame_costs_the_same_however_many_more_items_wait_for_the_peer(
    tmp_path: Path, kind: str
) -> None:
    # A node builds a frame of at most max_items for a peer many times a second (jobs as its
    # origin, reports as its target); the rows it reads for them are found by id, not by
    # visiting every job waiting for that peer, nor with one query per item.
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    try:
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, LOCAL)

        async def queue(count: int) -> None:
            if kind == "jobs":
                await jobs.add_jobs(waiting(count, LOCAL, "offloaded", target="peer-a"))
                return
            records = waiting(count, "peer-a", "runs/here", target=LOCAL)
            await jobs.add_jobs(records)
            items = [("peer-a", r.id, 0) for r in records]
            await journal.write(lambda c: store.outbox.enqueue(c, OutboxKind.REPORT, items))

        limits = FrameLimits(max_items=20, max_bytes=1 << 20)

        statements: list[str] = []

        def read(conn: sqlite3.Connection) -> int:
            conn.set_trace_callback(statements.append)
            frame = build_frame(conn, LOCAL, "peer-a", 0, limits, journal.integrity)
            assert frame is not None
            return len(frame.jobs) + len(frame.reports)

        await queue(200)
        small = read_instructions(path, read)
        await queue(4000)
        statements.clear()
        large = read_instructions(path, read)
        assert await store.peers() == ["peer-a"]
    finally:
        journal.close()

    (framed_small, work_small), (framed_large, work_large) = small, large
    assert framed_small == framed_large == 20
    assert work_large <= work_small * 1.2, (work_small, work_large)  # 20x the items waiting
    assert len(statements) <= 4, statements  # the outbox, then one per kind of row: not per item
