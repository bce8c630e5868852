"""`jobmesh run`: start a node in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from node.config import NodeConfig, load_config
from node.errors import ConfigError, JobmeshError
from node.node import Node

log = logging.getLogger("jobmesh")

EXIT_CONFIG = 78  # EX_CONFIG


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


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGINT or SIGTERM, then shut it down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config) as node:
        print(
            f"jobmesh node {node.identity.name if node.identity else ''} listening on {node.address}",
            file=sys.stderr,
        )
        stopping = asyncio.ensure_future(stop.wait())
        refused = asyncio.ensure_future(node.topology.wait_failure())
        await asyncio.wait({stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        refused.cancel()
        if refused.done() and not refused.cancelled():
            raise refused.result()  # another live node owns this instance id: stop, exit 1
        log.info("shutting down (grace %.1fs)", config.server.shutdown_grace_s)


def run_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh run`."""
    try:
        # Consumers named as module:callable are imported relative to the working directory.
        sys.path.insert(0, os.getcwd())
        config = config_from_args(args, environ)
        configure_logging(config.log_level)
        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"jobmesh run: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except JobmeshError as e:
        print(f"jobmesh run: {e}", file=sys.stderr)
        return 1
    log.info("stopped")
    logging.shutdown()
    # Consumer threads that ignore is_stopped() must not keep a stopped node alive;
    # their jobs were re-queued already.
    sys.stdout.flush()
    os._exit(0)
