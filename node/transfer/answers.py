"""Reconciliation in the journal: answering TransferService.Reconcile both ways, what an origin
asks its targets about, and what each side does with the answers (node/transfer/reconcile.py
runs the rounds). Functions taking a connection run inside one read or write operation.

Identity: the asker is the checked `sender_id` (the caller's certificate). A target answers
only about jobs whose origin is the asker; an origin says "yours" only for a job assigned to
the asker at the epoch asked. Anything else gets an answer that changes nothing for others.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from jobmesh.peer.v1 import transfer_pb2

from node.journal.controls import finish_job
from node.journal.recorder import Recorder
from node.journal.records import ACTIVE, COLUMNS, QUEUED, UNFINISHED, JobRow
from node.model.job import JobState
from node.transfer.assign import Assigner, Chooser
from node.transfer.outbox import FOREIGN_QUEUED_HERE, Outbox, OutboxKind

Status = transfer_pb2.ReconcileStatus
_BY_STATE = {
    JobState.STOPPED: transfer_pb2.RECONCILE_STATUS_STOPPED,
    JobState.DROPPED: transfer_pb2.RECONCILE_STATUS_REMOVED,
}


def answer_as_target(
    conn: sqlite3.Connection, outbox: Outbox, request: transfer_pb2.ReconcileRequest
) -> transfer_pb2.ReconcileResponse:
    """This node is (the origin thinks) the target: KNOWN with its state for each job of the
    asker it has at that epoch, and its report queued again when the origin's view differs;
    UNKNOWN for the rest. Write operation (it may enqueue reports)."""
    asker, response = request.sender_id, transfer_pb2.ReconcileResponse()
    resend: list[tuple[str, str, int]] = []
    rows = _rows_by_id(conn, "origin, epoch, state, retry_count", request)
    for job in request.jobs:
        row = rows.get(job.job_id)
        if row is None or row["origin"] != asker or row["epoch"] != job.epoch or asker == outbox.local_id:
            response.answers.add(
                job_id=job.job_id, epoch=job.epoch, status=transfer_pb2.RECONCILE_STATUS_UNKNOWN
            )
            continue
        state, retry_count = JobState(row["state"]), int(row["retry_count"])
        if (int(state), retry_count) != (job.state, job.retry_count):
            resend.append((asker, job.job_id, job.epoch))  # lost or late: it goes again (fenced as any)
        response.answers.add(
            job_id=job.job_id,
            epoch=job.epoch,
            status=transfer_pb2.RECONCILE_STATUS_KNOWN,
            state=state,
            retry_count=retry_count,
        )
    outbox.enqueue(conn, OutboxKind.REPORT, resend)
    return response


def answer_as_origin(
    conn: sqlite3.Connection, local_id: str, request: transfer_pb2.ReconcileRequest
) -> transfer_pb2.ReconcileResponse:
    """This node is the origin: whether each job is still the asker's at that epoch. Read."""
    asker, response = request.sender_id, transfer_pb2.ReconcileResponse()
    rows = _rows_by_id(conn, "origin, target, epoch, state", request)
    for job in request.jobs:
        row = rows.get(job.job_id)
        status: Status.ValueType
        if row is None or row["origin"] != local_id:
            status = transfer_pb2.RECONCILE_STATUS_UNKNOWN
        elif row["target"] != asker or row["epoch"] != job.epoch:
            status = transfer_pb2.RECONCILE_STATUS_REASSIGNED
        elif JobState(row["state"]).is_finished:
            status = _BY_STATE.get(JobState(row["state"]), transfer_pb2.RECONCILE_STATUS_FINISHED)
        else:
            status = transfer_pb2.RECONCILE_STATUS_YOURS
        response.answers.add(job_id=job.job_id, epoch=job.epoch, status=status)
    return response


def _rows_by_id(
    conn: sqlite3.Connection, columns: str, request: transfer_pb2.ReconcileRequest
) -> dict[str, sqlite3.Row]:
    """The asked jobs' rows with `columns`, by id: one query for the whole question (at most
    RECONCILE_MAX_JOBS ids, checked before), not one per job."""
    ids = [job.job_id for job in request.jobs]
    found = conn.execute(
        f"SELECT id, {columns} FROM jobs WHERE id IN ({', '.join('?' * len(ids))})", ids
    ).fetchall()
    return {row["id"]: row for row in found}


# --- the origin asks its targets ---


MAX_TRACKED = 10_000
"""Jobs per target and state an origin round looks at (the oldest; the rest once these end)."""


def offloaded_to(conn: sqlite3.Connection, local_id: str, target: str) -> list[sqlite3.Row]:
    """This origin's unfinished jobs at `target` whose copy was delivered (a job still in the
    outbox is not asked about: the target cannot know it yet), at most MAX_TRACKED ACTIVE and
    as many QUEUED, oldest first; none while a larger backlog of copies is still on its way (the
    stream is busy, not quiet). Read."""
    undelivered = {
        r["job_id"]
        for r in conn.execute(
            f"SELECT job_id FROM outbox WHERE peer = ? AND kind = {OutboxKind.JOB:d} LIMIT ?",
            (target, MAX_TRACKED + 1),
        )
    }
    if len(undelivered) > MAX_TRACKED:
        return []
    rows: list[sqlite3.Row] = []
    for state in (ACTIVE, QUEUED):  # jobs_remote is (target, state), then seq: oldest first
        rows += conn.execute(
            "SELECT id, epoch, state, retry_count, report_seq FROM jobs INDEXED BY jobs_remote "
            f"WHERE target = ? AND state IN {UNFINISHED} AND state = {state} AND origin = ? LIMIT ?",
            (target, local_id, MAX_TRACKED),
        ).fetchall()
    return [r for r in rows if r["id"] not in undelivered]


def reassign_unknown(
    conn: sqlite3.Connection,
    assigner: Assigner,
    target: str,
    jobs: Sequence[tuple[str, int]],
    choose: Chooser,
    now_us: int,
) -> int:
    """Reassign under a new epoch the jobs `target` said it does not know at their epoch (if
    they are still there at that epoch and delivered: nothing changed since the question).
    Write operation; returns how many moved."""
    placed: list[tuple[str, str | None]] = []
    for job_id, epoch in jobs:
        row = conn.execute(
            f"SELECT topic, queue FROM jobs WHERE id = ? AND origin = ? AND target = ? AND epoch = ? "
            f"AND state IN {UNFINISHED} AND NOT EXISTS (SELECT 1 FROM outbox WHERE peer = ? "
            f"AND kind = {OutboxKind.JOB:d} AND job_id = ?)",
            (job_id, assigner.local_id, target, epoch, target, job_id),
        ).fetchone()
        if row is not None:
            placed.append((job_id, choose(row["topic"], row["queue"])))
    return assigner.move(conn, placed, now_us)


# --- a target asks an origin ---


def queued_origins(conn: sqlite3.Connection, local_id: str) -> set[str]:
    """The other origins with jobs QUEUED for this node. Read."""
    rows = conn.execute(  # at start; visits the other origins' jobs queued here, not the local ones
        f"SELECT DISTINCT origin FROM jobs INDEXED BY jobs_foreign_queued WHERE {FOREIGN_QUEUED_HERE}",
        (local_id,),
    ).fetchall()
    return {r["origin"] for r in rows}


def queued_from(conn: sqlite3.Connection, local_id: str, origin: str) -> list[sqlite3.Row]:
    """The jobs of `origin` (another node) QUEUED for this node. Read."""
    return conn.execute(  # an index search whatever the local backlog (run every few seconds)
        f"SELECT id, epoch, state, retry_count FROM jobs INDEXED BY jobs_foreign_queued WHERE {FOREIGN_QUEUED_HERE} "
        "AND origin = ?2 ORDER BY seq",
        (local_id, origin),
    ).fetchall()


def drop_fenced(
    conn: sqlite3.Connection,
    recorder: Recorder,
    origin: str,
    answers: Sequence[transfer_pb2.ReconcileAnswer],
    now_us: int,
) -> int:
    """End unrun the QUEUED jobs of `origin` it said are no longer this node's (if they are still
    QUEUED at the epoch asked: a newer copy that arrived since stays). One it stopped ends
    STOPPED, as the origin's stop would have ended it had it come first; the others DROPPED.
    Their reports change nothing at the origin (the job is finished there, or at a newer
    epoch). Write operation; returns how many ended."""
    ended = 0
    for answer in answers:
        if answer.status == transfer_pb2.RECONCILE_STATUS_YOURS:
            continue
        row = conn.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE id = ? AND origin = ? AND epoch = ? AND state = {QUEUED}",
            (answer.job_id, origin, answer.epoch),
        ).fetchone()
        if row is None:
            continue
        if answer.status == transfer_pb2.RECONCILE_STATUS_STOPPED:
            state, message = JobState.STOPPED, f"stopped at the origin {origin} before it ran here"
        else:
            why = transfer_pb2.ReconcileStatus.Name(answer.status).removeprefix("RECONCILE_STATUS_").lower()
            state = JobState.DROPPED
            message = f"dropped unrun: its origin {origin} says it is {why} (this node was out of contact)"
        finish_job(conn, recorder, JobRow._make(row), state, message, now_us)
        ended += 1
    return ended
