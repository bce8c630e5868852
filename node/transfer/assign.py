"""Assignment at the origin: giving jobs remote targets (new, unassigned, or those of a dead
target under a new epoch), and at a target: handing back jobs it can no longer take.
Both run inside a write operation (writer thread)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence

from node.journal.recorder import Recorder
from node.journal.records import ACTIVE, DROPPED, QUEUED, STOPPED, UNFINISHED, distinct_values
from node.model.events import EventType
from node.model.job import JobState, Outcome
from node.model.lifecycle import after_attempt, end_event
from node.transfer.outbox import Outbox, OutboxKind

ASSIGN_BATCH = 500
"""Jobs one assignment round moves at most: a round is one transaction on the single writer, so
a small one lets the first frame leave (and other writes in) soon; the offloader runs the next
round at once while rounds come back full. (At 10,000 a round held the writer for seconds: a
worker started beside 10,000 waiting jobs got its first one 8.7 s after launch, 2.1 s at 2,000.)"""
FIRST_ROUND = 16
"""The size of a round after one that moved nothing (see RoundSize)."""
MOVE_CHUNK = 250
"""Jobs one UPDATE of a round moves at most (bound parameters stay far below SQLite's limit)."""

Chooser = Callable[[str, str], "str | None"]
"""`choose(topic, queue)`: a target for a job, or None (called on the writer thread)."""


class RoundSize:
    """Slow start of assignment rounds: the first after a round that moved nothing moves at most
    FIRST_ROUND jobs, each full one doubles the next, up to ASSIGN_BATCH. A target that has just
    joined beside a backlog gets its first jobs in the small frame the first round's commit
    releases, while the writer assigns the next ones, instead of after 500 were assigned, sent
    and applied at the target (0.145 s of a 0.95 s offload start-up). A round cut short by the
    targets' capacity keeps the size: in a steady flow most rounds are, and rounds of 16 would
    cost a transaction per 16 jobs."""

    def __init__(self) -> None:
        self.next = FIRST_ROUND

    def ended(self, moved: int) -> bool:
        """Count a round of `self.next` jobs at most that moved `moved`; True if it was full
        (more may wait: the next round should follow at once)."""
        full = moved >= self.next
        if full:
            self.next = min(2 * self.next, ASSIGN_BATCH)
        elif moved == 0:
            self.next = FIRST_ROUND
        return full


class Assigner:
    """Moves jobs between instances, in the caller's transaction."""

    def __init__(self, outbox: Outbox, recorder: Recorder) -> None:
        self.outbox = outbox
        self.local_id = outbox.local_id
        self._recorder = recorder

    def hand_back(self, conn: sqlite3.Connection, now_us: int) -> int:
        """Give jobs of other origins this node no longer consumes (QUEUED, unassigned) back to
        their origins: they end DROPPED here and a report tells the origin to reassign them."""
        # Two range seeks on jobs_unassigned skip this node's own waiting jobs however many
        # there are (`origin != ?` would visit each of them).
        rows = conn.execute(
            f"UPDATE jobs SET state = {DROPPED}, finished_us = ? WHERE seq IN ("
            f"SELECT seq FROM jobs INDEXED BY jobs_unassigned WHERE state = {QUEUED} AND target IS NULL "
            "AND origin < ? UNION ALL "
            f"SELECT seq FROM jobs INDEXED BY jobs_unassigned WHERE state = {QUEUED} AND target IS NULL "
            "AND origin > ?) "
            "RETURNING id, origin, epoch",
            (now_us, self.local_id, self.local_id),
        ).fetchall()
        self.outbox.enqueue(conn, OutboxKind.REPORT, ((r["origin"], r["id"], r["epoch"]) for r in rows))
        return len(rows)

    def assign(
        self,
        conn: sqlite3.Connection,
        choose: Chooser,
        now_us: int,
        from_peer: str | None,
        batch: int = ASSIGN_BATCH,
    ) -> int:
        """Give this node's jobs a target: at most `batch` unassigned QUEUED ones, or (with
        `from_peer`) the unfinished ones of a dead peer, under a new epoch. Returns how many
        moved."""
        if from_peer is not None:
            self._stop_requested_on(conn, from_peer, now_us)
            self._count_lost_attempts(conn, from_peer, now_us)
            rows = conn.execute(
                f"SELECT id, topic, queue FROM jobs WHERE target = ? AND origin = ? AND state IN {UNFINISHED}",
                (from_peer, self.local_id),
            ).fetchall()
            self.outbox.discard_jobs(conn, from_peer)
            return self.move(conn, [(row["id"], choose(row["topic"], row["queue"])) for row in rows], now_us)
        moved = 0
        # One index seek per waiting (topic, queue), then only the jobs of those that have a
        # target now: a backlog nobody consumes costs nothing per job.
        for topic, queue in self._waiting_topics(conn):
            limit = 1  # the first job tells whether anybody takes the topic now; then the rest
            while moved < batch:
                rows = conn.execute(
                    "SELECT id FROM jobs INDEXED BY jobs_unassigned WHERE state = "
                    f"{QUEUED} AND target IS NULL AND origin = ? AND topic = ? AND queue = ? LIMIT ?",
                    (self.local_id, topic, queue, min(limit, batch - moved)),
                ).fetchall()
                targets = [(row["id"], choose(topic, queue)) for row in rows]
                placed = [(job_id, target) for job_id, target in targets if target is not None]
                moved += self.move(conn, placed, now_us)
                if len(placed) < len(rows) or len(rows) < limit:
                    break  # nobody takes the topic (any more), or none of its jobs is left
                limit = batch
            if moved >= batch:
                break
        return moved

    def _waiting_topics(self, conn: sqlite3.Connection) -> Iterator[tuple[str, str]]:
        """The distinct (topic, queue) of this node's unassigned QUEUED jobs: a skip scan of
        jobs_unassigned, one seek per topic and per queue."""
        source = "jobs INDEXED BY jobs_unassigned"
        waiting = f"state = {QUEUED} AND target IS NULL AND origin = ?"
        for topic in distinct_values(conn, "topic", source, waiting, (self.local_id,)):
            for queue in distinct_values(
                conn, "queue", source, f"{waiting} AND topic = ?", (self.local_id, topic)
            ):
                yield topic, queue

    def move(self, conn: sqlite3.Connection, placed: Sequence[tuple[str, str | None]], now_us: int) -> int:
        """Give each job its target (None: unassigned) under a new epoch, one UPDATE per target
        and chunk, not one per job (per-job statements were a third of an offloading origin's
        samples). Each remote target's outbox gets its jobs in the order of `placed`, which is
        the order they are sent and run in. Returns how many moved."""
        order = {job_id: i for i, (job_id, _target) in enumerate(placed)}
        by_target: dict[str | None, list[str]] = {}
        for job_id, target in placed:
            by_target.setdefault(target, []).append(job_id)
        for target, ids in by_target.items():
            epochs: list[tuple[str, int]] = []
            for start in range(0, len(ids), MOVE_CHUNK):
                chunk = ids[start : start + MOVE_CHUNK]
                epochs += conn.execute(
                    f"UPDATE jobs SET state = {QUEUED}, target = ?, epoch = epoch + 1, report_seq = 0, "
                    "started_us = NULL, progress_total = NULL, progress_done = NULL, eta_us = NULL, "
                    f"due_us = ? WHERE id IN ({', '.join('?' * len(chunk))}) RETURNING id, epoch",
                    (target, now_us, *chunk),
                ).fetchall()
            if target is not None and target != self.local_id:
                epochs.sort(key=lambda row: order[row[0]])
                self.outbox.enqueue(
                    conn, OutboxKind.JOB, [(target, job_id, epoch) for job_id, epoch in epochs]
                )
        return len(placed)

    def _count_lost_attempts(self, conn: sqlite3.Connection, peer: str, now_us: int) -> None:
        """A job that was running on the dead `peer` lost that attempt: it counts as failed, by
        the lifecycle rule of crash recovery (retry count + 1, or GIVEN_UP once retries are used
        up), so a job that takes its target down every time does not run forever."""
        message = f"its target {peer} is gone; the attempt running there counts as failed"
        for row in conn.execute(
            "SELECT seq, id, topic, queue, retry_count, max_retries FROM jobs "
            f"WHERE target = ? AND origin = ? AND state = {ACTIVE}",
            (peer, self.local_id),
        ).fetchall():
            transition = after_attempt(
                Outcome.FAILED,
                retry_count=row["retry_count"],
                max_retries=row["max_retries"],
                stop_requested=False,
            )
            if transition.state is JobState.QUEUED:
                conn.execute(
                    "UPDATE jobs SET retry_count = ?, result_message = ? WHERE seq = ?",
                    (transition.retry_count, message, row["seq"]),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET state = ?, retry_count = ?, finished_us = ?, result_message = ? WHERE seq = ?",
                    (int(transition.state), transition.retry_count, now_us, message, row["seq"]),
                )
            self._recorder.event(
                end_event(transition.state)[0],
                now_us,
                row["id"],
                row["topic"],
                row["queue"],
                transition.state,
                transition.retry_count,
                message,
                target=peer,
            )

    def _stop_requested_on(self, conn: sqlite3.Connection, peer: str, now_us: int) -> None:
        """A job stopped here while it ran on the dead `peer` ends STOPPED rather than running again."""
        message = "stopped by a user; its target is gone"
        for row in conn.execute(
            f"UPDATE jobs SET state = {STOPPED}, finished_us = ?, result_message = ? "
            f"WHERE target = ? AND origin = ? AND state = {ACTIVE} AND stop_requested = 1 "
            "RETURNING id, topic, queue, retry_count",
            (now_us, message, peer, self.local_id),
        ).fetchall():
            self._recorder.event(
                EventType.STOPPED,
                now_us,
                row["id"],
                row["topic"],
                row["queue"],
                JobState.STOPPED,
                row["retry_count"],
                message,
            )
