"""The `jobmesh` command line: `run` a node, or talk to one (`add`, `jobs`, `job`, `topology`, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from node.cli import (
    add,
    audit,
    check,
    cluster,
    commands,
    common,
    manage,
    queues,
    run,
    schedules,
    topics,
    topology,
    workers,
)


def version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("jobmesh")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="jobmesh",
        description="Jobmesh: broker-less distributed job handling. `jobmesh run` starts a node; "
        "the other commands talk to a running node (every one takes --node, --timeout and --json "
        "after its name and action).",
        epilog=common.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jobmesh {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    add.add_parser(sub)
    commands.add_parsers(sub)
    queues.add_parsers(sub)
    schedules.add_parser(sub)
    manage.add_parsers(sub)
    workers.add_parser(sub)
    topology.add_parsers(sub)
    topics.add_parser(sub)
    cluster.add_parsers(sub)
    check.add_parser(sub)
    audit.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `jobmesh` and `python -m node`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        code = int(args.handler(args, dict(os.environ)))
        sys.stdout.flush()  # here, so a closed pipe is noticed inside the handler below
        return code
    except KeyboardInterrupt:
        return common.EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`jobmesh jobs | head`): end quietly. Point stdout at /dev/null
        # so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return common.EXIT_PIPE_CLOSED
