"""Client commands for statistics, history purge and event watching."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, TextIO

from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2

from node.cli import render
from node.cli.common import client_command, client_parser, respond
from node.cli.watch import EVENT_TYPES, cmd_watch
from node.client import JobmeshClient
from node.errors import InvalidArgument

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `7d`, `1w` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"duration {text!r} is malformed; write e.g. 90s, 15m, 2h, 7d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def add_parsers(sub: Any) -> None:
    """Register `stats`, `watch` and `purge`."""
    p = client_parser(sub, "stats", "job statistics: global, per queue, per topic")
    p.add_argument("--topology", action="store_true", help="sum the statistics of every live instance")
    p.set_defaults(handler=client_command(cmd_stats))

    p = client_parser(sub, "watch", "stream job events (history after --after, then live)")
    p.add_argument(
        "--after", type=int, default=-1, metavar="SEQ", help="events after SEQ (0: all kept; default -1: new)"
    )
    p.add_argument(
        "--topic", action="append", default=[], metavar="PATTERN", help="topic pattern (repeatable)"
    )
    p.add_argument("--job", action="append", default=[], metavar="ID", help="only this job (repeatable)")
    p.add_argument(
        "--type", action="append", default=[], choices=sorted(EVENT_TYPES), help="event type (repeatable)"
    )
    p.add_argument("--count", type=int, default=0, help="exit after this many events")
    p.set_defaults(handler=client_command(cmd_watch))

    p = client_parser(sub, "purge", "delete finished jobs from history")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=["succeeded", "stopped", "given_up", "error", "dropped"],
        help="history state (repeatable; default all)",
    )
    p.add_argument("--older-than", metavar="DURATION", help="only jobs finished longer ago, e.g. 7d, 12h")
    p.add_argument(
        "--keep", type=int, default=0, metavar="N", help="keep the newest N matching jobs (by creation)"
    )
    p.set_defaults(handler=client_command(cmd_purge))


def cmd_stats(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh stats`."""
    scope = jobs_pb2.QUERY_SCOPE_TOPOLOGY if args.topology else jobs_pb2.QUERY_SCOPE_LOCAL
    response = client.call(client.jobs.GetStatistics, jobs_pb2.GetStatisticsRequest(scope=scope))
    if response.partial:
        names = ", ".join(response.unanswered_instances)
        sys.stderr.write(
            f"warning: {len(response.unanswered_instances)} instance(s) did not answer ({names}): "
            "their attempts and jobs are missing from these figures\n"
        )
    return respond(args, response, lambda: print_statistics(response, sys.stdout))


def _state_name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def print_statistics(response: jobs_pb2.GetStatisticsResponse, out: TextIO) -> None:
    """Statistics: the jobs (each once, at its origin), then the attempts where they ran (global,
    per queue, per topic), then the jobs this origin offloaded."""
    if response.jobs:
        out.write("jobs, each counted once at its origin:\n")
        render.print_table(
            [(_state_name(c.state), str(c.jobs)) for c in response.jobs], ("STATE", "JOBS"), out
        )
        out.write("\nattempts, where they ran (QUEUED and ACTIVE: jobs held there now):\n")
    rows = [("global", "", getattr(response, "global"))]
    rows += [("queue", name, response.queues[name]) for name in sorted(response.queues)]
    rows += [("topic", name, response.topics[name]) for name in sorted(response.topics)]
    render.print_table(
        [
            (
                scope,
                name,
                str(s.queued),
                str(s.active),
                str(s.finished),
                str(s.failed),
                str(s.cancelled),
                f"{s.average_waiting.ToMicroseconds() / 1000:.1f}",
                f"{s.average_processing.ToMicroseconds() / 1000:.1f}",
                render.format_time(s.last_finished, s.HasField("last_finished")),
            )
            for scope, name, s in rows
        ],
        (
            "SCOPE",
            "NAME",
            "QUEUED",
            "ACTIVE",
            "FINISHED",
            "FAILED",
            "CANCELLED",
            "WAIT MS",
            "RUN MS",
            "LAST FINISHED",
        ),
        out,
    )
    if response.offloaded:
        out.write("\noffloaded jobs (this origin's, by target and state):\n")
        render.print_table(
            [(c.target_instance, _state_name(c.state), str(c.jobs)) for c in response.offloaded],
            ("TARGET", "STATE", "JOBS"),
            out,
        )


def cmd_purge(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh purge`."""
    request = jobs_pb2.PurgeJobsRequest(
        states=[jobs_pb2.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state], keep_newest=args.keep
    )
    if args.older_than:
        request.older_than.CopyFrom(Duration(seconds=int(parse_duration(args.older_than))))
    response = client.call(client.jobs.PurgeJobs, request)
    return respond(args, response, f"purged {response.purged} jobs")
