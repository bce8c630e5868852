"""Rendering for people (tables, fields) and for scripts (the one JSON convention)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2


def state_name(state: int) -> str:
    """`SUCCEEDED` for JOB_STATE_SUCCEEDED."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def format_time(ts: Timestamp, present: bool = True) -> str:
    """A timestamp for people (UTC, milliseconds); `-` when not present."""
    if not present:
        return "-"
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def to_json(message: Message) -> dict[str, Any]:
    """A message in the CLI's one JSON convention (README "JSON output").

    Proto field names (snake_case); every field without presence is shown, fields with presence
    only when set; enums by name without their type's prefix (`SUCCEEDED`, `ORDERED`); 64-bit
    integers as numbers; timestamps RFC 3339 in UTC; durations as seconds (a number); bytes base64;
    property values as plain JSON values (see `plain_value`).
    """
    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        data[field.name] = _field_json(field, getattr(message, field.name))
    return data


def _field_json(field: Any, value: Any) -> Any:  # Any: upb and Python descriptors differ in type
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _single_json(value_field, value[key]) for key in sorted(value)}
    if field.is_repeated:
        return [_single_json(field, item) for item in value]
    return _single_json(field, value)


def _single_json(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = value.DESCRIPTOR.full_name
        if kind == "google.protobuf.Timestamp":
            return value.ToJsonString()
        if kind == "google.protobuf.Duration":
            return value.ToNanoseconds() / 1e9
        if kind == "jobmesh.v1.PropertyValue":
            return plain_value(value)
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_name(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def enum_name(enum: Any, number: int) -> str | int:
    """`SUCCEEDED` for JOB_STATE_SUCCEEDED: the value's name without its type's prefix."""
    value = enum.values_by_number.get(number)
    if value is None:
        return number  # a value newer than these stubs
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return str(value.name).removeprefix(prefix)


def plain_value(value: jobs_pb2.PropertyValue) -> Any:
    """A property value as plain JSON: numbers, strings, bools, lists; times RFC 3339, bytes base64."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [plain_value(v) for v in value.list_value.values]
    if kind == "timestamp_value":
        return value.timestamp_value.ToJsonString()
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind) if kind else None


def print_json(data: object, out: TextIO) -> None:
    """One JSON document, indented, with a trailing newline."""
    out.write(json.dumps(data, indent=2) + "\n")


def print_json_line(data: object, out: TextIO) -> None:
    """One compact JSON object on one line (JSON Lines, for streams), flushed at once."""
    out.write(json.dumps(data, separators=(",", ":")) + "\n")
    out.flush()


def format_value(value: jobs_pb2.PropertyValue) -> str:
    """A property value as text."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return "[" + ", ".join(format_value(v) for v in value.list_value.values) + "]"
    if kind == "timestamp_value":
        return format_time(value.timestamp_value, True)
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
            format_time(job.created_time, job.HasField("created_time")),
            job.result_message[:60],
        )
        for job in jobs
    ]
    print_table(rows, ("ID", "STATE", "TOPIC", "RETRIES", "CREATED (UTC)", "RESULT"), out)


def instance_label(instance_id: str, names: Mapping[str, str]) -> str:
    """`name (id)` for an instance the topology knows, else the id alone."""
    name = names.get(instance_id)
    return f"{name} ({instance_id})" if name else instance_id


def print_job(job: jobs_pb2.Job, out: TextIO, names: Mapping[str, str] | None = None) -> None:
    """One job, field by field; `names` (instance id -> name) names its origin and target."""
    names = names or {}
    target = instance_label(job.target_instance, names) if job.target_instance else "(unassigned)"
    lines = [
        ("id", job.id),
        ("topic", job.topic),
        ("state", state_name(job.state) + (" (stop requested)" if job.stop_requested else "")),
        ("queue", job.queue),
        ("origin", instance_label(job.origin_instance, names)),
        ("target", target),
        ("retries", f"{job.retry_count} of {'unlimited' if job.max_retries < 0 else job.max_retries}"),
        ("created", format_time(job.created_time, job.HasField("created_time"))),
        ("started", format_time(job.started_time, job.HasField("started_time"))),
        ("finished", format_time(job.finished_time, job.HasField("finished_time"))),
    ]
    if job.HasField("not_before_time"):
        lines.append(("not before", format_time(job.not_before_time, True)))
    lines += [
        ("result", job.result_message or "-"),
        ("payload", f"{job.payload_size} bytes"),
        ("output", f"{job.output_payload_size} bytes"),
    ]
    if job.HasField("progress"):
        progress = job.progress
        text = f"{progress.completed_steps}/{progress.total_steps} steps"
        if progress.HasField("eta"):
            text += f", eta {format_time(progress.eta, True)}"
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
            out.write(f"  {format_time(line.time, True)}  {line.message}\n")
