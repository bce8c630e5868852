"""Assignment rounds start small and grow (node/transfer/assign.py RoundSize): a target that
joins beside a backlog gets its first jobs from a round of FIRST_ROUND, not of ASSIGN_BATCH."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.transfer.assign import ASSIGN_BATCH, FIRST_ROUND, MOVE_CHUNK, RoundSize
from node.transfer.store import TransferStore
from tests.support.journal_work import queued_records


@contextlib.asynccontextmanager
async def _stores(tmp_path: Path, local_id: str) -> AsyncIterator[tuple[Journal, JobStore, TransferStore]]:
    """A fresh journal of node `local_id`, with its job and transfer stores."""
    journal = Journal.open(tmp_path / f"{local_id}.sqlite")
    try:
        jobs = JobStore(journal)
        yield journal, jobs, TransferStore(journal, jobs, local_id)
    finally:
        journal.close()


def test_full_rounds_double_the_next_up_to_the_batch_and_an_empty_one_starts_again_small() -> None:
    rounds = RoundSize()
    sizes = []
    for _ in range(8):
        sizes.append(rounds.next)
        assert rounds.ended(rounds.next)  # full
    assert sizes == [16, 32, 64, 128, 256, ASSIGN_BATCH, ASSIGN_BATCH, ASSIGN_BATCH]
    # A round cut short (the targets' capacity) keeps the size; one that moved nothing resets it
    assert not rounds.ended(ASSIGN_BATCH - 1)
    assert rounds.next == ASSIGN_BATCH
    assert not rounds.ended(0)
    assert rounds.next == FIRST_ROUND


async def test_a_round_moves_at_most_its_size_and_queues_only_those_for_the_target(tmp_path: Path) -> None:
    async with _stores(tmp_path, "origin") as (journal, jobs, store):
        # Given 100 jobs of this origin waiting unassigned
        await jobs.add_jobs(queued_records(["t/a"] * 100, origin="origin", target=None))

        # When a target appears and the first round runs, then the next with what is left
        first = await store.assign(lambda _t, _q: "peer", 5, batch=FIRST_ROUND)
        queued_after_first = await journal.read(
            lambda c: c.execute("SELECT count(*) FROM outbox WHERE peer = 'peer'").fetchone()[0]
        )
        rest = await store.assign(lambda _t, _q: "peer", 6, batch=ASSIGN_BATCH)

        # Then the first moved FIRST_ROUND jobs and released only those; the second the rest
        assert (first, queued_after_first) == (FIRST_ROUND, FIRST_ROUND)
        assert rest == 100 - FIRST_ROUND
        assert await store.peers() == ["peer"]


async def test_has_unassigned_sees_own_and_other_origins_waiting_jobs_and_nothing_else(
    tmp_path: Path,
) -> None:
    async with _stores(tmp_path, "here") as (_journal, jobs, store):
        # Jobs with a target (here, or a peer) give an assignment round nothing to do
        await jobs.add_jobs(
            queued_records(["t/a"], origin="here", target="here")
            + queued_records(["t/a"], origin="here", target="peer")
        )
        assert not await store.has_unassigned()
        # Another origin's job left without a target here (to hand back) does
        await jobs.add_jobs(queued_records(["t/a"], origin="other", target=None))
        assert await store.has_unassigned()
        await store.hand_back(5)
        assert not await store.has_unassigned()
        # And so does one of this node's own without a target
        await jobs.add_jobs(queued_records(["t/a"], origin="here", target=None))
        assert await store.has_unassigned()


async def test_a_round_moves_its_jobs_with_one_update_per_target_and_queues_them_in_order(
    tmp_path: Path,
) -> None:
    async with _stores(tmp_path, "origin") as (journal, jobs, store):
        # Given 300 jobs of this origin waiting unassigned, and two targets taking turns
        records = queued_records(["t/a"] * 300, origin="origin", target=None)
        await jobs.add_jobs(records)
        turns = iter(["p1", "p2"] * 150)
        statements: list[str] = []
        await journal.write(lambda c: c.set_trace_callback(statements.append))

        # When one round places them all
        try:
            moved = await store.assign(lambda _t, _q: next(turns), 5, batch=ASSIGN_BATCH)
        finally:
            await journal.write(lambda c: c.set_trace_callback(None))

        # Then it took three UPDATEs, not 300: one for the first job (which tells whether anybody
        # takes the topic), then one per target for the other 299 (fewer than MOVE_CHUNK each)
        updates = [s for s in statements if s.lstrip().startswith("UPDATE jobs SET state")]
        assert moved == 300
        assert MOVE_CHUNK > 150
        assert len(updates) == 3, updates
        # And each target's outbox holds its jobs in the order they were added
        for peer, wanted in (("p1", records[0::2]), ("p2", records[1::2])):
            assert await journal.read(_outbox_of(peer)) == [r.id for r in wanted]
        epochs = await journal.read(lambda c: {r[0] for r in c.execute("SELECT epoch FROM jobs")})
        assert epochs == {1}


def _outbox_of(peer: str) -> Callable[[sqlite3.Connection], list[str]]:
    return lambda c: [
        r[0] for r in c.execute("SELECT job_id FROM outbox WHERE peer = ? ORDER BY seq", (peer,))
    ]
