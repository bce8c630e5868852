"""Assignment at the origin: giving jobs remote targets (new, unassigned, or those of a dead
target under a new epoch), and at a target: handing back jobs it can no longer take.
Both run inside a write operation (writer thread)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from node.journal.recorder import Recorder
from node.journal.records import ACTIVE, DROPPED, QUEUED, STOPPED, UNFINISHED
from node.model.events import EventType
from node.model.job import JobState, Outcome
from node.model.lifecycle import after_attempt, end_event
from node.transfer.outbox import Outbox, OutboxKind

Chooser = Callable[[str, str], "str | None"]
"""`choose(topic, queue)`: a target for a job, or None (called on the writer thread)."""


class Assigner:
    """Moves jobs between instances, in the caller's transaction."""

    def __init__(self, outbox: Outbox, recorder: Recorder) -> None:
        self.outbox = outbox
        self.local_id = outbox.local_id
        self._recorder = recorder

    def hand_back(self, conn: sqlite3.Connection, now_us: int) -> int:
        """Give jobs of other origins this node no longer consumes (QUEUED, unassigned) back to
        their origins: they end DROPPED here and a report tells the origin to reassign them."""
        rows = conn.execute(
            f"UPDATE jobs SET state = {DROPPED}, finished_us = ? WHERE state = {QUEUED} AND target IS NULL "
            "AND origin != ? RETURNING id, origin, epoch",
            (now_us, self.local_id),
        ).fetchall()
        self.outbox.enqueue(conn, OutboxKind.REPORT, ((r["origin"], r["id"], r["epoch"]) for r in rows))
        return len(rows)

    def assign(self, conn: sqlite3.Connection, choose: Chooser, now_us: int, from_peer: str | None) -> int:
        """Give this node's jobs a target: unassigned QUEUED ones, or (with `from_peer`) the
        unfinished ones of a dead peer, under a new epoch. Returns how many moved."""
        local = self.local_id
        if from_peer is None:
            rows = conn.execute(
                f"SELECT id, topic, queue FROM jobs WHERE state = {QUEUED} AND target IS NULL AND origin = ? "
                "LIMIT 10000",
                (local,),
            ).fetchall()
        else:
            self._stop_requested_on(conn, from_peer, now_us)
            self._count_lost_attempts(conn, from_peer, now_us)
            rows = conn.execute(
                f"SELECT id, topic, queue FROM jobs WHERE target = ? AND origin = ? AND state IN {UNFINISHED}",
                (from_peer, local),
            ).fetchall()
            self.outbox.discard_jobs(conn, from_peer)
        moved = 0
        for row in rows:
            target = choose(row["topic"], row["queue"])
            if target is None and from_peer is None:
                continue
            epoch = conn.execute(
                f"UPDATE jobs SET state = {QUEUED}, target = ?, epoch = epoch + 1, report_seq = 0, "
                "started_us = NULL, progress_total = NULL, progress_done = NULL, eta_us = NULL, due_us = ? "
                "WHERE id = ? RETURNING epoch",
                (target, now_us, row["id"]),
            ).fetchone()["epoch"]
            if target is not None and target != local:
                self.outbox.enqueue(conn, OutboxKind.JOB, [(target, row["id"], epoch)])
            moved += 1
        return moved

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
