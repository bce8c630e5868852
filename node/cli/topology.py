"""`jobmesh topology`: the topology view of a running node, once or live (`--watch`);
`jobmesh property set|unset`: the instance properties of the node asked."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from jobmesh.v1 import topology_pb2

from node.cli import render
from node.cli.common import EXIT_OK, action_parser, client_command, client_parser, command_group, respond
from node.cli.render import print_table
from node.client import JobmeshClient
from node.discovery.properties import TOPICS_PROPERTY

HEADER = ("NAME", "ID", "ADDRESS", "CLUSTER", "LEADER", "STATE", "TOPICS", "LAST HEARD")


def add_parsers(sub: Any) -> None:
    """Register `topology` and `property`."""
    p = client_parser(
        sub,
        "topology",
        "show the topology view of a node",
        description="Show the instances a node sees (* marks the node answering), their clusters, "
        "leaders, states, consumed topics and when it last heard from them. --watch follows the "
        "topology events (TOPOLOGY_INIT, TOPOLOGY_CHANGING, TOPOLOGY_CHANGED, PROPERTIES_CHANGED).",
    )
    p.add_argument("--wide", action="store_true", help="also show every instance property")
    p.add_argument("--watch", action="store_true", help="print every topology event until interrupted")
    p.add_argument("--events", type=int, metavar="N", help="with --watch: stop after N events")
    p.set_defaults(handler=client_command(cmd_topology))

    actions = command_group(
        sub, "property", "set or remove an instance property of the node asked", cmd_property
    )
    setter = action_parser(actions, "set", "set KEY to VALUE (every peer sees it within a second)")
    setter.add_argument("key")
    setter.add_argument("value")
    action_parser(actions, "unset", "remove KEY").add_argument("key")


def cmd_topology(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh topology [--wide] [--watch]`."""
    if not args.watch:
        view = client.call(client.topology.GetTopology, topology_pb2.GetTopologyRequest()).view
        return respond(args, view, lambda: print_view(view, sys.stdout, wide=args.wide))
    stream = client.stream(client.topology.WatchTopology, topology_pb2.WatchTopologyRequest())
    try:
        for count, response in enumerate(_events(stream), start=1):
            print_event(response.event, args.json, sys.stdout, wide=args.wide)
            sys.stdout.flush()
            if args.events is not None and count >= args.events:
                break
    finally:
        stream.cancel()
    return EXIT_OK


def cmd_property(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh property set KEY VALUE` / `jobmesh property unset KEY`."""
    request = topology_pb2.SetInstancePropertiesRequest()
    if args.action == "set":
        request.set[args.key] = args.value
    else:
        request.remove.append(args.key)
    response = client.call(client.topology.SetInstanceProperties, request)
    rows = [(k, response.properties[k]) for k in sorted(response.properties)]
    return respond(args, response, lambda: print_table(rows, ("KEY", "VALUE"), sys.stdout))


def _events(stream: Any) -> Iterator[topology_pb2.WatchTopologyResponse]:
    try:
        yield from stream
    except grpc.RpcError as e:
        if e.code() is not grpc.StatusCode.CANCELLED:
            raise


def _ago(ts: Any, now: float) -> str:
    seconds = max(0.0, now - (ts.seconds + ts.nanos / 1e9))
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def view_rows(
    view: topology_pb2.TopologyView, now: float | None = None, wide: bool = False
) -> list[tuple[str, ...]]:
    """One table row per instance (`wide`: with every property as KEY=VALUE)."""
    now = time.time() if now is None else now
    rows: list[tuple[str, ...]] = []
    for i in view.instances:
        rows.append(
            (
                i.name + ("*" if i.local else ""),
                i.id,
                i.endpoints[0] if i.endpoints else "-",
                i.cluster or "-",
                "leader" if i.leader else "",
                topology_pb2.InstanceState.Name(i.state).removeprefix("INSTANCE_STATE_").lower(),
                i.properties.get(TOPICS_PROPERTY, "") or "-",
                "now" if i.local else _ago(i.last_heard, now),
                *((",".join(f"{k}={i.properties[k]}" for k in sorted(i.properties)) or "-",) if wide else ()),
            )
        )
    return rows


def print_view(view: topology_pb2.TopologyView, out: TextIO, wide: bool = False) -> None:
    """The view as a table (`wide`: with the instance properties) and a one-line summary."""
    print_table(view_rows(view, wide=wide), (*HEADER, "PROPERTIES") if wide else HEADER, out)
    leaders = ", ".join(f"{c.cluster or 'default'}: {_name(view, c.leader_id)}" for c in view.clusters)
    state = "current" if view.current else "changing"
    out.write(
        f"view {view.version} ({view.membership_digest}), {len(view.instances)} instances, "
        f"leader {leaders}, {state}\n"
    )


def _name(view: topology_pb2.TopologyView, instance_id: str) -> str:
    for i in view.instances:
        if i.id == instance_id:
            return i.name
    return instance_id


def print_event(event: topology_pb2.TopologyEvent, as_json: bool, out: TextIO, wide: bool = False) -> None:
    """One event: a JSON line, or a headline (with the changes) and the new view's table."""
    if as_json:
        render.print_json_line(render.to_json(event), out)
        return
    kind = topology_pb2.TopologyEventType.Name(event.type).replace("TOPOLOGY_EVENT_TYPE_", "")
    kind = kind if kind == "PROPERTIES_CHANGED" else f"TOPOLOGY_{kind}"
    when = datetime.fromtimestamp(event.time.seconds + event.time.nanos / 1e9, UTC).strftime("%H:%M:%S.%f")[
        :-3
    ]
    old = {i.id: i for i in event.old_view.instances} if event.HasField("old_view") else {}
    new = {i.id: i for i in event.new_view.instances} if event.HasField("new_view") else {}
    changes = []
    if event.HasField("old_view") and event.HasField("new_view"):
        changes += [f"+{new[i].name}" for i in new if i not in old]
        changes += [f"-{old[i].name}" for i in old if i not in new]
        changes += [
            f"~{new[i].name}" for i in new if i in old and dict(new[i].properties) != dict(old[i].properties)
        ]
    versions = " -> ".join(
        str(v.version) for v in (event.old_view, event.new_view) if v.ByteSize() and v.instances
    )
    out.write(f"{when} {kind} view {versions} {' '.join(changes)}".rstrip() + "\n")
    if event.HasField("new_view"):
        print_view(event.new_view, out, wide)
