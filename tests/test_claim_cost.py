"""A round-robin claim costs its topics and the jobs it starts, not its queue's backlog: it used
to rank every due job of the queue (a window function over all of them, 138-211 ms a claim at
100,000, on the single writer). Counted by SQLite's own instruction counter on the writer's
connection of a real journal file; and the turns it takes are the same as before."""

from __future__ import annotations

from pathlib import Path

from node.instance import now_us
from node.journal.claims import Hold
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import NewJobRecord
from tests.support.journal_work import queued_records, writer_instructions

LOCAL = "local-instance"
QUEUE = "rr"


def queued(topics: list[str], origin: str = LOCAL) -> list[NewJobRecord]:
    return queued_records(topics, origin=origin, target=LOCAL, queue=QUEUE)


async def test_a_round_robin_claim_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.db")
    try:
        store = JobStore(journal)
        await store.add_jobs(queued(["rr/a", "rr/b", "rr/c"] * 100))

        async def claim() -> int:
            jobs, _due = await store.claim_round_robin(LOCAL, QUEUE, now_us(), 6, "")
            return len(jobs)

        small = await writer_instructions(journal, claim)
        await store.add_jobs(queued(["rr/a", "rr/b", "rr/c"] * 1000))
        large = await writer_instructions(journal, claim)
    finally:
        journal.close()

    (started_small, work_small), (started_large, work_large) = small, large
    assert started_small == started_large == 6
    # 3,000 more waiting jobs: the same work, give or take a B-tree level (ranking them: 10x).
    assert work_large <= work_small * 1.2, (work_small, work_large)


async def test_round_robin_turns_go_topic_by_topic_after_the_last_one(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.db")
    try:
        store = JobStore(journal)
        await store.add_jobs(queued(["rr/a"] * 4 + ["rr/b"] * 2 + ["rr/c"] * 3))
        await store.add_jobs(queued(["rr/b"] * 2, origin="held-origin"))

        hold = Hold(origins=frozenset({"held-origin"}))
        jobs, due = await store.claim_round_robin(LOCAL, QUEUE, now_us(), 7, "rr/a", hold=hold)
        rest, _ = await store.claim_round_robin(LOCAL, QUEUE, now_us(), 10, "", hold=hold)
        unheld, _ = await store.claim_round_robin(LOCAL, QUEUE, now_us(), 10, "")
    finally:
        journal.close()

    # After rr/a: b, c, then a; each topic's oldest first; a topic with no job left drops out.
    assert [j.topic for j in jobs] == ["rr/b", "rr/c", "rr/a", "rr/b", "rr/c", "rr/a", "rr/c"]
    assert due is None  # a full claim: the runner claims again at once
    assert [j.topic for j in rest] == ["rr/a", "rr/a"]  # the held origin's rr/b jobs wait
    assert [(j.topic, j.origin_instance) for j in unheld] == [("rr/b", "held-origin")] * 2
