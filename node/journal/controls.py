"""User controls: stop, remove and retry a job, clear a queue, purge history.

A stop or remove of a job this node offloaded is told to the journal hook in the same
transaction, so the request reaches the job's target exactly when the change commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from node.errors import FailedPrecondition, InvalidArgument, JobNotFound
from node.journal.recorder import Recorder
from node.journal.records import (
    DROPPED,
    PAYLOAD_OUTPUT,
    QUEUED,
    JobRef,
    JobStorePart,
    delete_jobs,
    select_job,
    state_list,
)
from node.model.events import EventType
from node.model.job import Job, JobState


def require_job(conn: sqlite3.Connection, job_id: str) -> Job:
    """The job with `job_id`, read in the caller's transaction, or JobNotFound."""
    job = select_job(conn, job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r} on this node")
    return job


_FINISH_EVENTS = {JobState.STOPPED: EventType.STOPPED, JobState.DROPPED: EventType.REMOVED}


def finish_job(
    conn: sqlite3.Connection, recorder: Recorder, job: JobRef, state: JobState, message: str, now_us: int
) -> None:
    """End an unfinished job STOPPED or DROPPED, with its event, in the caller's transaction."""
    event = _FINISH_EVENTS[state]
    conn.execute(
        f"UPDATE jobs SET state = {state:d}, finished_us = ?, result_message = ? WHERE id = ?",
        (now_us, message, job.id),
    )
    recorder.event(event, now_us, job.id, job.topic, job.queue, state, job.retry_count, message)


class Controls(JobStorePart):
    """What users do to jobs and to the history."""

    async def stop(self, job_id: str, now_us: int) -> Job:
        """QUEUED -> STOPPED; ACTIVE -> stop requested; finished -> FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = require_job(conn, job_id)
            if job.state is JobState.QUEUED:
                finish_job(conn, self._recorder, job, JobState.STOPPED, "stopped by a user", now_us)
            elif job.state is JobState.ACTIVE:
                conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise FailedPrecondition(
                    f"job {job_id} is already finished ({job.state.name}); nothing to stop"
                )
            self._hook.job_cancelled(conn, job_id, removed=False)
            return require_job(conn, job_id)

        return await self.journal.write(update)

    async def remove(self, job_id: str, now_us: int) -> Job | None:
        """QUEUED/ACTIVE -> DROPPED (returns the job); a history entry is deleted (returns None)."""

        def update(conn: sqlite3.Connection) -> Job | None:
            job = require_job(conn, job_id)
            if job.state.is_finished:
                delete_jobs(conn, [job.seq])
                self._recorder.event(
                    EventType.REMOVED,
                    now_us,
                    job.id,
                    job.topic,
                    job.queue,
                    job.state,
                    job.retry_count,
                    "deleted from history",
                )
                return None
            finish_job(conn, self._recorder, job, JobState.DROPPED, "removed by a user", now_us)
            self._hook.job_cancelled(conn, job_id, removed=True)
            return require_job(conn, job_id)

        return await self.journal.write(update)

    async def retry(self, job_id: str, target: str | None, queue: str, now_us: int) -> Job:
        """A finished job -> QUEUED with retry count 0; otherwise FailedPrecondition."""

        def update(conn: sqlite3.Connection) -> Job:
            job = require_job(conn, job_id)
            if not job.state.is_finished:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state.name}, not finished; only history can be retried"
                )
            conn.execute(
                f"UPDATE jobs SET state = {QUEUED}, retry_count = 0, due_us = ?, target = ?, queue = ?, "
                "started_us = NULL, finished_us = NULL, result_message = '', stop_requested = 0, output_size = 0, "
                "progress_total = NULL, progress_done = NULL, eta_us = NULL WHERE seq = ?",
                (now_us, target, queue, job.seq),
            )
            conn.execute("DELETE FROM payloads WHERE job_seq = ? AND kind = ?", (job.seq, PAYLOAD_OUTPUT))
            self._recorder.event(
                EventType.ADDED, now_us, job.id, job.topic, queue, JobState.QUEUED, 0, "retried by a user"
            )
            return require_job(conn, job_id)

        return await self.journal.write(update)

    async def clear_queue(self, queue: str, now_us: int) -> int:
        """Drop every QUEUED job of `queue`; returns how many."""
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"UPDATE jobs SET state = {DROPPED}, finished_us = ?, result_message = 'removed: queue cleared' "
                f"WHERE state = {QUEUED} AND queue = ? RETURNING id, topic, retry_count",
                (now_us, queue),
            ).fetchall()
            for row in rows:
                recorder.event(
                    EventType.REMOVED,
                    now_us,
                    row["id"],
                    row["topic"],
                    queue,
                    JobState.DROPPED,
                    row["retry_count"],
                    "queue cleared",
                )
            return len(rows)

        return await self.journal.write(update)

    async def purge(
        self, states: Sequence[JobState], finished_before_us: int | None, keep_newest: int, batch: int = 5000
    ) -> int:
        """Delete finished jobs in `states` that finished before the cutoff, keeping the newest (by creation)."""
        if any(not s.is_finished for s in states):
            raise InvalidArgument(
                "only history states (SUCCEEDED, STOPPED, GIVEN_UP, ERROR, DROPPED) can be purged"
            )
        age = "AND finished_us < ?" if finished_before_us is not None else ""
        params: list[Any] = [finished_before_us] if finished_before_us is not None else []
        # "Newest" is by creation (seq), which the (state, seq) index walks backwards; the
        # oldest rows come first when only age counts, so each batch stops early.
        select = f"SELECT seq FROM jobs WHERE state IN {state_list(states)} {age}"
        if keep_newest:
            select += " ORDER BY seq DESC LIMIT ? OFFSET ?"
            select_params = [*params, batch, keep_newest]
        else:
            select += " LIMIT ?"
            select_params = [*params, batch]

        def delete(conn: sqlite3.Connection) -> int:
            seqs = [r["seq"] for r in conn.execute(select, select_params)]
            delete_jobs(conn, seqs)
            return len(seqs)

        total = 0
        while True:
            deleted = await self.journal.write(delete)
            total += deleted
            if deleted < batch:
                return total
