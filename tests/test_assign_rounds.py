"""Assignment rounds start small and grow (node/transfer/assign.py RoundSize): a target that
joins beside a backlog gets its first jobs from a round of FIRST_ROUND, not of ASSIGN_BATCH."""

from __future__ import annotations

from pathlib import Path

from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from node.transfer.assign import ASSIGN_BATCH, FIRST_ROUND, RoundSize
from node.transfer.store import TransferStore


def test_full_rounds_double_the_next_up_to_the_batch_and_a_partial_one_starts_again_small() -> None:
    rounds = RoundSize()
    sizes = []
    for _ in range(8):
        sizes.append(rounds.next)
        assert rounds.ended(rounds.next)  # full
    assert sizes == [16, 32, 64, 128, 256, ASSIGN_BATCH, ASSIGN_BATCH, ASSIGN_BATCH]
    assert not rounds.ended(ASSIGN_BATCH - 1)
    assert rounds.next == FIRST_ROUND
    assert not rounds.ended(0)
    assert rounds.next == FIRST_ROUND


async def test_a_round_moves_at_most_its_size_and_queues_only_those_for_the_target(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "origin.sqlite")
    try:
        # Given 100 jobs of this origin waiting unassigned
        jobs = JobStore(journal)
        store = TransferStore(journal, jobs, "origin")
        await jobs.add_jobs(
            [NewJobRecord(f"j{n:03}", "t/a", None, "main", "origin", None, 0, 1, None) for n in range(100)]
        )

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
    finally:
        journal.close()
