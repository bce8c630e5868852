"""`jobmesh workers`: the remote workers connected to the node asked."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from jobmesh.v1 import workers_pb2

from node.cli import paging, render
from node.cli.common import client_command, client_parser, respond
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
    return respond(args, listing.to_json(), lambda: paging.print_listing(listing, print_workers))


def print_workers(workers: list[workers_pb2.ConnectedWorker], out: TextIO) -> None:
    """Workers as a table."""
    rows = [(w.worker_id, w.name, ",".join(w.topics), str(w.concurrency), str(w.in_flight)) for w in workers]
    render.print_table(rows, HEADER, out)
