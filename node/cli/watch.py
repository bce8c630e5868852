"""`jobmesh watch` and waiting for one job with a live progress bar (`jobmesh add --wait`)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from jobmesh.v1 import jobs_pb2

from node.cli import render
from node.client import FINISHED_STATES, JobmeshClient

TERMINAL_EVENTS = frozenset(
    {
        jobs_pb2.JOB_EVENT_TYPE_FINISHED,
        jobs_pb2.JOB_EVENT_TYPE_CANCELLED,
        jobs_pb2.JOB_EVENT_TYPE_STOPPED,
        jobs_pb2.JOB_EVENT_TYPE_REMOVED,
    }
)
EVENT_TYPES = {
    name.removeprefix("JOB_EVENT_TYPE_").lower(): number
    for name, number in jobs_pb2.JobEventType.items()
    if number != jobs_pb2.JOB_EVENT_TYPE_UNSPECIFIED
}


def event_type_name(value: int) -> str:
    """`FINISHED` for JOB_EVENT_TYPE_FINISHED."""
    return jobs_pb2.JobEventType.Name(value).removeprefix("JOB_EVENT_TYPE_")  # type: ignore[arg-type]


def format_event(event: jobs_pb2.JobEvent) -> str:
    """One line per event for people."""
    when = event.time.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{event.seq:>8}", when, f"{event_type_name(event.type):<9}", event.job_id, event.topic]
    if event.type == jobs_pb2.JOB_EVENT_TYPE_PROGRESS and not event.message:
        parts.append(f"{event.progress.completed_steps}/{event.progress.total_steps}")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


def cmd_watch(args: argparse.Namespace, client: JobmeshClient) -> int:
    """Print events until interrupted (or until --count events were printed)."""
    request = jobs_pb2.WatchJobsRequest(after_seq=args.after, topics=args.topic, job_ids=args.job)
    request.types.extend(EVENT_TYPES[t] for t in args.type)
    stream = client.watch(request)
    try:
        return _print_events(args, stream)
    finally:
        stream.cancel()


def _print_events(args: argparse.Namespace, stream: Any) -> int:
    printed = 0
    for message in stream:
        if message.gap_until_seq:
            print(
                f"jobmesh watch: events up to {message.gap_until_seq - 1} were purged (retention); continuing",
                file=sys.stderr,
            )
        for event in message.events:
            if args.json:
                render.print_json_line(render.to_json(event), sys.stdout)
            else:
                print(format_event(event), flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return 0
    return 0


class ProgressBar:
    """A one-line progress bar on a terminal; plain lines elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last = ""

    def update(self, event: jobs_pb2.JobEvent) -> None:
        """Show the progress (or log line) an event carries."""
        if event.message:
            self._line(f"log: {event.message}")
            return
        total, done = event.progress.total_steps, event.progress.completed_steps
        eta = ""
        if event.progress.HasField("eta"):
            left = event.progress.eta.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
            eta = f"  eta {max(0, int(left.total_seconds()))}s"
        if total:
            width = 30
            filled = min(width, width * done // total)
            text = f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}% {done}/{total}{eta}"
        else:
            text = f"{done} steps{eta}"
        if self._tty:
            self._out.write("\r" + text.ljust(len(self._last)))
            self._out.flush()
            self._last = text
        else:
            self._out.write(text + "\n")

    def state(self, text: str) -> None:
        """Show a state change."""
        self._line(text)

    def _line(self, text: str) -> None:
        if self._tty and self._last:
            self._out.write("\r" + " " * len(self._last) + "\r")
            self._last = ""
        self._out.write(text + "\n")
        self._out.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._tty and self._last:
            self._out.write("\n")
            self._last = ""


def wait_with_progress(
    client: JobmeshClient, job_id: str, after_seq: int, timeout_s: float | None, out: TextIO
) -> jobs_pb2.Job:
    """Follow a job's events from `after_seq`, showing progress, until it finishes; returns it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar = ProgressBar(out)
    job = client.get_job(job_id)
    if job.state in FINISHED_STATES:
        return job
    stream = client.watch(
        jobs_pb2.WatchJobsRequest(after_seq=after_seq, job_ids=[job_id]),
        None if deadline is None else max(0.1, deadline - time.monotonic()),
    )
    try:
        for message in stream:
            for event in message.events:
                if event.type == jobs_pb2.JOB_EVENT_TYPE_PROGRESS:
                    bar.update(event)
                elif event.type == jobs_pb2.JOB_EVENT_TYPE_STARTED:
                    bar.state(f"started (attempt {event.retry_count + 1})")
                elif event.type == jobs_pb2.JOB_EVENT_TYPE_FAILED:
                    bar.state(f"attempt failed: {event.message} (retry {event.retry_count})")
                elif event.type in TERMINAL_EVENTS:
                    bar.close()
                    return client.get_job(job_id)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s") from e
        raise
    finally:
        stream.cancel()
        bar.close()
    return client.get_job(job_id)
