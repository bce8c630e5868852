"""`jobmesh run`: start a node in the foreground until SIGINT/SIGTERM (or `--detach`ed)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from node.cli.common import EXIT_CONFIG
from node.cli.detach import start_detached
from node.config import NodeConfig, load_config, unknown_env_names
from node.errors import (
    AddressInUse,
    ConfigError,
    DataDirInUse,
    DataDirUnusable,
    IdentityMismatch,
    JobmeshError,
    JournalError,
)
from node.node import Node

log = logging.getLogger("jobmesh")

EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: the port or the data dir is taken by another process; try later
# Start-up refusals, each one line on stderr and its own exit code (sysexits.h); anything else: 1.
START_REFUSALS: tuple[tuple[type[JobmeshError], int], ...] = (
    (IdentityMismatch, 65),  # EX_DATAERR: journal missing/empty/foreign for this data dir's identity
    (DataDirUnusable, 73),  # EX_CANTCREAT: the data dir is a file, not creatable, read-only
    (DataDirInUse, EXIT_TEMPFAIL),
    (JournalError, 74),  # EX_IOERR: the journal cannot be opened (damaged, unreadable)
)


def add_parser(sub: Any) -> None:
    """Register the `run` subcommand."""
    p = sub.add_parser(
        "run",
        help="start a node",
        description="Start a node. Settings come from --config (TOML), then JOBMESH_* environment "
        "variables, then these flags.",
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--data-dir", type=Path, help="data directory (default ./.jobmesh)")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 7710; 0 picks a free one)")
    p.add_argument("--name", help="instance name (default HOSTNAME-PORT)")
    p.add_argument(
        "--consumer",
        action="append",
        default=[],
        metavar="PATTERNS=MODULE:CALLABLE",
        help="load a consumer, e.g. 'images/**=myapp.jobs:resize' (repeatable)",
    )
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer to join where mDNS cannot reach (repeatable; discovery.seeds)",
    )
    p.add_argument("--cluster", help="cluster label of this instance (default: none; discovery.cluster)")
    p.add_argument(
        "--no-mdns",
        dest="mdns",
        action="store_false",
        default=None,
        help="do not advertise or browse by mDNS (discovery.mdns=false)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve plaintext without authentication (security.insecure; warned about at start)",
    )
    p.add_argument(
        "--join",
        metavar="TOKEN",
        help="join the cluster of --seed with a token from `jobmesh cluster token create` (security.join)",
    )
    p.add_argument("--max-parallel", type=int, help="jobs run at once (default 15)")
    p.add_argument("--durability", choices=["normal", "full"], help="journal durability (default normal)")
    p.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by dotted key (repeatable)",
    )
    p.add_argument(
        "--test-preset", action="store_true", help="start from test timings (short delays, loopback)"
    )
    p.add_argument(
        "--reset-journal",
        action="store_true",
        help="start with an empty journal, keeping the instance id; the old one is moved aside, not deleted",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background: return once the node serves, printing its address, PID, "
        "data dir and log file (DATA_DIR/node.log)",
    )
    p.set_defaults(handler=run_command)


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> NodeConfig:
    """Build the config: file, then environment, then flags."""
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. jobs.max_parallel=4")
        overrides[key.strip()] = value
    flag_settings = {
        "data_dir": args.data_dir,
        "server.host": args.host,
        "server.port": args.port,
        "name": args.name,
        "jobs.max_parallel": args.max_parallel,
        "journal.durability": args.durability,
        "log_level": args.log_level,
        "discovery.cluster": args.cluster,
        "discovery.mdns": args.mdns,
        "discovery.seeds": ",".join(args.seed) or None,
        "security.insecure": args.insecure,
        "security.join": args.join,
    }
    overrides.update({k: v for k, v in flag_settings.items() if v is not None})
    if args.consumer:
        overrides["consumers"] = ";".join(args.consumer)
    base = NodeConfig.for_tests(Path(".jobmesh")) if args.test_preset else None
    return load_config(args.config, environ, overrides, base=base)


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps and levels."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


async def serve(config: NodeConfig, reset_journal: bool = False) -> None:
    """Run a node until SIGINT or SIGTERM, then shut it down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config, reset_journal=reset_journal) as node:
        print(banner(node), file=sys.stderr, flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        refused = asyncio.ensure_future(node.topology.wait_failure())
        await asyncio.wait({stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        refused.cancel()
        if refused.done() and not refused.cancelled():
            raise refused.result()  # another live node owns this instance id: stop, exit 1
        log.info("shutting down (grace %.1fs)", config.server.shutdown_grace_s)


def banner(node: Node) -> str:
    """The start-up line: where the node is bound, what clients here dial, what peers are told."""
    name = node.identity.name if node.identity else ""
    advertised = ", ".join(node.advertised_addresses) or "nothing"
    return (
        f"jobmesh node {name} serving: bound to {node.bound_address} (clients on this host dial "
        f"{node.address}), advertised to peers as {advertised}"
    )


def run_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh run`."""
    try:
        # Consumers named as module:callable are imported relative to the working directory.
        sys.path.insert(0, os.getcwd())
        config = config_from_args(args, environ)
    except ConfigError as e:
        print(f"jobmesh run: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.detach:
        return start_detached(config.data_dir, lambda: run_node(config, environ, args.reset_journal))
    return run_node(config, environ, args.reset_journal)


def run_node(config: NodeConfig, environ: dict[str, str], reset_journal: bool = False) -> int:
    """Serve until stopped; returns the exit code (and on a clean stop exits the process)."""
    try:
        configure_logging(config.log_level)
        for warning in unknown_env_names(environ):
            log.warning(warning)
        asyncio.run(serve(config, reset_journal))
    except AddressInUse as e:
        print(f"jobmesh run: {e}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except ConfigError as e:
        print(f"jobmesh run: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except JobmeshError as e:
        print(f"jobmesh run: {e}", file=sys.stderr)
        return next((code for kind, code in START_REFUSALS if isinstance(e, kind)), 1)
    log.info("stopped")
    logging.shutdown()
    # Consumer threads that ignore is_stopped() must not keep a stopped node alive;
    # their jobs were re-queued already.
    sys.stdout.flush()
    os._exit(0)
