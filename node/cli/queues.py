"""`jobmesh queues` and `jobmesh queue set|show|suspend|resume|clear NAME`."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from jobmesh.v1 import queues_pb2

from node.cli import paging, render
from node.cli.common import action_parser, client_command, client_parser, command_group, respond
from node.client import JobmeshClient, set_seconds
from node.errors import NotFound

QUEUE_TYPES = {
    name.removeprefix("QUEUE_TYPE_").lower(): number
    for name, number in queues_pb2.QueueType.items()
    if number != queues_pb2.QUEUE_TYPE_UNSPECIFIED
}
SYNC_ISOLATIONS = {
    name.removeprefix("SYNC_ISOLATION_").lower(): number
    for name, number in queues_pb2.SyncIsolation.items()
    if number != queues_pb2.SYNC_ISOLATION_UNSPECIFIED
}
HEADER = ("NAME", "TYPE", "STATE", "QUEUED", "ACTIVE", "PARALLEL", "RETRIES", "TOPICS")


def add_parsers(sub: Any) -> None:
    """Register `queues` and `queue`."""
    p = client_parser(sub, "queues", "list queues with their state")
    paging.add_paging_options(p)
    p.set_defaults(handler=client_command(cmd_queues))

    actions = command_group(sub, "queue", "show, create, change, suspend, resume or clear a queue", cmd_queue)
    for action, help_text in (
        ("show", "show a queue's configuration and state"),
        ("suspend", "finish running jobs, start none until resumed (survives restarts)"),
        ("resume", "start jobs again"),
        ("clear", "drop the queue's queued jobs"),
    ):
        action_parser(actions, action, help_text).add_argument(
            "name", help="queue name (see `jobmesh queues`)"
        )
    setter = action_parser(
        actions,
        "set",
        "create a queue, or change the settings given (the others stay); "
        "unset settings of a new queue take the file-queue defaults",
    )
    setter.add_argument("name", help="queue name: letters, digits, '.', '_', '-'")
    setter.add_argument(
        "--topic",
        action="append",
        metavar="PATTERN",
        help="topic pattern it runs (repeatable; replaces them)",
    )
    setter.add_argument("--type", choices=sorted(QUEUE_TYPES), help="ordering and parallelism")
    setter.add_argument(
        "--max-parallel", type=float, metavar="N", help="jobs at once (count, core fraction, -1)"
    )
    setter.add_argument(
        "--retries", type=int, metavar="N", help="retries after a failed attempt (-1: forever)"
    )
    setter.add_argument("--retry-delay", type=float, metavar="S", help="seconds before the first retry")
    setter.add_argument(
        "--retry-backoff", type=float, metavar="F", help="each further retry waits F times longer"
    )
    setter.add_argument("--retry-delay-max", type=float, metavar="S", help="cap on the retry delay")
    setter.add_argument(
        "--attempt-timeout", type=float, metavar="S", help="an attempt running longer fails (0: none)"
    )
    setter.add_argument(
        "--keep-jobs", action=argparse.BooleanOptionalAction, help="keep SUCCEEDED jobs in history"
    )
    setter.add_argument(
        "--prefer-creation-instance",
        action=argparse.BooleanOptionalAction,
        help="run jobs where they were added whenever that instance consumes the topic",
    )
    setter.add_argument(
        "--ranking", type=int, metavar="N", help="the highest ranking wins among matching queues"
    )
    setter.add_argument(
        "--sync-isolation",
        choices=sorted(SYNC_ISOLATIONS),
        help="run sync consumers in threads, or in worker processes killed at the attempt timeout",
    )


def queue_type_name(value: int) -> str:
    """`ordered` for QUEUE_TYPE_ORDERED."""
    return str(render.enum_name(queues_pb2.QueueType.DESCRIPTOR, value)).lower()


def cmd_queues(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh queues`."""
    listing = paging.fetch(client, client.queues.ListQueues, queues_pb2.ListQueuesRequest(), "queues", args)
    return respond(args, listing.to_json(), lambda: paging.print_listing(listing, print_queues))


def print_queues(queues: list[queues_pb2.QueueInfo], out: TextIO) -> None:
    """Queues as a table."""
    rows = [
        (
            q.config.name,
            queue_type_name(q.config.type),
            "suspended" if q.suspended else "running",
            str(q.queued),
            str(q.active),
            str(q.parallelism),
            str(q.config.retries),
            ",".join(q.config.topics) or "(all others)",
        )
        for q in queues
    ]
    render.print_table(rows, HEADER, out)


def find_queue(client: JobmeshClient, name: str) -> queues_pb2.QueueInfo | None:
    """The queue named `name`, or None."""
    request = queues_pb2.ListQueuesRequest()
    while True:
        response = client.call(client.queues.ListQueues, request)
        for queue in response.queues:
            if queue.config.name == name:
                return queue  # type: ignore[no-any-return]
        token = getattr(response, "next_page_token", "")
        if not token:
            return None
        setattr(request, "page_token", token)  # noqa: B010  # once ListQueues pages


def cmd_queue(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh queue show|set|suspend|resume|clear NAME`."""
    if args.action == "set":
        info = client.call(
            client.queues.SetQueue, queues_pb2.SetQueueRequest(config=_config(args, client))
        ).queue
        return _show(args, info)
    if args.action == "show":
        found = find_queue(client, args.name)
        if found is None:
            raise NotFound(f"no queue named {args.name!r}; `jobmesh queues` lists them")
        return _show(args, found)
    if args.action == "clear":
        response = client.call(client.queues.ClearQueue, queues_pb2.ClearQueueRequest(name=args.name))
        return respond(args, response, f"dropped {response.dropped} queued jobs of {args.name}")
    if args.action == "suspend":
        info = client.call(client.queues.SuspendQueue, queues_pb2.SuspendQueueRequest(name=args.name)).queue
    else:
        info = client.call(client.queues.ResumeQueue, queues_pb2.ResumeQueueRequest(name=args.name)).queue
    return respond(args, info, f"queue {info.config.name} is {'suspended' if info.suspended else 'running'}")


def _config(args: argparse.Namespace, client: JobmeshClient) -> queues_pb2.QueueConfig:
    """The existing queue's configuration (or a new one) with the settings given applied."""
    existing = find_queue(client, args.name)
    config = queues_pb2.QueueConfig(name=args.name)
    if existing is not None:
        config.CopyFrom(existing.config)
    if args.topic is not None:
        del config.topics[:]
        config.topics.extend(args.topic)
    if args.type is not None:
        config.type = QUEUE_TYPES[args.type]
    if args.sync_isolation is not None:
        config.sync_isolation = SYNC_ISOLATIONS[args.sync_isolation]
    for flag, field in (
        ("max_parallel", "max_parallel"),
        ("retries", "retries"),
        ("retry_backoff", "retry_backoff"),
        ("keep_jobs", "keep_jobs"),
        ("prefer_creation_instance", "prefer_run_on_creation_instance"),
        ("ranking", "ranking"),
    ):
        if getattr(args, flag) is not None:
            setattr(config, field, getattr(args, flag))
    for flag, field in (
        ("retry_delay", "retry_delay"),
        ("retry_delay_max", "retry_delay_max"),
        ("attempt_timeout", "timeout"),
    ):
        if getattr(args, flag) is not None:
            set_seconds(config, field, getattr(args, flag))
    return config


def _show(args: argparse.Namespace, info: queues_pb2.QueueInfo) -> int:
    return respond(args, info, lambda: print_queue(info, sys.stdout))


def print_queue(info: queues_pb2.QueueInfo, out: TextIO) -> None:
    """A queue, field by field: state, then every configured setting."""
    lines = [
        ("name", info.config.name),
        ("state", "suspended" if info.suspended else "running"),
        ("source", str(render.enum_name(queues_pb2.QueueSource.DESCRIPTOR, info.source)).lower()),
        ("queued", str(info.queued)),
        ("active", str(info.active)),
        ("parallelism", str(info.parallelism)),
    ]
    settings = render.to_json(info.config)
    settings.pop("name", None)
    for key, value in settings.items():
        text = (
            ",".join(value)
            if isinstance(value, list)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        lines.append((key, text or "-"))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        out.write(f"{key.ljust(width)}  {value}\n")
