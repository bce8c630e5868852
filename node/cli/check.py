"""`jobmesh check`: verify a stopped node's journal (SQLite's integrity_check, every payload's checksum).

It takes the data dir's lock, so it refuses (one line) while a node runs there, and it never
writes to the journal: a journal of an older schema is checked as it is (payload checksums
arrive with schema v4, at the node's next start).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.cli.common import EXIT_DAMAGED, EXIT_NOT_FOUND, EXIT_OK, EXIT_PRECONDITION
from node.errors import DataDirInUse, JournalError
from node.instance import DataDirLock
from node.journal.connection import Durability, open_connection
from node.journal.payloads import KIND_NAMES, scan_payloads
from node.journal.schema import schema_version
from node.node import JOURNAL_FILE

CHECKSUMS_SINCE = 4
"""The schema version from which payloads carry checksums (node/journal/schema.py)."""
MAX_PROBLEMS = 100
"""How many lines of integrity_check are reported at most (SQLite's own default)."""


@dataclass
class CheckReport:
    """What `jobmesh check` found in one journal."""

    journal: str
    schema_version: int = 0
    jobs: int = 0
    payloads_checked: int = 0
    integrity: list[str] = field(default_factory=list)
    """integrity_check's lines: ['ok'] when the file is sound."""
    damaged_payloads: list[dict[str, str]] = field(default_factory=list)
    """{"job_id": ..., "kind": "input" | "output"} of each payload whose checksum does not match."""

    @property
    def clean(self) -> bool:
        """True when SQLite and every payload checksum found nothing wrong."""
        return self.integrity == ["ok"] and not self.damaged_payloads

    def damaged_jobs(self) -> list[str]:
        """The ids of the jobs with a damaged payload, each once, in journal order."""
        return list(dict.fromkeys(p["job_id"] for p in self.damaged_payloads))


def add_parser(sub: Any) -> None:
    """Register the `check` subcommand."""
    p = sub.add_parser(
        "check",
        help="verify a stopped node's journal",
        description="Run SQLite's integrity_check and verify every payload's checksum in a stopped "
        f"node's journal. Exit {EXIT_OK} when clean, {EXIT_DAMAGED} when damage is found, "
        f"{EXIT_PRECONDITION} when a node is running on the data dir, {EXIT_NOT_FOUND} when there is "
        "no journal.",
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path(".jobmesh"), help="data directory (default ./.jobmesh)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace, environ: dict[str, str]) -> int:
    data_dir: Path = args.data_dir
    path = data_dir / JOURNAL_FILE
    if not path.is_file():
        print(f"jobmesh check: there is no journal at {path}; pass the node's --data-dir", file=sys.stderr)
        return EXIT_NOT_FOUND
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except JournalError as e:  # DataDirInUse: a node runs there; else the dir cannot be used
        in_use = isinstance(e, DataDirInUse)
        hint = "; check reads a stopped node's journal" if in_use else ""
        print(f"jobmesh check: {e}{hint}", file=sys.stderr)
        return EXIT_PRECONDITION if in_use else EXIT_NOT_FOUND
    try:
        report = check_journal(path)
    finally:
        lock.release()
    _print(report, as_json=args.json)
    return EXIT_OK if report.clean else EXIT_DAMAGED


def check_journal(path: Path) -> CheckReport:
    """Check the journal at `path` (its node must be stopped; the caller holds the data dir lock)."""
    report = CheckReport(str(path))
    try:
        conn = open_connection(path, Durability.NORMAL)
    except JournalError as e:
        report.integrity = [str(e)]
        return report
    try:
        report.integrity = [
            str(row[0]) for row in conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
        ]
        report.schema_version = schema_version(conn)
        report.jobs = int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
        if report.schema_version >= CHECKSUMS_SINCE:
            report.payloads_checked, damaged = scan_payloads(conn)
            report.damaged_payloads = [
                {"job_id": d.job_id, "kind": KIND_NAMES.get(d.kind, str(d.kind))} for d in damaged
            ]
    except sqlite3.DatabaseError as e:  # damage deep enough that a query cannot finish
        report.integrity = [*(line for line in report.integrity if line != "ok"), f"reading failed: {e}"]
    finally:
        conn.close()
    return report


def _print(report: CheckReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**report.__dict__, "clean": report.clean, "damaged_jobs": report.damaged_jobs()}))
        return
    print(f"journal {report.journal}: schema v{report.schema_version}, {report.jobs} jobs")
    print(
        "integrity_check: " + ("ok" if report.integrity == ["ok"] else f"{len(report.integrity)} problem(s)")
    )
    for line in report.integrity if report.integrity != ["ok"] else []:
        print(f"  {line}")
    if report.schema_version < CHECKSUMS_SINCE:
        print(
            f"payloads: no checksums yet (schema v{report.schema_version}; the node adds them at its next start)"
        )
    else:
        print(f"payloads: {report.payloads_checked} checked, {len(report.damaged_payloads)} damaged")
    for payload in report.damaged_payloads:
        print(f"  damaged: job {payload['job_id'] or '(no job row)'} ({payload['kind']} payload)")
    if report.clean:
        print("clean")
    else:
        print(
            f"DAMAGED: {len(report.damaged_jobs())} job(s); restore the journal from a backup or remove them"
        )
