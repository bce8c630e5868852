"""`jobmesh topics`: topic consumption across the topology (the Offloading Browser).

`jobmesh topics` prints the matrix topics x instances; `jobmesh topics enable|disable|exclusive
TOPIC [--instance NAME|ID]` changes one instance's setting (default: the node asked).
Exit codes: 0 success; 2 bad input; 4 node unreachable; 70 unexpected error from the node.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from jobmesh.v1 import topics_pb2, topics_pb2_grpc

from node.cli.cluster import add_token_argument
from node.cli.commands import EXIT_INTERNAL, EXIT_OK, EXIT_UNAVAILABLE, node_address
from node.cli.render import print_table
from node.topics import TopicPattern
from node.transport import client_transport

EXIT_USAGE = 2
_ACTIONS = {
    "enable": topics_pb2.CONSUMPTION_SETTING_ENABLED,
    "disable": topics_pb2.CONSUMPTION_SETTING_DISABLED,
    "exclusive": topics_pb2.CONSUMPTION_SETTING_EXCLUSIVE,
}
_NAMES = {
    topics_pb2.CONSUMPTION_SETTING_ENABLED: "enabled",
    topics_pb2.CONSUMPTION_SETTING_DISABLED: "disabled",
    topics_pb2.CONSUMPTION_SETTING_EXCLUSIVE: "exclusive",
}


def add_parser(sub: Any) -> None:
    """Register the `topics` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "topics",
        help="show or change which instances consume which topics",
        description="Without an action: the matrix of topics x instances with each setting "
        "(enabled, disabled, exclusive; '-' where the instance has no consumer). With one: change "
        "the setting of TOPIC (a topic pattern) on --instance (default: the node asked).",
    )
    p.add_argument("action", nargs="?", choices=sorted(_ACTIONS), help="change a setting")
    p.add_argument("topic", nargs="?", help="topic pattern: a/b, a/b/* or a/b/**")
    p.add_argument(
        "--instance", metavar="NAME|ID", default="", help="instance to change (default: this node)"
    )
    p.add_argument(
        "--node", metavar="HOST:PORT", help="node to ask (default: $JOBMESH_NODE, node.json, :7710)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node (default 30)")
    add_token_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_topics)


def cmd_topics(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh topics [enable|disable|exclusive TOPIC [--instance NAME|ID]]`."""
    if args.action and not args.topic:
        print(f"jobmesh topics {args.action}: give the TOPIC pattern", file=sys.stderr)
        return EXIT_USAGE
    address = node_address(args, environ)
    channel = client_transport(environ, args.token).create_sync_channel(address)
    stub = topics_pb2_grpc.TopicServiceStub(channel)
    try:
        if args.action:
            request = topics_pb2.SetTopicConsumptionRequest(
                instance=args.instance, topic=args.topic, setting=_ACTIONS[args.action]
            )
            changed = stub.SetTopicConsumption(request, timeout=args.timeout).instance
            if args.json:
                sys.stdout.write(json.dumps(MessageToDict(changed), indent=2) + "\n")
            else:
                print(f"{changed.name}: {args.topic} {_NAMES[_ACTIONS[args.action]]}")
            return EXIT_OK
        response = stub.ListTopicConsumption(topics_pb2.ListTopicConsumptionRequest(), timeout=args.timeout)
        if args.json:
            sys.stdout.write(json.dumps(MessageToDict(response), indent=2) + "\n")
        else:
            print_matrix(list(response.instances), sys.stdout)
        return EXIT_OK
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
        if code is grpc.StatusCode.UNAVAILABLE or code is grpc.StatusCode.DEADLINE_EXCEEDED:
            print(f"jobmesh topics: no node reachable at {address} ({details})", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"jobmesh topics: {details}", file=sys.stderr)
        return EXIT_USAGE if code is grpc.StatusCode.INVALID_ARGUMENT else EXIT_INTERNAL
    finally:
        channel.close()


def cell(instance: topics_pb2.InstanceConsumption, topic: str) -> str:
    """The setting of one instance for one topic (pattern) of the matrix."""
    settings = {s.topic: s.setting for s in instance.settings}
    if topic in settings:
        return _NAMES[settings[topic]]
    exclusive = [t for t, s in settings.items() if s == topics_pb2.CONSUMPTION_SETTING_EXCLUSIVE]
    consumes = any(_covers(p, topic) for p in instance.consumer_topics)
    if not consumes:
        return "-"
    if exclusive and not any(_covers(p, topic) for p in exclusive):
        return "disabled"
    return "enabled"


def _covers(pattern: str, topic: str) -> bool:
    """True if `pattern` matches the topic (for a pattern row: its base topic)."""
    base = topic.removesuffix("/**").removesuffix("/*")
    return TopicPattern.parse(pattern).matches(base) or pattern == topic


def print_matrix(instances: list[topics_pb2.InstanceConsumption], out: TextIO) -> None:
    """Topics x instances."""
    topics = sorted(
        {t for i in instances for t in i.consumer_topics} | {s.topic for i in instances for s in i.settings}
    )
    ordered = sorted(instances, key=lambda i: i.name)
    rows = [[topic, *(cell(i, topic) for i in ordered)] for topic in topics]
    print_table(rows, ["TOPIC", *(i.name for i in ordered)], out)
