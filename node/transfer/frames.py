"""Frames: what goes to a peer next, built from its outbox rows and the jobs' current rows.

A frame carries jobs (origin -> target), reports (target -> origin) and controls (stop, remove),
in outbox order, up to a size. A payload larger than the chunk size goes in chunks (chunks.py):
while the first item waiting has one, the frame carries only its chunks from the stream's
cursor, then a frame carries the item alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from jobmesh.peer.v1 import transfer_pb2

from node.config import CHUNK_BYTES
from node.errors import PayloadDamaged
from node.journal.payloads import PayloadIntegrity, read_payload
from node.journal.records import FINISHED, PAYLOAD_INPUT, PAYLOAD_OUTPUT, UNFINISHED
from node.model.job import JobState
from node.transfer.chunks import crc32
from node.transfer.outbox import OutboxKind

JOB_OVERHEAD_BYTES = 200
"""What a job costs in a frame besides its payload (an estimate: ids, topic, numbers)."""
REPORT_OVERHEAD_BYTES = 100
"""What a report costs in a frame besides its output payload and log lines."""
READ_CHUNK = 500
"""Job items whose rows one query reads at most (bound parameters far below SQLite's limit)."""

ChunkKey = tuple[str, int, bool]
"""The payload a chunk belongs to: job id, epoch, and whether it is the output."""


@dataclass(frozen=True)
class ChunkCursor:
    """Where the chunks of a payload sent on a stream so far end."""

    key: ChunkKey
    offset: int

    @classmethod
    def after(cls, frame: transfer_pb2.ExchangeRequest) -> ChunkCursor | None:
        """The cursor after an acknowledged frame: None unless it carried chunks."""
        if not frame.chunks:
            return None
        last = frame.chunks[-1]
        return cls((last.job_id, last.epoch, last.output), last.offset + len(last.data))


@dataclass(frozen=True)
class FrameLimits:
    """How much one frame may carry."""

    max_items: int
    max_bytes: int
    chunk_bytes: int = CHUNK_BYTES


def build_frame(
    conn: sqlite3.Connection,
    local_id: str,
    peer: str,
    after_seq: int,
    limits: FrameLimits,
    integrity: PayloadIntegrity,
    resume: ChunkCursor | None = None,
) -> transfer_pb2.ExchangeRequest | None:
    """The next frame for `peer` after outbox seq `after_seq` (None if nothing waits), read in one
    transaction; `resume` is the stream's cursor after the chunks it sent before.

    Every payload is verified against its stored checksum before it goes (once per payload when
    it goes in chunks, before the first). A damaged input raises PayloadDamaged naming the job
    (it must not reach the target); a damaged output is left out of its report, whose message
    says so, so that the origin does not store it as the job's output.
    """
    items = conn.execute(
        "SELECT seq, kind, job_id, epoch, progress FROM outbox WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?",
        (peer, after_seq, limits.max_items),
    ).fetchall()
    if not items:
        return None
    return _FrameBuilder(conn, local_id, peer, after_seq, limits, integrity, resume).build(items)


@dataclass
class _FrameBuilder:
    conn: sqlite3.Connection
    local_id: str
    peer: str
    after_seq: int
    limits: FrameLimits
    integrity: PayloadIntegrity
    resume: ChunkCursor | None
    frame: transfer_pb2.ExchangeRequest = field(init=False)
    chunks: transfer_pb2.ExchangeRequest | None = None
    """A frame of chunks to send instead of `frame` (set by an item whose payload is chunked)."""
    size: int = 0
    reports: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """job id -> (outbox seq, epoch, progress) of the newest report item of each job."""
    chunked_outputs: set[str] = field(default_factory=set)
    job_rows: dict[tuple[str, int], sqlite3.Row] = field(default_factory=dict)
    """(job id, epoch) -> what a job item sends, for the frame's job items (`_read_jobs`)."""
    output_sizes: dict[str, int] = field(default_factory=dict)
    """job id -> its output's size, for the frame's report items."""

    def __post_init__(self) -> None:
        self.frame = transfer_pb2.ExchangeRequest(sender_id=self.local_id)

    def build(self, items: list[sqlite3.Row]) -> transfer_pb2.ExchangeRequest:
        # What the items need is read a chunk of ids per query, not one query per item (those
        # were an eighth of an origin's samples).
        self.job_rows = self._read_jobs([i["job_id"] for i in items if i["kind"] == OutboxKind.JOB])
        reported = [i["job_id"] for i in items if i["kind"] == OutboxKind.REPORT]
        sizes = self._by_id("SELECT id, output_size FROM jobs WHERE id IN ({ids})", reported)
        self.output_sizes = {row["id"]: row["output_size"] or 0 for row in sizes}
        for item in items:
            kind = OutboxKind(item["kind"])
            if kind in (OutboxKind.STOP, OutboxKind.REMOVE):
                self.frame.last_seq = item["seq"]
                self.frame.controls.add(
                    job_id=item["job_id"], epoch=item["epoch"], remove=kind is OutboxKind.REMOVE
                )
                continue
            more = self._add_report(item) if kind is OutboxKind.REPORT else self._add_job(item)
            if self.chunks is not None:
                return self.chunks
            if not more:
                break
        self._fill_reports()
        return self.frame

    # --- items ---

    def _add_report(self, item: sqlite3.Row) -> bool:
        """Take a report item; False if the frame ends here (full, or a chunked output)."""
        job_id, epoch = item["job_id"], item["epoch"]
        output_size = self.output_sizes.get(job_id, 0)
        big = self._chunked_output(job_id, epoch) if output_size > self.limits.chunk_bytes else None
        if big is not None:
            if self.frame.last_seq:
                return False  # a chunked output goes first, in a frame of its own
            self.chunks = self._chunk_frame((job_id, epoch, True), *big)
            if self.chunks is None:  # every chunk went: now the report, alone
                self._take_report(item)
                self.chunked_outputs.add(job_id)
            return False
        if self.size and self.size + output_size > self.limits.max_bytes:
            return False  # a frame stays within the message limit; the rest goes next
        self.size += output_size + REPORT_OVERHEAD_BYTES
        self._take_report(item)
        return True

    def _take_report(self, item: sqlite3.Row) -> None:
        self.frame.last_seq = item["seq"]
        self.reports[item["job_id"]] = (item["seq"], item["epoch"], item["progress"])

    def _chunked_output(self, job_id: str, epoch: int) -> tuple[int, int] | None:
        """(job seq, output length) of a finished job whose output must go in chunks."""
        row = self.conn.execute(
            "SELECT j.seq, length(p.data) AS size FROM jobs j JOIN payloads p ON p.job_seq = j.seq AND p.kind = ? "
            f"WHERE j.id = ? AND j.epoch = ? AND j.state IN {FINISHED}",
            (PAYLOAD_OUTPUT, job_id, epoch),
        ).fetchone()
        if row is None or row["size"] <= self.limits.chunk_bytes:
            return None
        if not self._resuming((job_id, epoch, True)):
            try:  # before the first chunk: a damaged output goes in no chunks (see _fill_reports)
                self._payload(job_id, row["seq"], PAYLOAD_OUTPUT)
            except PayloadDamaged:
                return None
        return row["seq"], row["size"]

    def _add_job(self, item: sqlite3.Row) -> bool:
        """Take a job item; False if the frame ends here (full, or a chunked payload)."""
        job_id, epoch, chunk_bytes = item["job_id"], item["epoch"], self.limits.chunk_bytes
        row = self.job_rows.get((job_id, epoch))  # None: reassigned, stopped or removed since
        seq, length = (row["seq"], row["size"]) if row is not None else (0, 0)
        chunked = length > chunk_bytes
        payload = b""
        if length and not (chunked and self._resuming((job_id, epoch, False))):
            payload = self._payload(job_id, seq, PAYLOAD_INPUT)  # verified: raises if damaged
        if chunked:
            if self.frame.last_seq:
                return False  # a chunked payload goes first, in a frame of its own
            self.chunks = self._chunk_frame((job_id, epoch, False), seq, length)
            if self.chunks is not None:
                return False
        if self.size and self.size + min(length, chunk_bytes) > self.limits.max_bytes:
            return False
        self.size += min(length, chunk_bytes) + JOB_OVERHEAD_BYTES
        self.frame.last_seq = item["seq"]
        if row is None:  # reassigned, stopped or removed since: nothing to send
            return True
        if chunked and not payload:  # verified before its first chunk; read whole for the checksum
            payload = self._payload(job_id, row["seq"], PAYLOAD_INPUT)
        job = self.frame.jobs.add(
            job_id=job_id,
            epoch=epoch,
            topic=row["topic"],
            properties_json=row["properties"] or "",
            max_retries=row["max_retries"],
            retry_count=row["retry_count"],
            created_us=row["created_us"],
            payload=b"" if chunked else payload,
            payload_crc32=crc32(payload),
            payload_chunked=chunked,
        )
        if row["retry_delay_us"] is not None:
            job.retry_delay_us = row["retry_delay_us"]
        if row["timeout_us"] is not None:
            job.timeout_us = row["timeout_us"]
        return not chunked  # the item of a chunked payload travels alone

    def _read_jobs(self, job_ids: list[str]) -> dict[tuple[str, int], sqlite3.Row]:
        """The unfinished jobs of `job_ids` this node sends to the peer, by (id, epoch)."""
        rows = self._by_id(
            "SELECT j.id, j.epoch, j.seq, j.topic, j.properties, j.max_retries, j.retry_count, "
            "j.retry_delay_us, j.timeout_us, j.created_us, coalesce(length(p.data), 0) AS size "
            f"FROM jobs j LEFT JOIN payloads p ON p.job_seq = j.seq AND p.kind = {PAYLOAD_INPUT:d} "
            # The unary + keeps the planner on the id index: by jobs_remote (target, state) it
            # would visit every job waiting for the peer, once per frame.
            f"WHERE j.id IN ({{ids}}) AND +j.origin = ? AND +j.target = ? AND +j.state IN {UNFINISHED}",
            job_ids,
            self.local_id,
            self.peer,
        )
        return {(row["id"], row["epoch"]): row for row in rows}

    def _by_id(self, select: str, job_ids: Sequence[str], *params: object) -> Iterator[sqlite3.Row]:
        """The rows of `select` for `job_ids`, READ_CHUNK ids per query: `{ids}` in `select`
        stands for one chunk's placeholders, bound before `params`."""
        for start in range(0, len(job_ids), READ_CHUNK):
            chunk = job_ids[start : start + READ_CHUNK]
            yield from self.conn.execute(select.format(ids=", ".join("?" * len(chunk))), (*chunk, *params))

    def _payload(self, job_id: str, job_seq: int, kind: int) -> bytes:
        """A verified payload (b"" if there is none), or PayloadDamaged."""
        return read_payload(self.conn, self.integrity, job_id, job_seq, kind) or b""

    def _resuming(self, key: ChunkKey) -> bool:
        """True when the stream already sent chunks of this payload (it was verified before them)."""
        return self.resume is not None and self.resume.key == key and self.resume.offset > 0

    # --- chunks ---

    def _chunk_frame(self, key: ChunkKey, job_seq: int, total: int) -> transfer_pb2.ExchangeRequest | None:
        """The next chunks of a payload from the stream's cursor; None once every chunk went."""
        resume, chunk_bytes = self.resume, self.limits.chunk_bytes
        offset = resume.offset if resume is not None and resume.key == key else 0
        if offset >= total:
            return None
        frame = transfer_pb2.ExchangeRequest(sender_id=self.local_id, last_seq=self.after_seq)
        kind = PAYLOAD_OUTPUT if key[2] else PAYLOAD_INPUT
        sent = 0
        while offset < total and (not sent or sent + chunk_bytes <= self.limits.max_bytes):
            row = self.conn.execute(
                "SELECT substr(data, ?, ?) AS part FROM payloads WHERE job_seq = ? AND kind = ?",
                (offset + 1, chunk_bytes, job_seq, kind),
            ).fetchone()
            data = bytes(row["part"] or b"")
            if not data:
                break
            frame.chunks.add(
                job_id=key[0],
                epoch=key[1],
                output=key[2],
                offset=offset,
                total_size=total,
                data=data,
                data_crc32=crc32(data),
            )
            offset += len(data)
            sent += len(data)
        return frame

    # --- reports: each job's current row ---

    def _fill_reports(self) -> None:
        found = self._by_id(
            "SELECT j.id, j.epoch, j.seq, j.state, j.retry_count, j.started_us, j.finished_us, "
            "j.result_message, j.progress_total, j.progress_done, j.eta_us, p.data AS output, "
            "p.crc32 AS output_crc32, j.log_count, j.target FROM jobs j "
            f"LEFT JOIN payloads p ON p.job_seq = j.seq AND p.kind = {PAYLOAD_OUTPUT:d} WHERE j.id IN ({{ids}})",
            list(self.reports),
        )
        rows = {(row["id"], row["epoch"]): row for row in found}
        for job_id, (seq, epoch, progress) in self.reports.items():
            row = rows.get((job_id, epoch))
            if row is None:
                continue
            state = JobState(row["state"])
            output = bytes(row["output"] or b"") if state.is_finished else b""
            message = row["result_message"] or ""
            if output:
                try:
                    self.integrity.verify(job_id, PAYLOAD_OUTPUT, output, row["output_crc32"])
                except PayloadDamaged as e:
                    output, message = b"", f"{message}; output not sent: {e}".lstrip("; ")
            output_chunked = job_id in self.chunked_outputs and bool(output)
            report = self.frame.reports.add(
                job_id=job_id,
                epoch=epoch,
                report_seq=seq,
                state=state,
                retry_count=row["retry_count"],
                started_us=row["started_us"] or 0,
                finished_us=row["finished_us"] or 0,
                result_message=message,
                progress_total=row["progress_total"] or 0,
                progress_done=row["progress_done"] or 0,
                eta_us=row["eta_us"] or 0,
                is_progress=bool(progress) and state is JobState.ACTIVE,
                output_payload=b"" if output_chunked else output,
                output_crc32=crc32(output),
                output_chunked=output_chunked,
                log_count=row["log_count"],
                handed_back=state is JobState.DROPPED and row["target"] is None,
            )
            if row["log_count"]:
                for line in self.conn.execute(
                    "SELECT line, time_us, message FROM job_log WHERE job_seq = ? ORDER BY line",
                    (row["seq"],),
                ):
                    report.log_lines.add(line=line["line"], time_us=line["time_us"], message=line["message"])
