"""`jobmesh schedule add|list|rm|suspend|resume`: scheduled jobs (times are UTC)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any, TextIO

from jobmesh.v1 import schedules_pb2

from node.cli import paging, render
from node.cli.common import action_parser, command_group, respond
from node.cli.values import TYPE_HELP, parse_assignment
from node.client import JobmeshClient, new_job
from node.errors import InvalidArgument

_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
EVERY_RULE = ("at", "hourly", "daily", "weekly", "monthly", "yearly", "cron")


def add_parser(sub: Any) -> None:
    """Register `schedule`."""
    actions = command_group(sub, "schedule", "scheduled jobs: add, list, rm, suspend, resume", cmd_schedule)
    add = action_parser(actions, "add", "add a schedule (times are UTC)")
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
    paging.add_paging_options(action_parser(actions, "list", "list schedules"))
    for action in ("rm", "suspend", "resume"):
        action_parser(actions, action, f"{action} a schedule").add_argument("id")


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


def print_schedules(schedules: list[schedules_pb2.Schedule], out: TextIO) -> None:
    """Schedules as a table."""
    rows = [
        (
            s.id,
            s.name or "-",
            s.job.topic,
            "suspended" if s.suspended else "active",
            render.format_time(s.next_time, s.HasField("next_time")),
            render.format_time(s.last_time, s.HasField("last_time")),
            str(s.fired_count),
            "; ".join(_rule_text(r) for r in s.rules),
        )
        for s in schedules
    ]
    render.print_table(rows, ("ID", "NAME", "TOPIC", "STATE", "NEXT (UTC)", "LAST", "FIRED", "RULES"), out)


def _rule_text(rule: schedules_pb2.ScheduleRule) -> str:
    kind = rule.WhichOneof("rule")
    if kind == "cron":
        return f"cron {rule.cron}"
    if kind == "at":
        return f"at {render.format_time(rule.at.time, True)}"
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
        return respond(args, schedule, schedule.id)
    if args.action == "list":
        listing = paging.fetch(
            client, stub.ListSchedules, schedules_pb2.ListSchedulesRequest(), "schedules", args
        )
        return respond(args, listing.to_json(), lambda: paging.print_listing(listing, print_schedules))
    if args.action == "rm":
        response = client.call(stub.RemoveSchedule, schedules_pb2.RemoveScheduleRequest(id=args.id))
        return respond(args, response, f"removed schedule {args.id}")
    if args.action == "suspend":
        schedule = client.call(
            stub.SuspendSchedule, schedules_pb2.SuspendScheduleRequest(id=args.id)
        ).schedule
    else:
        schedule = client.call(stub.ResumeSchedule, schedules_pb2.ResumeScheduleRequest(id=args.id)).schedule
    return respond(
        args, schedule, f"schedule {schedule.id} is {'suspended' if schedule.suspended else 'active'}"
    )
