"""Applying a received frame: jobs from origins, reports from targets, controls from origins.

All of a frame applies in one transaction, idempotently: a job is taken once per (origin, job
id, epoch), a report once per report seq, and anything of a stale epoch is fenced off.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jobmesh.peer.v1 import transfer_pb2

from node.errors import InvalidArgument
from node.jobs.validation import JobLimits, check_exchange
from node.journal.controls import finish_job
from node.journal.jobs import JobStore
from node.journal.payloads import store_payload
from node.journal.records import FINISHED, PAYLOAD_OUTPUT, QUEUED, NewJobRecord
from node.model.events import EventType
from node.model.job import JobState
from node.model.lifecycle import mirrored_events
from node.transfer.chunks import ChunkAssembler, crc32
from node.transfer.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """Where a job received from its origin goes on this node (decided on the loop)."""

    queue: str
    target: str | None


@dataclass(frozen=True)
class Applied:
    """What applying one received frame changed."""

    jobs_added: int
    ended: Mapping[str, int]  # target instance id -> offloaded jobs that finished
    stop_running: tuple[str, ...] = ()  # running jobs here whose origin stopped or removed them


def arrivals_for(
    jobs: Sequence[transfer_pb2.OffloadedJob], place: Callable[[str], Arrival]
) -> dict[str, Arrival]:
    """Arrival per topic of the jobs in a frame."""
    return {topic: place(topic) for topic in {j.topic for j in jobs}}


def check_frame(
    frame: transfer_pb2.ExchangeRequest, assembler: ChunkAssembler | None, limits: JobLimits | None = None
) -> None:
    """Check every value like client data, reassemble chunked payloads (with the stream's
    `assembler`) and check every checksum; InvalidArgument before anything is stored."""
    check_exchange(frame, limits or JobLimits())
    if assembler is not None:
        assembler.resolve(frame)
    elif (
        frame.chunks
        or any(j.payload_chunked for j in frame.jobs)
        or any(r.output_chunked for r in frame.reports)
    ):
        raise InvalidArgument("a chunked payload arrived outside a transfer stream")
    for job in frame.jobs:
        if crc32(job.payload) != job.payload_crc32:
            raise InvalidArgument(f"job {job.job_id}: the payload checksum does not match; resend")
    for report in frame.reports:
        if crc32(report.output_payload) != report.output_crc32:
            raise InvalidArgument(f"report of job {report.job_id}: the output checksum does not match")


@dataclass(frozen=True)
class _Ref:
    id: str
    topic: str
    queue: str
    retry_count: int


class FrameApplier:
    """Applies checked frames inside a write operation (writer thread)."""

    def __init__(self, jobs: JobStore, outbox: Outbox) -> None:
        self.jobs = jobs
        self.outbox = outbox
        self.local_id = outbox.local_id
        self._recorder = jobs.journal.recorder

    def apply(
        self,
        conn: sqlite3.Connection,
        frame: transfer_pb2.ExchangeRequest,
        arrivals: Mapping[str, Arrival],
        now_us: int,
    ) -> Applied:
        """Apply every item of `frame` in the caller's transaction."""
        sender = frame.sender_id
        added = sum(self._apply_job(conn, sender, job, arrivals[job.topic], now_us) for job in frame.jobs)
        ended: dict[str, int] = {}
        for report in frame.reports:
            if self._apply_report(conn, sender, report, now_us):
                ended[sender] = ended.get(sender, 0) + 1
        running = [c.job_id for c in frame.controls if self._apply_control(conn, sender, c, now_us)]
        return Applied(added, ended, tuple(running))

    def _apply_job(
        self,
        conn: sqlite3.Connection,
        sender: str,
        job: transfer_pb2.OffloadedJob,
        arrival: Arrival,
        now_us: int,
    ) -> int:
        existing = conn.execute("SELECT epoch, origin FROM jobs WHERE id = ?", (job.job_id,)).fetchone()
        if existing is not None:
            if existing["origin"] != sender:
                # Only a job's origin may (re)send it: another node re-sending it (a higher epoch
                # to run it again) speaks for an instance it is not. Ignored, as a duplicate is.
                log.warning(
                    "ignoring job %s from %s: its origin is %s, and only the origin may send it",
                    job.job_id,
                    sender,
                    existing["origin"],
                )
                return 0
            if existing["epoch"] >= job.epoch:
                return 0  # applied before: (origin, job id, epoch) once
            conn.execute(  # the origin gave the job back to us under a new epoch: run it again
                f"UPDATE jobs SET state = {QUEUED}, epoch = ?, target = ?, retry_count = ?, due_us = ?, "
                "started_us = NULL, finished_us = NULL, result_message = '', output_size = 0 WHERE id = ?",
                (job.epoch, arrival.target, job.retry_count, now_us, job.job_id),
            )
            self.outbox.foreign_job_added()
            return 1
        record = NewJobRecord(
            id=job.job_id,
            topic=job.topic,
            properties_json=job.properties_json or None,
            queue=arrival.queue,
            origin=sender,
            target=arrival.target,
            max_retries=job.max_retries,
            created_us=job.created_us,
            payload=job.payload or None,
            retry_delay_us=job.retry_delay_us if job.HasField("retry_delay_us") else None,
            timeout_us=job.timeout_us if job.HasField("timeout_us") else None,
        )
        self.jobs.insert(conn, [record])
        conn.execute(  # the retries it had at earlier targets count here too
            "UPDATE jobs SET epoch = ?, retry_count = ? WHERE id = ?",
            (job.epoch, job.retry_count, job.job_id),
        )
        return 1

    def _apply_report(
        self, conn: sqlite3.Connection, sender: str, report: transfer_pb2.JobReport, now_us: int
    ) -> bool:
        """Mirror a target's report; True if it ended the job. Stale epochs are fenced off."""
        row = conn.execute(
            "SELECT seq, state, topic, queue, retry_count, started_us FROM jobs "
            "WHERE id = ? AND origin = ? AND target = ? AND epoch = ? "
            f"AND report_seq < ? AND state NOT IN {FINISHED}",
            (report.job_id, self.local_id, sender, report.epoch, report.report_seq),
        ).fetchone()
        if row is None:
            return False
        seq = row["seq"]
        if report.handed_back:  # the target will not run it: wait for the next target, new epoch
            conn.execute(
                f"UPDATE jobs SET state = {QUEUED}, target = NULL, epoch = epoch + 1, report_seq = 0, "
                "started_us = NULL, due_us = ?, retry_count = max(retry_count, ?) WHERE seq = ?",
                (now_us, report.retry_count, seq),
            )
            return True
        state = JobState(report.state)
        conn.execute(
            "UPDATE jobs SET state = ?, retry_count = ?, started_us = ?, finished_us = ?, result_message = ?, "
            "progress_total = ?, progress_done = ?, eta_us = ?, report_seq = ?, output_size = ? WHERE seq = ?",
            (
                int(state),
                report.retry_count,
                report.started_us or None,
                report.finished_us or None,
                report.result_message,
                report.progress_total or None,
                report.progress_done or None,
                report.eta_us or None,
                report.report_seq,
                len(report.output_payload),
                seq,
            ),
        )
        if report.log_lines:
            conn.executemany(
                "INSERT OR REPLACE INTO job_log (job_seq, line, time_us, message) VALUES (?, ?, ?, ?)",
                [(seq, line.line, line.time_us, line.message) for line in report.log_lines],
            )
            conn.execute(
                "UPDATE jobs SET log_count = max(log_count, ?) WHERE seq = ?", (report.log_count, seq)
            )
        if report.output_payload:
            store_payload(conn, seq, PAYLOAD_OUTPUT, report.output_payload)
        # One report may stand for several of the target's events (its row, not each event):
        # every attempt still shows STARTED before its end at the origin.
        for event in mirrored_events(
            was_active=JobState(row["state"]) is JobState.ACTIVE,
            seen_retry_count=row["retry_count"],
            seen_started_us=row["started_us"] or 0,
            state=state,
            retry_count=report.retry_count,
            started_us=report.started_us,
            is_progress=report.is_progress,
        ):
            self._recorder.event(
                event.type,
                now_us,
                report.job_id,
                row["topic"],
                row["queue"],
                event.state,
                event.retry_count,
                report.result_message if event.type is not EventType.STARTED else "",
                (report.progress_total, report.progress_done, report.eta_us or None),
                target=sender,
            )
        return state.is_finished

    def _apply_control(
        self, conn: sqlite3.Connection, sender: str, control: transfer_pb2.JobControl, now_us: int
    ) -> bool:
        """Stop or drop a job its origin stopped or removed; True if it runs here now (its
        consumer must be told). Idempotent: finished, unknown or other-epoch jobs are left alone."""
        row = conn.execute(
            "SELECT state, topic, queue, retry_count FROM jobs WHERE id = ? AND origin = ? AND epoch = ? "
            f"AND state NOT IN {FINISHED}",
            (control.job_id, sender, control.epoch),
        ).fetchone()
        if row is None:
            return False
        state = JobState(row["state"])
        if not control.remove and state is JobState.ACTIVE:
            conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (control.job_id,))
            return True
        job = _Ref(control.job_id, row["topic"], row["queue"], row["retry_count"])
        if control.remove:
            finish_job(conn, self._recorder, job, JobState.DROPPED, "removed at the origin", now_us)
        else:
            finish_job(conn, self._recorder, job, JobState.STOPPED, "stopped at the origin", now_us)
        return state is JobState.ACTIVE
