"""`jobmesh topics`: topic consumption across the topology (the Offloading Browser).

`jobmesh topics` prints the matrix topics x instances; `jobmesh topics enable|disable|exclusive
TOPIC [--instance NAME|ID]` changes one instance's setting (default: the node asked).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from jobmesh.v1 import topics_pb2

from node.cli.common import client_command, client_parser, respond
from node.cli.render import print_table
from node.client import JobmeshClient
from node.errors import InvalidArgument
from node.model.consumption import ConsumptionRules, ConsumptionSetting
from node.topics import TopicPattern

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
    p = client_parser(
        sub,
        "topics",
        "show or change which instances consume which topics",
        description="Without an action: the matrix of topics x instances with each setting "
        "(enabled, disabled, exclusive; '-' where the instance has no consumer). With one: change "
        "the setting of TOPIC (a topic pattern) on --instance (default: the node asked).",
    )
    p.add_argument("action", nargs="?", choices=sorted(_ACTIONS), help="change a setting")
    p.add_argument("topic", nargs="?", help="topic pattern: a/b, a/b/* or a/b/**")
    p.add_argument(
        "--instance", metavar="NAME|ID", default="", help="instance to change (default: this node)"
    )
    p.set_defaults(handler=client_command(cmd_topics))


def cmd_topics(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh topics [enable|disable|exclusive TOPIC [--instance NAME|ID]]`."""
    if args.action:
        if not args.topic:
            raise InvalidArgument("give the TOPIC pattern, e.g. `jobmesh topics disable images/**`")
        request = topics_pb2.SetTopicConsumptionRequest(
            instance=args.instance, topic=args.topic, setting=_ACTIONS[args.action]
        )
        changed = client.call(client.topics.SetTopicConsumption, request).instance
        return respond(args, changed, f"{changed.name}: {args.topic} {_NAMES[_ACTIONS[args.action]]}")
    response = client.call(client.topics.ListTopicConsumption, topics_pb2.ListTopicConsumptionRequest())
    return respond(args, response, lambda: print_matrix(list(response.instances), sys.stdout))


def consumes(instance: topics_pb2.InstanceConsumption, topic: str) -> bool:
    """True when the instance has a consumer for `topic` and its settings let it take the topic."""
    if not any(TopicPattern.parse(p).matches(topic) for p in instance.consumer_topics):
        return False
    rules = ConsumptionRules.from_settings(
        {s.topic: ConsumptionSetting(s.setting) for s in instance.settings}
    )
    return rules.allows(topic)


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
