"""`jobmesh audit`: the admin actions the node asked has recorded, newest first (admin only)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from jobmesh.v1 import audit_pb2

from node.cli import paging, render
from node.cli.common import client_command, client_parser, respond
from node.client import JobmeshClient

HEADER = ("TIME", "CALLER", "ACTION", "STATUS", "REQUEST")


def add_parser(sub: Any) -> None:
    """Register `audit`."""
    p = client_parser(sub, "audit", "list the admin actions the node recorded, with their callers")
    paging.add_paging_options(p)
    p.set_defaults(handler=client_command(cmd_audit))


def cmd_audit(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh audit`."""
    listing = paging.fetch(
        client, client.audit.ListAuditEntries, audit_pb2.ListAuditEntriesRequest(), "entries", args
    )
    return respond(args, listing.to_json(), lambda: paging.print_listing(listing, print_entries))


def print_entries(entries: list[audit_pb2.AuditEntry], out: TextIO) -> None:
    """Entries as a table (the request cut to fit a line)."""
    rows = [
        (
            render.format_time(e.time),
            e.caller,
            e.action.removeprefix("/jobmesh.v1."),
            e.status if not e.message else f"{e.status}: {e.message[:60]}",
            e.request[:80],
        )
        for e in entries
    ]
    render.print_table(rows, HEADER, out)
