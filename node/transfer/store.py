"""The transfer outbox in the journal: frames to send, frames received, reassignment.

Outbox rows are written in the same transaction as the change they announce: a job offloaded
when it is added (`JobStore.insert`), a report when an offloaded job's state changes (the
recorder). A row names the job, not a copy of it: the frame is built from the job's current
row when it is sent, so a report always carries the newest state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jobmesh.v1 import transfer_pb2

from node.config import CHUNK_BYTES
from node.errors import InvalidArgument
from node.journal.jobs import (
    OUTBOX_REMOVE,
    OUTBOX_STOP,
    PAYLOAD_INPUT,
    PAYLOAD_OUTPUT,
    JobStore,
    NewJobRecord,
)
from node.journal.journal import Journal
from node.model.events import EventType
from node.model.job import JobState
from node.transfer.chunks import ChunkAssembler, crc32

KIND_JOB, KIND_REPORT = 1, 2
_FINISHED = tuple(int(s) for s in JobState if s.is_finished)


@dataclass(frozen=True)
class Placement:
    """Where a job received from its origin goes on this node (decided on the loop)."""

    queue: str
    target: str | None


@dataclass(frozen=True)
class Applied:
    """What applying one received frame changed."""

    jobs_added: int
    ended: Mapping[str, int]  # target instance id -> offloaded jobs that finished
    stop_running: tuple[str, ...] = ()  # running jobs here whose origin stopped or removed them


_crc = crc32


@dataclass(frozen=True)
class ChunkCursor:
    """Where the chunks of a payload sent on a stream so far end."""

    key: tuple[str, int, bool]  # job id, epoch, output
    offset: int

    @classmethod
    def after(cls, frame: transfer_pb2.TransferFrame) -> ChunkCursor | None:
        """The cursor after an acknowledged frame: None unless it carried chunks."""
        if not frame.chunks:
            return None
        last = frame.chunks[-1]
        return cls((last.job_id, last.epoch, last.output), last.offset + len(last.data))


def _event_for(state: JobState, is_progress: bool) -> EventType:
    if state is JobState.ACTIVE:
        return EventType.PROGRESS if is_progress else EventType.STARTED
    if state is JobState.SUCCEEDED:
        return EventType.FINISHED
    if state is JobState.QUEUED:
        return EventType.FAILED
    if state is JobState.STOPPED:
        return EventType.STOPPED
    return EventType.CANCELLED


class TransferStore:
    """Outbox reads and writes, and applying received frames, for one node's journal."""

    def __init__(self, journal: Journal, jobs: JobStore, local_id: str) -> None:
        self.journal = journal
        self.jobs = jobs
        self.local_id = local_id

    async def peers(self) -> list[str]:
        """Instance ids this node has undelivered outbox items for."""
        rows = await self.journal.read(lambda c: c.execute("SELECT DISTINCT peer FROM outbox").fetchall())
        return [r[0] for r in rows]

    async def pending(self) -> int:
        """Undelivered outbox items, all peers."""
        row = await self.journal.read(lambda c: c.execute("SELECT count(*) FROM outbox").fetchone())
        return int(row[0])

    async def next_frame(
        self,
        peer: str,
        after_seq: int,
        max_items: int,
        max_bytes: int,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        resume: ChunkCursor | None = None,
    ) -> transfer_pb2.TransferFrame | None:
        """The next frame for `peer` after outbox seq `after_seq`, or None if nothing waits.

        A payload larger than `chunk_bytes` goes in chunks (see chunks.py): while the first item
        waiting has one, the frame carries only its chunks from `resume` (the cursor after the
        chunks sent before on this stream, see `ChunkCursor.after`), then the item alone.
        """
        local = self.local_id

        def build(conn: sqlite3.Connection) -> transfer_pb2.TransferFrame | None:
            rows = conn.execute(
                "SELECT seq, kind, job_id, epoch, progress FROM outbox WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?",
                (peer, after_seq, max_items),
            ).fetchall()
            if not rows:
                return None
            frame = transfer_pb2.TransferFrame(sender_id=local)
            size = 0
            last_report: dict[str, tuple[int, int, int]] = {}
            chunked: set[str] = set()

            def chunk_frame(
                key: tuple[str, int, bool], job_seq: int, total: int
            ) -> transfer_pb2.TransferFrame | None:
                offset = resume.offset if resume is not None and resume.key == key else 0
                if offset >= total:
                    return None  # every chunk went: now the item
                chunks = transfer_pb2.TransferFrame(sender_id=local, last_seq=after_seq)
                sent = 0
                while offset < total and (not sent or sent + chunk_bytes <= max_bytes):
                    (data,) = conn.execute(
                        "SELECT substr(data, ?, ?) FROM payloads WHERE job_seq = ? AND kind = ?",
                        (offset + 1, chunk_bytes, job_seq, PAYLOAD_OUTPUT if key[2] else PAYLOAD_INPUT),
                    ).fetchone()
                    data = bytes(data or b"")
                    if not data:
                        break
                    chunks.chunks.add(
                        job_id=key[0],
                        epoch=key[1],
                        output=key[2],
                        offset=offset,
                        total_size=total,
                        data=data,
                        data_crc32=_crc(data),
                    )
                    offset += len(data)
                    sent += len(data)
                return chunks

            for seq, kind, job_id, epoch, progress in rows:
                if kind in (OUTBOX_STOP, OUTBOX_REMOVE):
                    frame.last_seq = seq
                    frame.controls.add(job_id=job_id, epoch=epoch, remove=kind == OUTBOX_REMOVE)
                    continue
                if kind == KIND_REPORT:
                    (output_size,) = conn.execute(
                        "SELECT coalesce(max(output_size), 0) FROM jobs WHERE id = ?", (job_id,)
                    ).fetchone()
                    big = None
                    if output_size > chunk_bytes:
                        big = conn.execute(
                            "SELECT j.seq, length(p.data) FROM jobs j JOIN payloads p ON p.job_seq = j.seq "
                            f"AND p.kind = ? WHERE j.id = ? AND j.epoch = ? AND j.state IN {_FINISHED}",
                            (PAYLOAD_OUTPUT, job_id, epoch),
                        ).fetchone()
                    if big is not None and big[1] > chunk_bytes:
                        if frame.last_seq:
                            break  # a chunked output goes first in a frame of its own
                        chunks = chunk_frame((job_id, epoch, True), big[0], big[1])
                        if chunks is not None:
                            return chunks
                        frame.last_seq = seq
                        last_report[job_id] = (seq, epoch, progress)
                        chunked.add(job_id)
                        break
                    if size and size + output_size > max_bytes:
                        break  # a frame stays within the message limit; the rest goes next
                    size += output_size + 100
                    frame.last_seq = seq
                    last_report[job_id] = (seq, epoch, progress)
                    continue
                row = conn.execute(
                    "SELECT j.topic, j.properties, j.max_retries, j.retry_delay_us, j.timeout_us, j.created_us, "
                    "coalesce(length(p.data), 0), j.seq FROM jobs j LEFT JOIN payloads p ON p.job_seq = j.seq "
                    "AND p.kind = ? WHERE j.id = ? AND j.origin = ? AND j.target = ? AND j.epoch = ? "
                    "AND j.state IN (1, 2)",
                    (PAYLOAD_INPUT, job_id, local, peer, epoch),
                ).fetchone()
                length = row[6] if row is not None else 0
                if length > chunk_bytes and row is not None:
                    if frame.last_seq:
                        break  # a chunked payload goes first in a frame of its own
                    chunks = chunk_frame((job_id, epoch, False), row[7], length)
                    if chunks is not None:
                        return chunks
                if size and size + min(length, chunk_bytes) > max_bytes:
                    break
                size += min(length, chunk_bytes) + 200
                frame.last_seq = seq
                if row is None:  # reassigned, stopped or removed since: nothing to send
                    continue
                payload = b""
                if length:
                    (payload,) = conn.execute(
                        "SELECT data FROM payloads WHERE job_seq = ? AND kind = ?", (row[7], PAYLOAD_INPUT)
                    ).fetchone()
                    payload = bytes(payload)
                is_chunked = length > chunk_bytes
                job = frame.jobs.add(
                    job_id=job_id,
                    epoch=epoch,
                    topic=row[0],
                    properties_json=row[1] or "",
                    max_retries=row[2],
                    created_us=row[5],
                    payload=b"" if is_chunked else payload,
                    payload_crc32=_crc(payload),
                    payload_chunked=is_chunked,
                )
                if row[3] is not None:
                    job.retry_delay_us = row[3]
                if row[4] is not None:
                    job.timeout_us = row[4]
                if is_chunked:
                    break  # the item of a chunked payload travels alone
            for job_id, (seq, epoch, progress) in last_report.items():
                row = conn.execute(
                    "SELECT j.state, j.retry_count, j.started_us, j.finished_us, j.result_message, "
                    "j.progress_total, j.progress_done, j.eta_us, p.data, j.log_count, j.seq, j.target FROM jobs j "
                    "LEFT JOIN payloads p ON p.job_seq = j.seq AND p.kind = ? WHERE j.id = ? AND j.epoch = ?",
                    (PAYLOAD_OUTPUT, job_id, epoch),
                ).fetchone()
                if row is None:
                    continue
                output = bytes(row[8] or b"") if row[0] in _FINISHED else b""
                output_chunked = job_id in chunked and bool(output)
                frame.reports.add(
                    job_id=job_id,
                    epoch=epoch,
                    report_seq=seq,
                    state=row[0],
                    retry_count=row[1],
                    started_us=row[2] or 0,
                    finished_us=row[3] or 0,
                    result_message=row[4] or "",
                    progress_total=row[5] or 0,
                    progress_done=row[6] or 0,
                    eta_us=row[7] or 0,
                    is_progress=bool(progress) and row[0] == JobState.ACTIVE,
                    output_payload=b"" if output_chunked else output,
                    output_crc32=_crc(output),
                    output_chunked=output_chunked,
                    log_count=row[9],
                    handed_back=row[0] == JobState.DROPPED and row[11] is None,
                )
                if row[9]:
                    report = frame.reports[-1]
                    for line, time_us, message in conn.execute(
                        "SELECT line, time_us, message FROM job_log WHERE job_seq = ? ORDER BY line",
                        (row[10],),
                    ):
                        report.log_lines.add(line=line, time_us=time_us, message=message)
            return frame

        return await self.journal.read(build)

    async def drop(self, peer: str, upto_seq: int) -> None:
        """Forget the items for `peer` the peer acknowledged."""
        await self.journal.write(
            lambda c: c.execute("DELETE FROM outbox WHERE peer = ? AND seq <= ?", (peer, upto_seq)).rowcount
        )

    async def apply(
        self,
        frame: transfer_pb2.TransferFrame,
        placements: Mapping[str, Placement],
        now_us: int,
        assembler: ChunkAssembler | None = None,
    ) -> Applied:
        """Apply a received frame in one transaction; duplicates and stale epochs are ignored.
        Chunks and chunked items need the stream's `assembler` (see chunks.py)."""
        sender = frame.sender_id
        if assembler is not None:
            assembler.resolve(frame)
        elif (
            frame.chunks
            or any(j.payload_chunked for j in frame.jobs)
            or any(r.output_chunked for r in frame.reports)
        ):
            raise InvalidArgument("a chunked payload arrived outside a transfer stream")
        for job in frame.jobs:
            if _crc(job.payload) != job.payload_crc32:
                raise InvalidArgument(f"job {job.job_id}: the payload checksum does not match; resend")
        for report in frame.reports:
            if _crc(report.output_payload) != report.output_crc32:
                raise InvalidArgument(f"report of job {report.job_id}: the output checksum does not match")

        def apply(conn: sqlite3.Connection) -> Applied:
            added = 0
            for job in frame.jobs:
                added += self._apply_job(conn, sender, job, placements[job.topic], now_us)
            ended: dict[str, int] = {}
            for report in frame.reports:
                if self._apply_report(conn, sender, report, now_us):
                    ended[sender] = ended.get(sender, 0) + 1
            running = [c.job_id for c in frame.controls if self._apply_control(conn, sender, c, now_us)]
            return Applied(added, ended, tuple(running))

        return await self.journal.write(apply)

    def _apply_job(
        self,
        conn: sqlite3.Connection,
        sender: str,
        job: transfer_pb2.OffloadedJob,
        place: Placement,
        now_us: int,
    ) -> int:
        existing = conn.execute("SELECT epoch FROM jobs WHERE id = ?", (job.job_id,)).fetchone()
        if existing is not None:
            if existing[0] >= job.epoch:
                return 0  # applied before: (origin, job id, epoch) once
            conn.execute(  # the origin gave the job back to us under a new epoch: run it again
                "UPDATE jobs SET state = 1, epoch = ?, target = ?, retry_count = 0, due_us = ?, started_us = NULL, "
                "finished_us = NULL, result_message = '', output_size = 0 WHERE id = ?",
                (job.epoch, place.target, now_us, job.job_id),
            )
            return 1
        record = NewJobRecord(
            id=job.job_id,
            topic=job.topic,
            properties_json=job.properties_json or None,
            queue=place.queue,
            origin=sender,
            target=place.target,
            max_retries=job.max_retries,
            created_us=job.created_us,
            payload=job.payload or None,
            retry_delay_us=job.retry_delay_us if job.HasField("retry_delay_us") else None,
            timeout_us=job.timeout_us if job.HasField("timeout_us") else None,
        )
        self.jobs.journal.recorder.has_foreign_jobs = True
        self.jobs.insert(conn, [record])
        conn.execute("UPDATE jobs SET epoch = ? WHERE id = ?", (job.epoch, job.job_id))
        return 1

    def _apply_report(
        self, conn: sqlite3.Connection, sender: str, report: transfer_pb2.JobReport, now_us: int
    ) -> bool:
        """Mirror a target's report; True if it ended the job. Stale epochs are fenced off."""
        row = conn.execute(
            "SELECT seq, state, topic, queue FROM jobs WHERE id = ? AND origin = ? AND target = ? AND epoch = ? "
            "AND report_seq < ?",
            (report.job_id, self.local_id, sender, report.epoch, report.report_seq),
        ).fetchone()
        if row is None or row[1] in _FINISHED:
            return False
        seq, _state, topic, queue = row
        if report.handed_back:  # the target will not run it: wait for the next target, new epoch
            conn.execute(
                "UPDATE jobs SET state = 1, target = NULL, epoch = epoch + 1, report_seq = 0, started_us = NULL, "
                "due_us = ? WHERE seq = ?",
                (now_us, seq),
            )
            return True
        state = JobState(report.state)
        progress = (report.progress_total or None, report.progress_done or None, report.eta_us or None)
        conn.execute(
            "UPDATE jobs SET state = ?, retry_count = ?, started_us = ?, finished_us = ?, result_message = ?, "
            "progress_total = ?, progress_done = ?, eta_us = ?, report_seq = ?, output_size = ? WHERE seq = ?",
            (
                int(state),
                report.retry_count,
                report.started_us or None,
                report.finished_us or None,
                report.result_message,
                *progress,
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
            conn.execute(
                "INSERT OR REPLACE INTO payloads (job_seq, kind, data) VALUES (?, ?, ?)",
                (seq, PAYLOAD_OUTPUT, report.output_payload),
            )
        self.journal.recorder.event(
            _event_for(state, report.is_progress),
            now_us,
            report.job_id,
            topic,
            queue,
            state,
            report.retry_count,
            report.result_message,
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
            "SELECT state, topic, queue, retry_count FROM jobs WHERE id = ? AND origin = ? AND epoch = ?",
            (control.job_id, sender, control.epoch),
        ).fetchone()
        if row is None or row[0] in _FINISHED:
            return False
        state, topic, queue, retry_count = JobState(row[0]), row[1], row[2], row[3]
        if control.remove:
            message = "removed at the origin"
            conn.execute(
                "UPDATE jobs SET state = 7, finished_us = ?, result_message = ? WHERE id = ?",
                (now_us, message, control.job_id),
            )
            self.journal.recorder.event(
                EventType.REMOVED,
                now_us,
                control.job_id,
                topic,
                queue,
                JobState.DROPPED,
                retry_count,
                message,
            )
            return state is JobState.ACTIVE
        if state is JobState.QUEUED:
            message = "stopped at the origin"
            conn.execute(
                "UPDATE jobs SET state = 4, finished_us = ?, result_message = ? WHERE id = ?",
                (now_us, message, control.job_id),
            )
            self.journal.recorder.event(
                EventType.STOPPED,
                now_us,
                control.job_id,
                topic,
                queue,
                JobState.STOPPED,
                retry_count,
                message,
            )
            return False
        conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (control.job_id,))
        return True

    async def hand_back(self, now_us: int) -> int:
        """Give jobs of other origins this node no longer consumes (QUEUED, unassigned) back to
        their origins: they end DROPPED here and a report tells the origin to reassign them."""
        local = self.local_id

        def update(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "UPDATE jobs SET state = 7, finished_us = ? WHERE state = 1 AND target IS NULL AND origin != ? "
                "RETURNING id, origin, epoch",
                (now_us, local),
            ).fetchall()
            conn.executemany(
                "INSERT INTO outbox (peer, kind, job_id, epoch) VALUES (?, ?, ?, ?)",
                [(origin, KIND_REPORT, job_id, epoch) for job_id, origin, epoch in rows],
            )
            self.jobs.journal.recorder.outbox_writes += 1
            return len(rows)

        return await self.journal.write(update)

    async def assign(
        self, choose: Callable[[str, str], str | None], now_us: int, *, from_peer: str | None = None
    ) -> int:
        """Give this node's jobs a remote target: unassigned QUEUED ones, or (with `from_peer`) the
        unfinished ones of a dead peer, under a new epoch. `choose(topic, queue)` runs in the writer.
        """
        local = self.local_id

        def update(conn: sqlite3.Connection) -> int:
            if from_peer is None:
                rows = conn.execute(
                    "SELECT id, topic, queue FROM jobs WHERE state = 1 AND target IS NULL AND origin = ? LIMIT 10000",
                    (local,),
                ).fetchall()
            else:
                # A job stopped here while it ran there ends STOPPED rather than running again.
                message = "stopped by a user; its target is gone"
                for job_id, topic, queue, retry_count in conn.execute(
                    "UPDATE jobs SET state = 4, finished_us = ?, result_message = ? "
                    "WHERE target = ? AND origin = ? AND state = 2 AND stop_requested = 1 "
                    "RETURNING id, topic, queue, retry_count",
                    (now_us, message, from_peer, local),
                ).fetchall():
                    self.journal.recorder.event(
                        EventType.STOPPED,
                        now_us,
                        job_id,
                        topic,
                        queue,
                        JobState.STOPPED,
                        retry_count,
                        message,
                    )
                rows = conn.execute(
                    "SELECT id, topic, queue FROM jobs WHERE target = ? AND origin = ? AND state IN (1, 2)",
                    (from_peer, local),
                ).fetchall()
                conn.execute("DELETE FROM outbox WHERE peer = ? AND kind = ?", (from_peer, KIND_JOB))
            moved = 0
            for job_id, topic, queue in rows:
                target = choose(topic, queue)
                if target is None and from_peer is None:
                    continue
                epoch = conn.execute(
                    "UPDATE jobs SET state = 1, target = ?, epoch = epoch + 1, report_seq = 0, started_us = NULL, "
                    "progress_total = NULL, progress_done = NULL, eta_us = NULL, due_us = ? WHERE id = ? "
                    "RETURNING epoch",
                    (target, now_us, job_id),
                ).fetchone()[0]
                if target is not None and target != local:
                    conn.execute(
                        "INSERT INTO outbox (peer, kind, job_id, epoch) VALUES (?, ?, ?, ?)",
                        (target, KIND_JOB, job_id, epoch),
                    )
                    self.jobs.journal.recorder.outbox_writes += 1
                moved += 1
            return moved

        return await self.journal.write(update)

    async def outstanding(self) -> dict[str, int]:
        """Unfinished jobs of this origin per remote target."""
        rows = await self.journal.read(
            lambda c: c.execute(
                "SELECT target, count(*) FROM jobs WHERE state IN (1, 2) AND origin = ? AND target IS NOT NULL "
                "AND target != ? GROUP BY target",
                (self.local_id, self.local_id),
            ).fetchall()
        )
        return {r[0]: int(r[1]) for r in rows}

    async def outstanding_here(self) -> int:
        """Unfinished jobs of this origin it runs itself."""
        row = await self.journal.read(
            lambda c: c.execute(
                "SELECT count(*) FROM jobs WHERE target = ? AND state IN (1, 2) AND origin = ?",
                (self.local_id, self.local_id),
            ).fetchone()
        )
        return int(row[0])

    async def has_unfinished_foreign_jobs(self, local_id: str) -> bool:
        """True when a QUEUED or ACTIVE job here came from another origin."""
        row = await self.journal.read(
            lambda c: c.execute(
                "SELECT 1 FROM jobs WHERE state IN (1, 2) AND origin != ? LIMIT 1", (local_id,)
            ).fetchone()
        )
        return row is not None


def placements_for(
    jobs: Sequence[transfer_pb2.OffloadedJob], place: Callable[[str], Placement]
) -> dict[str, Placement]:
    """Placement per topic of the jobs in a frame."""
    return {topic: place(topic) for topic in {j.topic for j in jobs}}
