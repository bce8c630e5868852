"""The `jobmesh` command line: `run` a node, or talk to one (`add`, `jobs`, `job`, `topology`, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from node.cli import cluster, commands, manage, run, topics, topology

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="jobmesh",
        description="Jobmesh: broker-less distributed job handling. `jobmesh run` starts a node; "
        "the other commands talk to a running node.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    commands.add_parsers(sub)
    topology.add_parser(sub)
    topics.add_parser(sub)
    manage.add_parsers(sub)
    cluster.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `jobmesh` and `python -m node`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    handler = args.handler
    try:
        return int(handler(args, dict(os.environ)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
