"""Client commands for queues, statistics, schedules, history purge and event watching."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2, queues_pb2, schedules_pb2

from node.cli import render
from node.cli.commands import EXIT_OK, client_command, client_parser
from node.cli.values import TYPE_HELP, parse_assignment
from node.cli.watch import EVENT_TYPES, cmd_watch
from node.client import JobmeshClient, new_job
from node.errors import InvalidArgument

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `7d`, `1w` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"duration {text!r} is malformed; write e.g. 90s, 15m, 2h, 7d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _hhmm(text: str, what: str) -> tuple[int, int]:
    hour, sep, minute = text.partition(":")
    if not sep or not hour.isdigit() or not minute.isdigit():
        raise InvalidArgument(f"{what} {text!r}: write HH:MM")
    return int(hour), int(minute)


def parse_rule(kind: str, text: str) -> schedules_pb2.ScheduleRule:
    """A rule from CLI text: --at ISO, --hourly MM, --daily HH:MM, --weekly DAY@HH:MM,
    --monthly D@HH:MM, --yearly MM-DD@HH:MM, --cron 'EXPR'."""
    rule = schedules_pb2.ScheduleRule()
    if kind == "at":
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as e:
            raise InvalidArgument(f"--at {text!r}: write an ISO 8601 time, e.g. 2026-12-24T18:00:00Z") from e
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        rule.at.time.FromDatetime(when.astimezone(UTC))
    elif kind == "hourly":
        if not text.isdigit():
            raise InvalidArgument(f"--hourly {text!r}: write the minute, 0-59")
        rule.hourly.minute = int(text)
    elif kind == "daily":
        rule.daily.hour, rule.daily.minute = _hhmm(text, "--daily")
    elif kind == "weekly":
        day, _, time_text = text.partition("@")
        if day.lower()[:3] not in _DAYS:
            raise InvalidArgument(f"--weekly {text!r}: write DAY@HH:MM, e.g. mon@09:00")
        rule.weekly.day_of_week = _DAYS[day.lower()[:3]]
        rule.weekly.hour, rule.weekly.minute = _hhmm(time_text, "--weekly")
    elif kind == "monthly":
        day, _, time_text = text.partition("@")
        if not day.isdigit():
            raise InvalidArgument(f"--monthly {text!r}: write DAY@HH:MM, e.g. 1@00:00")
        rule.monthly.day = int(day)
        rule.monthly.hour, rule.monthly.minute = _hhmm(time_text, "--monthly")
    elif kind == "yearly":
        date, _, time_text = text.partition("@")
        month, _, day = date.partition("-")
        if not month.isdigit() or not day.isdigit():
            raise InvalidArgument(f"--yearly {text!r}: write MM-DD@HH:MM, e.g. 12-24@18:00")
        rule.yearly.month, rule.yearly.day = int(month), int(day)
        rule.yearly.hour, rule.yearly.minute = _hhmm(time_text, "--yearly")
    else:
        rule.cron = text
    return rule


def _time(ts: Any, present: bool) -> str:
    if not present:
        return "-"
    return str(ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"))


def _queue_type(value: int) -> str:
    return queues_pb2.QueueType.Name(value).removeprefix("QUEUE_TYPE_").lower()  # type: ignore[arg-type]


def add_parsers(sub: Any) -> None:
    """Register the management subcommands."""
    p = client_parser(sub, "queues", "list queues with their state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=client_command(cmd_queues))

    p = client_parser(sub, "queue", "suspend, resume or clear a queue")
    p.add_argument("action", choices=["suspend", "resume", "clear"])
    p.add_argument("name", help="queue name (see `jobmesh queues`)")
    p.set_defaults(handler=client_command(cmd_queue))

    p = client_parser(sub, "stats", "job statistics: global, per queue, per topic")
    p.add_argument("--json", action="store_true", help="print JSON")
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
    p.add_argument("--json", action="store_true", help="one JSON object per event")
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

    p = client_parser(sub, "schedule", "scheduled jobs: add, list, rm, suspend, resume")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a schedule (times are UTC)")
    add.add_argument("topic")
    add.add_argument("properties", nargs="*", metavar="NAME[:TYPE]=VALUE", help=TYPE_HELP)
    add.add_argument("--name", default="", help="a name for people")
    for kind, meta, text in (
        ("at", "TIME", "once at an ISO 8601 time"),
        ("hourly", "MM", "every hour at minute MM"),
        ("daily", "HH:MM", "every day"),
        ("weekly", "DAY@HH:MM", "every week, e.g. mon@09:00"),
        ("monthly", "D@HH:MM", "every month on day D"),
        ("yearly", "MM-DD@HH:MM", "every year"),
        ("cron", "EXPR", "a 5-field cron expression"),
    ):
        add.add_argument(f"--{kind}", action="append", default=[], metavar=meta, help=text + " (repeatable)")
    add.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("list", help="list schedules").add_argument("--json", action="store_true")
    for action in ("rm", "suspend", "resume"):
        actions.add_parser(action, help=f"{action} a schedule").add_argument("id")
    p.set_defaults(handler=client_command(cmd_schedule))


def cmd_queues(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh queues`."""
    queues = client.list_all(client.queues.ListQueues, queues_pb2.ListQueuesRequest(), "queues")
    if args.json:
        from google.protobuf.json_format import MessageToDict

        render.print_json([MessageToDict(q, preserving_proto_field_name=True) for q in queues], sys.stdout)
        return EXIT_OK
    rows = [
        (
            q.config.name,
            _queue_type(q.config.type),
            "suspended" if q.suspended else "running",
            str(q.queued),
            str(q.active),
            str(q.parallelism),
            str(q.config.retries),
            ",".join(q.config.topics) or "(all others)",
        )
        for q in queues
    ]
    render.print_table(
        rows, ("NAME", "TYPE", "STATE", "QUEUED", "ACTIVE", "PARALLEL", "RETRIES", "TOPICS"), sys.stdout
    )
    return EXIT_OK


def cmd_queue(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh queue suspend|resume|clear NAME`."""
    if args.action == "clear":
        response = client.call(client.queues.ClearQueue, queues_pb2.ClearQueueRequest(name=args.name))
        print(f"dropped {response.dropped} queued jobs of {args.name}")
        return EXIT_OK
    if args.action == "suspend":
        reply = client.call(client.queues.SuspendQueue, queues_pb2.SuspendQueueRequest(name=args.name))
    else:
        reply = client.call(client.queues.ResumeQueue, queues_pb2.ResumeQueueRequest(name=args.name))
    info = reply.queue
    print(f"queue {info.config.name} is {'suspended' if info.suspended else 'running'}")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh stats`."""
    scope = jobs_pb2.QUERY_SCOPE_TOPOLOGY if args.topology else jobs_pb2.QUERY_SCOPE_LOCAL
    response = client.call(client._stub.GetStatistics, jobs_pb2.GetStatisticsRequest(scope=scope))
    if args.json:
        from google.protobuf.json_format import MessageToDict

        render.print_json(
            MessageToDict(
                response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            sys.stdout,
        )
        return EXIT_OK
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
                _time(s.last_finished, s.HasField("last_finished")),
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
        sys.stdout,
    )
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh purge`."""
    request = jobs_pb2.PurgeJobsRequest(
        states=[jobs_pb2.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state], keep_newest=args.keep
    )
    if args.older_than:
        request.older_than.CopyFrom(Duration(seconds=int(parse_duration(args.older_than))))
    response = client.call(client._stub.PurgeJobs, request)
    print(f"purged {response.purged} jobs")
    return EXIT_OK


def _print_schedules(schedules: list[schedules_pb2.Schedule], as_json: bool) -> None:
    if as_json:
        from google.protobuf.json_format import MessageToDict

        render.print_json([MessageToDict(s, preserving_proto_field_name=True) for s in schedules], sys.stdout)
        return
    rows = [
        (
            s.id,
            s.name or "-",
            s.job.topic,
            "suspended" if s.suspended else "active",
            _time(s.next_time, s.HasField("next_time")),
            _time(s.last_time, s.HasField("last_time")),
            str(s.fired_count),
            "; ".join(_rule_text(r) for r in s.rules),
        )
        for s in schedules
    ]
    render.print_table(
        rows, ("ID", "NAME", "TOPIC", "STATE", "NEXT (UTC)", "LAST", "FIRED", "RULES"), sys.stdout
    )


def _rule_text(rule: schedules_pb2.ScheduleRule) -> str:
    kind = rule.WhichOneof("rule")
    if kind == "cron":
        return f"cron {rule.cron}"
    if kind == "at":
        return f"at {_time(rule.at.time, True)}"
    body = getattr(rule, kind or "")
    fields = " ".join(f"{f.name}={getattr(body, f.name)}" for f in body.DESCRIPTOR.fields)
    return f"{kind} {fields}"


def cmd_schedule(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh schedule ...`."""
    stub = client.schedules
    if args.action == "add":
        rules = [parse_rule(kind, text) for kind in EVERY_RULE for text in getattr(args, kind)]
        if not rules:
            raise InvalidArgument(
                "give at least one of --at, --hourly, --daily, --weekly, --monthly, --yearly, --cron"
            )
        job = new_job(args.topic, dict(parse_assignment(t) for t in args.properties))
        schedule = client.call(
            stub.AddSchedule, schedules_pb2.AddScheduleRequest(name=args.name, job=job, rules=rules)
        ).schedule
        if args.json:
            _print_schedules([schedule], True)
        else:
            print(schedule.id)
        return EXIT_OK
    if args.action == "list":
        schedules = client.list_all(stub.ListSchedules, schedules_pb2.ListSchedulesRequest(), "schedules")
        _print_schedules(schedules, args.json)
        return EXIT_OK
    if args.action == "rm":
        client.call(stub.RemoveSchedule, schedules_pb2.RemoveScheduleRequest(id=args.id))
        print(f"removed schedule {args.id}")
    else:
        if args.action == "suspend":
            reply = client.call(stub.SuspendSchedule, schedules_pb2.SuspendScheduleRequest(id=args.id))
        else:
            reply = client.call(stub.ResumeSchedule, schedules_pb2.ResumeScheduleRequest(id=args.id))
        schedule = reply.schedule
        print(f"schedule {schedule.id} is {'suspended' if schedule.suspended else 'active'}")
    return EXIT_OK


EVERY_RULE = ("at", "hourly", "daily", "weekly", "monthly", "yearly", "cron")
