"""Payloads at rest: each one stored with its checksum, verified whenever it is read.

The checksum is CRC-32 (zlib's, the one the peer transfer protocol already carries as
`payload_crc32`), so one number travels with a payload from the journal to a peer and into its
journal. It is for damage, not for tampering: it catches every burst of up to 32 flipped bits
and misses random damage with odds of 2^-32, at about 0.2 ms per MiB (zlib uses the CPU's
carry-less multiply; measured on the 2-core development machine), where SHA-256 costs 0.6 ms
per MiB there with the CPU's SHA extensions and several ms without; and it needs nothing
outside the standard library. Someone who can write the journal can
rewrite a checksum too: tampering is kept out by the file's permissions, not by this.

A mismatch raises `PayloadDamaged` (DATA_LOSS for a caller). `PayloadIntegrity`, one per
journal, logs it at ERROR once per damaged payload (not once per read) and counts it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.errors import PayloadDamaged

log = logging.getLogger(__name__)

PAYLOAD_INPUT = 1
"""payloads.kind of a job's input payload."""
PAYLOAD_OUTPUT = 2
"""payloads.kind of a job's output payload."""
KIND_NAMES = {PAYLOAD_INPUT: "input", PAYLOAD_OUTPUT: "output"}

SQL_CHECKSUM = "jobmesh_crc32"
"""The checksum as an SQL function, on every journal connection (migrations and `jobmesh check`)."""


def checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The checksum stored with a payload: CRC-32, unsigned; the same one travels to peers,
    workers and clients with every payload and piece. With `start` (the CRC-32 of the bytes
    before `data`), the CRC-32 of both together."""
    return zlib.crc32(data, start) & 0xFFFFFFFF


def _sql_checksum(data: bytes | str | None) -> int | None:
    if data is None:
        return None
    return checksum(data.encode() if isinstance(data, str) else data)


def register_checksum(conn: sqlite3.Connection) -> None:
    """Make `jobmesh_crc32(blob)` available on `conn`."""
    conn.create_function(SQL_CHECKSUM, 1, _sql_checksum, deterministic=True)


def store_payload(conn: sqlite3.Connection, job_seq: int, kind: int, data: bytes) -> None:
    """Store (or replace) a payload of a job with its checksum, in the caller's transaction."""
    conn.execute(
        "INSERT OR REPLACE INTO payloads (job_seq, kind, data, crc32) VALUES (?, ?, ?, ?)",
        (job_seq, kind, data, checksum(data)),
    )


def store_input_payloads(conn: sqlite3.Connection, payloads: Sequence[tuple[str, bytes]]) -> None:
    """Store the input payloads of just-inserted jobs, given as (job id, data)."""
    conn.executemany(
        "INSERT INTO payloads (job_seq, kind, data, crc32) SELECT seq, ?, ?, ? FROM jobs WHERE id = ?",
        [(PAYLOAD_INPUT, data, checksum(data), job_id) for job_id, data in payloads],
    )


class PayloadIntegrity:
    """Verifies payloads read from one journal; reports each damaged payload once (any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._reported: set[tuple[str, int]] = set()
        self.damaged_reads = 0
        """How many reads found a damaged payload (every read, not only the first)."""

    @property
    def damaged_payloads(self) -> int:
        """How many distinct payloads (job, kind) were found damaged since the node started."""
        with self._lock:
            return len(self._reported)

    def verify(self, job_id: str, kind: int, data: bytes, stored: int | None) -> bytes:
        """`data` if it matches its stored checksum; PayloadDamaged (reported) otherwise."""
        if stored is not None and checksum(data) == stored:
            return data
        raise self.damaged(job_id, kind)

    def damaged(self, job_id: str, kind: int) -> PayloadDamaged:
        """Count and (the first time for this payload) log damage; the error to raise."""
        message = (
            f"job {job_id}: its {KIND_NAMES.get(kind, str(kind))} payload is damaged in the journal "
            f"{self.path} (checksum mismatch) and is not served; stop the node and run `jobmesh check`"
        )
        with self._lock:
            self.damaged_reads += 1
            first = (job_id, kind) not in self._reported
            self._reported.add((job_id, kind))
        if first:
            log.error("%s", message)
        return PayloadDamaged(message, job_id)


def read_payload(
    conn: sqlite3.Connection, integrity: PayloadIntegrity, job_id: str, job_seq: int, kind: int
) -> bytes | None:
    """A job's verified payload of `kind` (None if it has none), or PayloadDamaged."""
    row = conn.execute(
        "SELECT data, crc32 FROM payloads WHERE job_seq = ? AND kind = ?", (job_seq, kind)
    ).fetchone()
    if row is None:
        return None
    return integrity.verify(job_id, kind, bytes(row["data"]), row["crc32"])


@dataclass(frozen=True)
class DamagedPayload:
    """A payload whose bytes do not match its checksum (found by `scan_payloads`)."""

    job_id: str
    """The job's id; '' if the payload's job row is gone too."""
    kind: int


def scan_payloads(conn: sqlite3.Connection) -> tuple[int, list[DamagedPayload]]:
    """Verify every stored payload: (how many were checked, the damaged ones)."""
    total = int(conn.execute("SELECT count(*) AS n FROM payloads").fetchone()["n"])
    return total, list(_damaged(conn))


def _damaged(conn: sqlite3.Connection) -> Iterator[DamagedPayload]:
    rows = conn.execute(
        f"SELECT coalesce(j.id, '') AS id, p.kind FROM payloads p LEFT JOIN jobs j ON j.seq = p.job_seq "
        f"WHERE p.crc32 IS NOT {SQL_CHECKSUM}(p.data) ORDER BY p.job_seq, p.kind"
    )
    for row in rows:
        yield DamagedPayload(row["id"], row["kind"])
