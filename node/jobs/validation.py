"""The one validator of job data, whoever sends it: a client (intake) or a peer (transfer frames).

A value is checked before it is stored, so nothing a caller sends can make a later read fail:
topics, properties (in their stored JSON form too), sizes, times, retry numbers, epochs and
sequence numbers. Every error is an InvalidArgument that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobmesh.peer.v1 import transfer_pb2

from node.config import JobsConfig
from node.errors import InvalidArgument
from node.model.job import JobState
from node.properties import MAX_TIMESTAMP_S, MIN_TIMESTAMP_S, check_properties_json
from node.topics import validate_topic

MAX_DEDUP_KEY_CHARS = 256
MAX_JOB_SECONDS = 10 * 365 * 86400
"""Longest per-job retry delay or timeout (10 years)."""
MAX_ID_CHARS = 128
"""Job and instance ids are UUIDs (36 characters); longer ones are not ours."""
MAX_MESSAGE_CHARS = 64 * 1024
"""A result message or log line of a transferred report."""
MAX_LOG_LINES_PER_REPORT = 100_000
MAX_RETRIES = 2**31 - 1
MAX_SEQ = 2**63 - 2
"""Epochs and sequence numbers: SQLite's largest integer less one, so `epoch + 1` still fits."""
MIN_TIME_US = MIN_TIMESTAMP_S * 1_000_000
MAX_TIME_US = MAX_TIMESTAMP_S * 1_000_000 + 999_999


@dataclass(frozen=True)
class JobLimits:
    """The size limits of this node's jobs (from `jobs.*` settings)."""

    max_payload_bytes: int = JobsConfig.max_payload_bytes
    max_properties_bytes: int = JobsConfig.max_properties_bytes

    @classmethod
    def of(cls, config: JobsConfig) -> JobLimits:
        """The limits a node's configuration sets."""
        return cls(config.max_payload_bytes, config.max_properties_bytes)


def check_payload(size: int, limits: JobLimits, field: str) -> None:
    """Refuse a payload larger than `jobs.max_payload_bytes`."""
    if size > limits.max_payload_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {limits.max_payload_bytes} bytes (jobs.max_payload_bytes)"
        )


def check_job_options(
    field: str,
    *,
    dedup_key: str = "",
    max_retries: int | None = None,
    retry_delay_s: float | None = None,
    timeout_s: float | None = None,
) -> None:
    """Refuse a dedup key, retry number or per-job duration out of range."""
    if len(dedup_key) > MAX_DEDUP_KEY_CHARS:
        raise InvalidArgument(
            f"{field}.dedup_key has {len(dedup_key)} characters; at most {MAX_DEDUP_KEY_CHARS}"
        )
    if max_retries is not None and not -1 <= max_retries <= MAX_RETRIES:
        raise InvalidArgument(f"{field}.max_retries is {max_retries}; use -1 (forever) to {MAX_RETRIES}")
    for name, value in (("retry_delay", retry_delay_s), ("timeout", timeout_s)):
        if value is not None and not 0 <= value <= MAX_JOB_SECONDS:
            raise InvalidArgument(
                f"{field}.{name} is {value:g}s; use a duration from 0 to {MAX_JOB_SECONDS}s (10 years)"
            )


def check_id(value: str, field: str) -> None:
    """Refuse an empty or overlong id."""
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field} has {len(value)} characters; an id has 1 to {MAX_ID_CHARS}")


def check_number(value: int, low: int, high: int, field: str) -> None:
    """Refuse an integer outside low..high."""
    if not low <= value <= high:
        raise InvalidArgument(f"{field} is {value}; it must be {low} to {high}")


def check_time_us(value: int, field: str, *, optional: bool = False) -> None:
    """Refuse a time (microseconds since the epoch) outside years 0001..9999; 0 passes if `optional`."""
    if not (optional and value == 0) and not MIN_TIME_US <= value <= MAX_TIME_US:
        raise InvalidArgument(f"{field} is {value}; a time is between years 0001 and 9999 UTC")


def _check_text(value: str, field: str) -> None:
    if len(value) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"{field} has {len(value)} characters; at most {MAX_MESSAGE_CHARS}")


def check_offloaded_job(job: transfer_pb2.OffloadedJob, limits: JobLimits, field: str) -> None:
    """Refuse a job from a peer that a client could not have added (see intake.py)."""
    check_id(job.job_id, f"{field}.job_id")
    check_number(job.epoch, 0, MAX_SEQ, f"{field}.epoch")
    validate_topic(job.topic, f"{field}.topic")
    if job.properties_json:
        check_properties_json(job.properties_json, f"{field}.properties_json", limits.max_properties_bytes)
    if not job.payload_chunked:
        check_payload(len(job.payload), limits, f"{field}.payload")
    check_job_options(
        field,
        max_retries=job.max_retries,
        retry_delay_s=job.retry_delay_us / 1e6 if job.HasField("retry_delay_us") else None,
        timeout_s=job.timeout_us / 1e6 if job.HasField("timeout_us") else None,
    )
    check_time_us(job.created_us, f"{field}.created_us")
    check_number(job.retry_count, 0, MAX_RETRIES, f"{field}.retry_count")


def check_report(report: transfer_pb2.JobReport, limits: JobLimits, field: str) -> None:
    """Refuse a report from a peer whose values could not be stored and read back."""
    check_id(report.job_id, f"{field}.job_id")
    check_number(report.epoch, 0, MAX_SEQ, f"{field}.epoch")
    check_number(report.report_seq, 0, MAX_SEQ, f"{field}.report_seq")
    if report.state not in {int(s) for s in JobState}:
        raise InvalidArgument(f"{field}.state {report.state} is not a known JobState")
    check_number(report.retry_count, 0, MAX_RETRIES, f"{field}.retry_count")
    for name in ("started_us", "finished_us", "eta_us"):
        check_time_us(getattr(report, name), f"{field}.{name}", optional=True)
    check_number(report.progress_total, 0, MAX_SEQ, f"{field}.progress_total")
    check_number(report.progress_done, 0, MAX_SEQ, f"{field}.progress_done")
    _check_text(report.result_message, f"{field}.result_message")
    if not report.output_chunked:
        check_payload(len(report.output_payload), limits, f"{field}.output_payload")
    check_number(len(report.log_lines), 0, MAX_LOG_LINES_PER_REPORT, f"{field}.log_lines (count)")
    check_number(report.log_count, 0, MAX_RETRIES, f"{field}.log_count")
    for index, line in enumerate(report.log_lines):
        check_number(line.line, 0, MAX_RETRIES, f"{field}.log_lines[{index}].line")
        check_time_us(line.time_us, f"{field}.log_lines[{index}].time_us", optional=True)
        _check_text(line.message, f"{field}.log_lines[{index}].message")


def check_exchange(frame: transfer_pb2.ExchangeRequest, limits: JobLimits) -> None:
    """Refuse a transfer frame any of whose items fails the checks client data gets."""
    check_id(frame.sender_id, "sender_id")
    check_number(frame.last_seq, 0, MAX_SEQ, "last_seq")
    for index, job in enumerate(frame.jobs):
        check_offloaded_job(job, limits, f"jobs[{index}]")
    for index, report in enumerate(frame.reports):
        check_report(report, limits, f"reports[{index}]")
    for index, control in enumerate(frame.controls):
        check_id(control.job_id, f"controls[{index}].job_id")
        check_number(control.epoch, 0, MAX_SEQ, f"controls[{index}].epoch")


RECONCILE_MAX_JOBS = 1000
"""Jobs one Reconcile call asks about at most."""


def check_reconcile(request: transfer_pb2.ReconcileRequest) -> None:
    """Refuse a reconciliation question with a bad role, too many jobs, a bad id or epoch, or
    an id asked twice."""
    check_id(request.sender_id, "sender_id")
    if request.role not in (transfer_pb2.RECONCILE_ROLE_ORIGIN, transfer_pb2.RECONCILE_ROLE_TARGET):
        raise InvalidArgument(f"role {request.role} is not RECONCILE_ROLE_ORIGIN or RECONCILE_ROLE_TARGET")
    check_number(len(request.jobs), 1, RECONCILE_MAX_JOBS, "jobs (count)")
    seen: set[str] = set()
    for index, job in enumerate(request.jobs):
        check_id(job.job_id, f"jobs[{index}].job_id")
        check_number(job.epoch, 0, MAX_SEQ, f"jobs[{index}].epoch")
        if job.state not in {int(s) for s in JobState}:
            raise InvalidArgument(f"jobs[{index}].state {job.state} is not a known JobState")
        check_number(job.retry_count, 0, MAX_RETRIES, f"jobs[{index}].retry_count")
        if job.job_id in seen:
            raise InvalidArgument(f"jobs[{index}].job_id {job.job_id!r} is asked twice")
        seen.add(job.job_id)


def check_reconcile_answers(
    request: transfer_pb2.ReconcileRequest, response: transfer_pb2.ReconcileResponse
) -> None:
    """Refuse a peer's answers that do not match the question (one per job, in order) or carry
    values that could not be stored."""
    if len(response.answers) != len(request.jobs):
        raise InvalidArgument(f"{len(response.answers)} answers to {len(request.jobs)} questions")
    statuses = set(transfer_pb2.ReconcileStatus.values()) - {transfer_pb2.RECONCILE_STATUS_UNSPECIFIED}
    for index, (asked, answer) in enumerate(zip(request.jobs, response.answers, strict=True)):
        if (answer.job_id, answer.epoch) != (asked.job_id, asked.epoch):
            raise InvalidArgument(f"answers[{index}] is about {answer.job_id!r}, not {asked.job_id!r}")
        if answer.status not in statuses:
            raise InvalidArgument(f"answers[{index}].status {answer.status} is not a known status")
        if answer.state and answer.state not in {int(s) for s in JobState}:  # 0: none given
            raise InvalidArgument(f"answers[{index}].state {answer.state} is not a known JobState")
        check_number(answer.retry_count, 0, MAX_RETRIES, f"answers[{index}].retry_count")
