"""`jobmesh workers`: the remote workers connected to the node asked."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobmesh.v1 import workers_pb2

from node.cli import paging, render
from node.cli.common import EXIT_OK, client_command, client_parser
from node.client import JobmeshClient

HEADER = ("WORKER", "NAME", "TOPICS", "CONCURRENCY", "IN FLIGHT")


def add_parser(sub: Any) -> None:
    """Register `workers`."""
    p = client_parser(sub, "workers", "list the remote workers connected to the node")
    paging.add_paging_options(p)
    p.set_defaults(handler=client_command(cmd_workers))


def cmd_workers(args: argparse.Namespace, client: JobmeshClient) -> int:
    """`jobmesh workers`."""
    listing = paging.fetch(
        client, client.workers.ListWorkers, workers_pb2.ListWorkersRequest(), "workers", args
    )
    if args.json:
        render.print_json(listing.to_json(), sys.stdout)
        return EXIT_OK
    rows = [
        (w.worker_id, w.name, ",".join(w.topics), str(w.concurrency), str(w.in_flight)) for w in listing.items
    ]
    render.print_table(rows, HEADER, sys.stdout)
    paging.print_more_hint(listing, sys.stderr)
    return EXIT_OK
