"""Attempts: how an ACTIVE job's attempt ends (a consumer's result, a shutdown, a crash) and
what a running attempt reports (progress, log lines, properties).

Every end goes through one rule, `node.model.lifecycle.after_attempt` (retries, GIVEN_UP, stop
requests), also crash recovery, where the lost attempt counts as failed. Reports are fenced by
the attempt number: a result of an attempt that is no longer current changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from node.journal.payloads import store_payload
from node.journal.property_index import index_job, unindex_jobs
from node.journal.records import (
    ACTIVE,
    PAYLOAD_OUTPUT,
    QUEUED,
    SUCCEEDED,
    AttemptReport,
    JobStorePart,
    delete_jobs,
)
from node.model.events import EventType
from node.model.job import JobState, Outcome
from node.model.lifecycle import after_attempt, end_event
from node.properties import value_to_json

CRASH_MESSAGE = "the node stopped while the job was running"


class Attempts(JobStorePart):
    """Ending attempts, and the reports of running ones."""

    async def end_attempts(self, reports: Sequence[AttemptReport], now_us: int) -> list[bool]:
        """Apply consumer results in one operation; False for a report whose attempt is stale."""

        def apply(conn: sqlite3.Connection) -> list[bool]:
            return [self._end_attempt(conn, report, now_us) for report in reports]

        return await self.journal.write(apply)

    def _end_attempt(self, conn: sqlite3.Connection, report: AttemptReport, now_us: int) -> bool:
        output_size = len(report.output) if report.output else 0
        if report.outcome is Outcome.SUCCEEDED:
            # The common case in one statement: success does not depend on retries or stop requests.
            row = conn.execute(
                f"UPDATE jobs SET state = {SUCCEEDED}, finished_us = ?, result_message = ?, output_size = ? WHERE "
                + ("seq = ?" if report.seq else "id = ?")
                + f" AND state = {ACTIVE} AND attempt = ? RETURNING seq, topic, queue, retry_count, target, started_us",
                (now_us, report.message, output_size, report.seq or report.job_id, report.attempt),
            ).fetchone()
            if row is None:  # stopped, removed or re-queued meanwhile: this attempt is stale
                return False
            state, retry_count = JobState.SUCCEEDED, row["retry_count"]
        else:
            row = conn.execute(
                "SELECT seq, retry_count, max_retries, stop_requested, retry_delay_us, started_us, topic, queue, "
                f"target FROM jobs WHERE id = ? AND state = {ACTIVE} AND attempt = ?",
                (report.job_id, report.attempt),
            ).fetchone()
            if row is None:
                return False

            def delay_us(retry_count: int) -> int:
                override_s = report.retry_delay_s
                if override_s is None and row["retry_delay_us"] is not None:
                    override_s = row["retry_delay_us"] / 1e6
                return report.queue.retry_delay_us(retry_count, override_s)

            state, retry_count, _ = self._end_unsuccessful(
                conn, row, report.outcome, report.message, now_us, delay_us=delay_us, output_size=output_size
            )
        seq, topic, queue = row["seq"], row["topic"], row["queue"]
        if report.output and state is not JobState.QUEUED:
            store_payload(conn, seq, PAYLOAD_OUTPUT, report.output)
        kind, outcome = end_event(state)
        recorder = self._recorder
        recorder.event(
            kind,
            now_us,
            report.job_id,
            topic,
            queue,
            state,
            retry_count,
            report.message,
            target=row["target"],
        )
        recorder.ended(queue, topic, outcome, now_us - (row["started_us"] or now_us), now_us)
        if (
            state is JobState.SUCCEEDED
            and not report.queue.keep_jobs
            and not self._hook.keeps_finished(conn, seq)
        ):
            delete_jobs(conn, [seq])
        return True

    @staticmethod
    def _end_unsuccessful(
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        outcome: Outcome,
        message: str,
        now_us: int,
        *,
        delay_us: Callable[[int], int] = lambda _retry_count: 0,
        output_size: int | None = None,
        given_up_note: str = "",
    ) -> tuple[JobState, int, str]:
        """End an attempt that did not succeed by the lifecycle rule: re-queued (due after
        `delay_us(new retry count)`) or finished. Returns (state, retry count, message written)."""
        transition = after_attempt(
            outcome,
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            stop_requested=bool(row["stop_requested"]),
        )
        state, retry_count = transition.state, transition.retry_count
        if state is JobState.GIVEN_UP:
            message += given_up_note
        if state is JobState.QUEUED:
            conn.execute(
                f"UPDATE jobs SET state = {QUEUED}, retry_count = ?, due_us = ?, result_message = ? WHERE seq = ?",
                (retry_count, now_us + delay_us(retry_count), message, row["seq"]),
            )
        else:
            conn.execute(
                "UPDATE jobs SET state = ?, retry_count = ?, finished_us = ?, result_message = ?, "
                "output_size = coalesce(?, output_size) WHERE seq = ?",
                (int(state), retry_count, now_us, message, output_size, row["seq"]),
            )
        return state, retry_count, message

    def _requeued(self, job_id: str, row: sqlite3.Row, message: str, now_us: int) -> None:
        """The FAILED event of an attempt put back to QUEUED with its retry count unchanged."""
        self._recorder.event(
            EventType.FAILED,
            now_us,
            job_id,
            row["topic"],
            row["queue"],
            JobState.QUEUED,
            row["retry_count"],
            message,
        )

    async def requeue_active(self, job_ids: Sequence[tuple[str, int]], now_us: int) -> int:
        """Put ACTIVE attempts back to QUEUED, retry count unchanged (graceful shutdown)."""

        def update(conn: sqlite3.Connection) -> int:
            count = 0
            for job_id, attempt in job_ids:
                row = conn.execute(
                    f"UPDATE jobs SET state = {QUEUED}, due_us = ? WHERE id = ? AND state = {ACTIVE} AND attempt = ? "
                    "RETURNING topic, queue, retry_count",
                    (now_us, job_id, attempt),
                ).fetchone()
                if row is not None:
                    count += 1
                    self._requeued(job_id, row, "re-queued: the node shut down while the job ran", now_us)
            return count

        return await self.journal.write(update)

    async def release_active(self, job_id: str, attempt: int, now_us: int, message: str) -> bool:
        """Put an ACTIVE attempt back to QUEUED *unassigned*, retry count unchanged.

        For an attempt no consumer took (its consumer went away between claim and run): the
        job waits for a consumer instead of spending a retry. False if the attempt is stale or
        a stop was requested (end that attempt as failed instead: it becomes STOPPED).
        """

        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                # result_message stays: it tells why the last attempt that ran ended.
                f"UPDATE jobs SET state = {QUEUED}, target = NULL, due_us = ? "
                f"WHERE id = ? AND state = {ACTIVE} AND attempt = ? AND stop_requested = 0 "
                "RETURNING topic, queue, retry_count",
                (now_us, job_id, attempt),
            ).fetchone()
            if row is None:
                return False
            self._requeued(job_id, row, message, now_us)
            return True

        return await self.journal.write(update)

    async def recover_after_crash(self, target: str, now_us: int) -> tuple[int, int, int]:
        """Handle jobs left ACTIVE by a crash: their lost attempt counts as failed.

        The lifecycle rule decides, as for any failed attempt: re-queued with retry count + 1
        (due at once), STOPPED if a stop was requested, GIVEN_UP when the retries are used up
        (the job may be what crashed the node). Returns (requeued, stopped, given_up).
        """
        recorder = self._recorder

        def update(conn: sqlite3.Connection) -> tuple[int, int, int]:
            counts = dict.fromkeys(JobState, 0)
            lost = conn.execute(
                "SELECT seq, id, topic, queue, retry_count, max_retries, stop_requested FROM jobs "
                f"WHERE state = {ACTIVE} AND target = ? ORDER BY seq",
                (target,),
            ).fetchall()
            for row in lost:
                state, retries, text = self._end_unsuccessful(
                    conn, row, Outcome.FAILED, CRASH_MESSAGE, now_us, given_up_note="; no retries left"
                )
                kind, outcome = end_event(state)
                recorder.event(
                    kind, now_us, row["id"], row["topic"], row["queue"], state, retries, text, target=target
                )
                # Counted like the failure its retry count records; its duration is unknown.
                recorder.ended(row["queue"], row["topic"], outcome, None, now_us)
                counts[state] += 1
            return counts[JobState.QUEUED], counts[JobState.STOPPED], counts[JobState.GIVEN_UP]

        return await self.journal.write(update)

    # --- reports of running attempts (thread-safe, fire and forget) -----------------------------

    def _progress_event(self, conn: sqlite3.Connection, job_id: str, now_us: int, message: str = "") -> None:
        row = conn.execute(
            "SELECT topic, queue, retry_count, progress_total, progress_done, eta_us, target FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        self._recorder.event(
            EventType.PROGRESS,
            now_us,
            job_id,
            row["topic"],
            row["queue"],
            JobState.ACTIVE,
            row["retry_count"],
            message,
            (row["progress_total"] or 0, row["progress_done"] or 0, row["eta_us"]),
            target=row["target"],
        )

    def report_progress(
        self,
        job_id: str,
        attempt: int,
        now_us: int,
        *,
        total: int | None = None,
        increment: int = 0,
        eta_us: int | None = None,
    ) -> None:
        """Set the total steps (resets done), add done steps, or set the ETA of a running attempt.

        Without an explicit ETA, one is estimated from the time per step so far.
        """

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT progress_total, progress_done, started_us FROM jobs "
                f"WHERE id = ? AND state = {ACTIVE} AND attempt = ?",
                (job_id, attempt),
            ).fetchone()
            if row is None:
                return
            steps, done = row["progress_total"] or 0, row["progress_done"] or 0
            started = row["started_us"] or now_us
            if total is not None:
                steps, done = total, 0
            done = min(done + increment, steps) if steps else done + increment
            eta = eta_us
            if eta is None and steps and done:
                eta = started + (now_us - started) * steps // done
            conn.execute(
                "UPDATE jobs SET progress_total = ?, progress_done = ?, eta_us = coalesce(?, eta_us) WHERE id = ?",
                (steps, done, eta, job_id),
            )
            self._progress_event(conn, job_id, now_us)

        self.journal.submit_nowait(update)

    def append_log(self, job_id: str, attempt: int, now_us: int, message: str, max_lines: int) -> None:
        """Add a log line to a running attempt's job, keeping the newest `max_lines`."""

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                f"UPDATE jobs SET log_count = log_count + 1 WHERE id = ? AND state = {ACTIVE} AND attempt = ? "
                "RETURNING seq, log_count",
                (job_id, attempt),
            ).fetchone()
            if row is None:
                return
            seq, count = row["seq"], row["log_count"]
            conn.execute(
                "INSERT INTO job_log (job_seq, line, time_us, message) VALUES (?, ?, ?, ?)",
                (seq, count, now_us, message),
            )
            conn.execute("DELETE FROM job_log WHERE job_seq = ? AND line <= ?", (seq, count - max_lines))
            self._progress_event(conn, job_id, now_us, message)

        self.journal.submit_nowait(update)

    def set_property(self, job_id: str, attempt: int, name: str, value: object, max_bytes: int) -> None:
        """Set one property of a running attempt's job."""
        encoded = json.dumps(value_to_json(value, f"property {name!r}"), separators=(",", ":"))
        path = '$."' + name + '"'

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                f"SELECT seq FROM jobs WHERE id = ? AND state = {ACTIVE} AND attempt = ?", (job_id, attempt)
            ).fetchone()
            if row is None:
                return
            unindex_jobs(conn, [row["seq"]])  # the property index follows the row (property_index.py)
            conn.execute(
                "UPDATE jobs SET properties = json_set(coalesce(properties, '{}'), ?, json(?)) "
                "WHERE seq = ? AND length(json_set(coalesce(properties, '{}'), ?, json(?))) <= ?",
                (path, encoded, row["seq"], path, encoded, max_bytes),
            )
            index_job(conn, row["seq"])

        self.journal.submit_nowait(update)
