"""Rendering jobs for people (tables) and for scripts (JSON)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2


def state_name(state: int) -> str:
    """`SUCCEEDED` for JOB_STATE_SUCCEEDED."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def _time(ts: Timestamp, present: bool) -> str:
    if not present:
        return "-"
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def job_to_dict(job: jobs_pb2.Job) -> dict[str, Any]:
    """The JSON-ready form of a job (proto field names; bytes base64; payload bytes omitted)."""
    data = MessageToDict(job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data.pop("payload", None)
    data.pop("output_payload", None)
    data["state"] = state_name(job.state)
    data["properties"] = {name: plain_value(job.properties[name]) for name in sorted(job.properties)}
    return data


def plain_value(value: jobs_pb2.PropertyValue) -> Any:
    """A property value as plain JSON: numbers, strings, bools, lists; times ISO 8601, bytes base64."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [plain_value(v) for v in value.list_value.values]
    if kind == "timestamp_value":
        ts = value.timestamp_value
        return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC).isoformat().replace("+00:00", "Z")
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind) if kind else None


def print_json(data: object, out: TextIO) -> None:
    """Pretty JSON with a trailing newline."""
    out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def format_value(value: jobs_pb2.PropertyValue) -> str:
    """A property value as text."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return "[" + ", ".join(format_value(v) for v in value.list_value.values) + "]"
    if kind == "timestamp_value":
        return _time(value.timestamp_value, True)
    if kind == "bytes_value":
        return f"<{len(value.bytes_value)} bytes>"
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return str(getattr(value, kind)) if kind else ""


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str], out: TextIO) -> None:
    """A left-aligned text table."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        out.write(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
            + "\n"
        )


def print_jobs(jobs: Sequence[jobs_pb2.Job], out: TextIO) -> None:
    """Jobs as a table: id, state, topic, retries, created, result."""
    rows = [
        (
            job.id,
            state_name(job.state) + (" (stopping)" if job.stop_requested else ""),
            job.topic,
            f"{job.retry_count}/{'inf' if job.max_retries < 0 else job.max_retries}",
            _time(job.created_time, job.HasField("created_time")),
            job.result_message[:60],
        )
        for job in jobs
    ]
    print_table(rows, ("ID", "STATE", "TOPIC", "RETRIES", "CREATED (UTC)", "RESULT"), out)


def print_job(job: jobs_pb2.Job, out: TextIO) -> None:
    """One job, field by field."""
    lines = [
        ("id", job.id),
        ("topic", job.topic),
        ("state", state_name(job.state) + (" (stop requested)" if job.stop_requested else "")),
        ("queue", job.queue),
        ("origin", job.origin_instance),
        ("target", job.target_instance or "(unassigned)"),
        ("retries", f"{job.retry_count} of {'unlimited' if job.max_retries < 0 else job.max_retries}"),
        ("created", _time(job.created_time, job.HasField("created_time"))),
        ("started", _time(job.started_time, job.HasField("started_time"))),
        ("finished", _time(job.finished_time, job.HasField("finished_time"))),
    ]
    if job.HasField("not_before_time"):
        lines.append(("not before", _time(job.not_before_time, True)))
    lines += [
        ("result", job.result_message or "-"),
        ("payload", f"{job.payload_size} bytes"),
        ("output", f"{job.output_payload_size} bytes"),
    ]
    if job.HasField("progress"):
        progress = job.progress
        text = f"{progress.completed_steps}/{progress.total_steps} steps"
        if progress.HasField("eta"):
            text += f", eta {_time(progress.eta, True)}"
        lines.append(("progress", text))
    if job.log_line_count:
        lines.append(("log lines", str(job.log_line_count)))
    for name in sorted(job.properties):
        lines.append((f"  {name}", format_value(job.properties[name])))
    if job.properties:
        lines.insert(len(lines) - len(job.properties), ("properties", ""))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.write(f"{key.ljust(width)}  {value}".rstrip() + "\n")
    if job.log:
        out.write("log\n")
        for line in job.log:
            out.write(f"  {_time(line.time, True)}  {line.message}\n")
