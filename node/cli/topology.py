"""`jobmesh topology`: the topology view of a running node, once or live (`--watch`).

Exit codes: 0 success; 4 node unreachable; 70 unexpected error from the node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from node.cli.cluster import add_token_argument
from node.cli.commands import EXIT_INTERNAL, EXIT_OK, EXIT_UNAVAILABLE, node_address
from node.cli.render import print_table
from node.discovery.properties import TOPICS_PROPERTY
from node.transport import client_transport

HEADER = ("NAME", "ID", "ADDRESS", "CLUSTER", "LEADER", "STATE", "TOPICS", "LAST HEARD")


def add_parser(sub: Any) -> None:
    """Register the `topology` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "topology",
        help="show the topology view of a node",
        description="Show the instances a node sees (* marks the node answering), their clusters, "
        "leaders, states, consumed topics and when it last heard from them. --watch follows the "
        "topology events (TOPOLOGY_INIT, TOPOLOGY_CHANGING, TOPOLOGY_CHANGED, PROPERTIES_CHANGED).",
    )
    p.add_argument(
        "--node",
        metavar="HOST:PORT",
        help="node to ask (default: $JOBMESH_NODE, ./.jobmesh/node.json, :7710)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node (default 30)")
    add_token_argument(p)
    p.add_argument("--watch", action="store_true", help="print every topology event until interrupted")
    p.add_argument("--events", type=int, metavar="N", help="with --watch: stop after N events")
    p.add_argument("--json", action="store_true", help="print JSON (with --watch: one event per line)")
    p.set_defaults(handler=cmd_topology)


def cmd_topology(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh topology [--watch]`."""
    address = node_address(args, environ)
    channel = client_transport(environ, args.token).create_sync_channel(address)
    stub = topology_pb2_grpc.TopologyServiceStub(channel)
    try:
        if args.watch:
            stream = stub.WatchTopology(topology_pb2.WatchTopologyRequest())
            for count, response in enumerate(_events(stream), start=1):
                print_event(response.event, args.json, sys.stdout)
                sys.stdout.flush()
                if args.events is not None and count >= args.events:
                    stream.cancel()
                    break
        else:
            view = stub.GetTopology(topology_pb2.GetTopologyRequest(), timeout=args.timeout).view
            if args.json:
                sys.stdout.write(json.dumps(view_to_dict(view), indent=2) + "\n")
            else:
                print_view(view, sys.stdout)
        return EXIT_OK
    except grpc.RpcError as e:
        code = e.code()
        details = e.details()
        if code is grpc.StatusCode.UNAVAILABLE or code is grpc.StatusCode.DEADLINE_EXCEEDED:
            print(f"jobmesh topology: no node reachable at {address} ({details})", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"jobmesh topology: {details}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        channel.close()


def _events(stream: Any) -> Iterator[topology_pb2.WatchTopologyResponse]:
    try:
        yield from stream
    except grpc.RpcError as e:
        if e.code() is not grpc.StatusCode.CANCELLED:
            raise


def _ago(ts: Any, now: float) -> str:
    seconds = max(0.0, now - (ts.seconds + ts.nanos / 1e9))
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def view_rows(view: topology_pb2.TopologyView, now: float | None = None) -> list[tuple[str, ...]]:
    """One table row per instance."""
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
            )
        )
    return rows


def print_view(view: topology_pb2.TopologyView, out: TextIO) -> None:
    """The view as a table with a one-line summary."""
    print_table(view_rows(view), HEADER, out)
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


def view_to_dict(view: topology_pb2.TopologyView) -> dict[str, Any]:
    """The JSON-ready form of a view (proto field names, enums by name)."""
    return MessageToDict(view, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_event(event: topology_pb2.TopologyEvent, as_json: bool, out: TextIO) -> None:
    """One event: a JSON line, or a headline (with the changes) and the new view's table."""
    kind = topology_pb2.TopologyEventType.Name(event.type).replace("TOPOLOGY_EVENT_TYPE_", "")
    kind = kind if kind == "PROPERTIES_CHANGED" else f"TOPOLOGY_{kind}"
    if as_json:
        data = MessageToDict(event, preserving_proto_field_name=True)
        data["type"] = kind
        out.write(json.dumps(data) + "\n")
        return
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
        print_view(event.new_view, out)
