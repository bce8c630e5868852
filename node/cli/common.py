"""What every client command shares: the connection options, connecting, and exit codes.

A client command is `body(args, client) -> int` wrapped by `client_command`: it connects once
(waiting up to --timeout for a node that is still starting), runs the body, and turns every
error into one line on stderr and the exit code of `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from node.cli import render
from node.client import JobmeshClient, RpcError
from node.config import DEFAULT_PORT
from node.errors import FailedPrecondition, InvalidArgument, NotFound
from node.instance import RUN_FILE
from node.transport import client_transport

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_PRECONDITION = 5
EXIT_TIMEOUT = 6
EXIT_DENIED = 7
EXIT_DAMAGED = 8
EXIT_INTERNAL = 70
EXIT_CONFIG = 78  # EX_CONFIG, from `jobmesh run`
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what `seq 1000000 | head` reports too

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_JOB_FAILED, "the awaited job ended without success"),
    (EXIT_USAGE, "bad usage or invalid argument (including an unparsable --node)"),
    (EXIT_NOT_FOUND, "not found: job, queue, schedule or instance"),
    (EXIT_UNAVAILABLE, "no node answered within --timeout"),
    (EXIT_PRECONDITION, "the state does not allow that (e.g. retry of a job that is not finished)"),
    (EXIT_TIMEOUT, "timed out waiting for a job (--wait-timeout)"),
    (EXIT_DENIED, "not authenticated or not allowed"),
    (EXIT_DAMAGED, "stored data is damaged (DATA_LOSS; `jobmesh check` found damage)"),
    (EXIT_INTERNAL, "unexpected error from the node"),
    (EXIT_CONFIG, "configuration error (`jobmesh run`)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_PIPE_CLOSED, "the reader of the output went away (e.g. `| head`); nothing is printed"),
)
"""Every exit code of `jobmesh` with its meaning (the --help epilog and the README show it)."""

# The one mapping from a node's gRPC status to an exit code.
EXIT_BY_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_USAGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_PRECONDITION,
    grpc.StatusCode.ABORTED: EXIT_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.DATA_LOSS: EXIT_DAMAGED,
}

DEFAULT_TIMEOUT_S = 10.0
# The RpcError.method of a failure to connect at all.
_CONNECT = "connect"
# How long to wait silently before saying that the node is not answering yet.
_QUIET_WAIT_S = 1.0
_ADDRESS = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})")


Body = Callable[[argparse.Namespace, JobmeshClient], int]
Handler = Callable[[argparse.Namespace, dict[str, str]], int]


def epilog() -> str:
    """The exit-code table for --help."""
    lines = ["exit codes:"] + [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES]
    return "\n".join(lines)


def parse_address(text: str, where: str = "--node") -> str:
    """`HOST:PORT` or `[IPv6]:PORT`, checked; InvalidArgument names `where` and the fix."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None or not 1 <= int(match.group("port")) <= 65535:
        raise InvalidArgument(f"{where} {text!r} is not HOST:PORT; write e.g. 127.0.0.1:{DEFAULT_PORT}")
    return text.strip()


def _address_type(text: str) -> str:
    try:
        return parse_address(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--node ")) from e


def _seconds_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from e
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give more than 0 seconds")
    return value


def connection_options() -> argparse.ArgumentParser:
    """The parent parser of every client command: where the node is and how long to wait for it."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--node",
        metavar="HOST:PORT",
        type=_address_type,
        help=f"node to talk to (default: $JOBMESH_NODE, ./.jobmesh/node.json, 127.0.0.1:{DEFAULT_PORT})",
    )
    group.add_argument(
        "--timeout",
        type=_seconds_type,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the node, also while it is still starting (default {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--json", action="store_true", help="print JSON (streams: one object per line); see README"
    )
    add_token_argument(group)
    return parent


def add_token_argument(options: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The `--token` option of every command that talks to a node."""
    options.add_argument(
        "--token",
        help="bearer token (default: $JOBMESH_TOKEN, the profile, the local data dir's admin token)",
    )


CONNECTION = connection_options()
"""Shared by every client subcommand (`parents=[CONNECTION]`), so each takes the same options."""


def client_parser(sub: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser that takes the connection options."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=kwargs.pop("description", help_text), parents=[CONNECTION], **kwargs
    )
    return parser


def command_group(sub: Any, name: str, help_text: str, body: Body) -> Any:
    """A subcommand with actions (`jobmesh NAME ACTION ...`) run by `body`; returns the actions,
    to add with `action_parser`. Only the actions take the connection options, so every option
    goes after the action (`jobmesh schedule list --node X`)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=client_command(body))
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


def action_parser(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """One action of a `command_group`, with the connection options."""
    parser: argparse.ArgumentParser = actions.add_parser(
        name, help=help_text, description=help_text, parents=[CONNECTION]
    )
    return parser


def node_address(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """--node, else $JOBMESH_NODE, else the node.json of ./.jobmesh ($JOBMESH_DATA_DIR), else :7710."""
    if getattr(args, "node", None):
        return str(args.node)
    if environ.get("JOBMESH_NODE"):
        return parse_address(environ["JOBMESH_NODE"], "$JOBMESH_NODE")
    run_file = Path(environ.get("JOBMESH_DATA_DIR", ".jobmesh")) / RUN_FILE
    try:
        return str(json.loads(run_file.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return f"127.0.0.1:{DEFAULT_PORT}"


def client_command(body: Body) -> Handler:
    """Make `body(args, client) -> int` a subcommand handler: connect, run, map errors to exit codes."""

    def handler(args: argparse.Namespace, environ: dict[str, str]) -> int:
        return run_client(args, environ, body)

    handler.__doc__ = body.__doc__
    return handler


def run_client(args: argparse.Namespace, environ: dict[str, str], body: Body) -> int:
    """Connect to the node, run `body`, and turn errors into one line on stderr and an exit code."""
    command = _command_name(args)
    try:
        address = node_address(args, environ)
    except InvalidArgument as e:
        return fail(command, str(e), EXIT_USAGE)
    try:
        with JobmeshClient(
            address, timeout_s=args.timeout, transport=client_transport(environ, args.token)
        ) as client:
            _wait_ready(client, command)
            return int(body(args, client))
    except InvalidArgument as e:
        return fail(command, str(e), EXIT_USAGE)
    except NotFound as e:
        return fail(command, str(e), EXIT_NOT_FOUND)
    except FailedPrecondition as e:
        return fail(command, str(e), EXIT_PRECONDITION)
    except TimeoutError as e:
        return fail(command, str(e), EXIT_TIMEOUT)
    except grpc.RpcError as e:  # from a stream
        return report(command, address, args.timeout, RpcError.wrap(e, command))
    except RpcError as e:
        return report(command, address, args.timeout, e)


def _wait_ready(client: JobmeshClient, command: str) -> None:
    """Wait for the node (say so after a second); RpcError UNAVAILABLE at the --timeout deadline."""
    if client.wait_ready(min(_QUIET_WAIT_S, client.timeout_s)):
        return
    if client.timeout_s <= _QUIET_WAIT_S:
        raise RpcError(grpc.StatusCode.UNAVAILABLE, "no connection", _CONNECT)
    print(
        f"jobmesh {command}: waiting up to {client.timeout_s:g}s for a node at {client.target}...",
        file=sys.stderr,
    )
    if not client.wait_ready(max(0.0, client.timeout_s - _QUIET_WAIT_S)):
        raise RpcError(grpc.StatusCode.UNAVAILABLE, "no connection", _CONNECT)


def report(command: str, address: str, timeout_s: float, e: RpcError) -> int:
    """Print an RPC error for people (one line) and return its exit code."""
    code = EXIT_BY_STATUS.get(e.code, EXIT_INTERNAL)
    if e.method == _CONNECT:
        text = (
            f"no node answered at {address} within {timeout_s:g}s; "
            "start one (scripts/run) or point --node or $JOBMESH_NODE at a running node"
        )
    elif e.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        text = f"the node at {address} did not answer within {timeout_s:g}s; try a larger --timeout"
    elif e.code is grpc.StatusCode.UNAVAILABLE:  # calls wait for the connection: this is the node's answer
        text = f"the node at {address} is unavailable: {e.details or 'the connection broke'}"
    elif code == EXIT_INTERNAL:
        text = f"the node failed: {e.code.name}: {e.details}"
    else:
        text = e.details or e.code.name
    return fail(command, text, code)


def respond(
    args: argparse.Namespace, result: Message | dict[str, Any], text: str | Callable[[], None]
) -> int:
    """Print `result` as JSON with --json, else `text` (or what `text()` prints); returns EXIT_OK."""
    if args.json:
        render.print_json(result if isinstance(result, dict) else render.to_json(result), sys.stdout)
    elif callable(text):
        text()
    else:
        print(text)
    return EXIT_OK


def fail(command: str, text: str, code: int) -> int:
    """Print `jobmesh COMMAND: TEXT` on one line of stderr; return `code`."""
    one_line = " ".join(text.split())
    print(f"jobmesh {command}: {one_line}", file=sys.stderr)
    return code


def _command_name(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) and action else str(args.command)


def read_file(path: Path | str, what: str) -> bytes:
    """The bytes of `path` (`-`: stdin); InvalidArgument with a one-line reason otherwise."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise InvalidArgument(f"cannot read {what} {path}: no such file") from e
    except IsADirectoryError as e:
        raise InvalidArgument(f"cannot read {what} {path}: it is a directory") from e
    except PermissionError as e:
        raise InvalidArgument(f"cannot read {what} {path}: permission denied") from e
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {(e.strerror or str(e)).lower()}") from e


def write_file(path: Path, data: bytes, what: str) -> None:
    """Write `data` to `path`; InvalidArgument with a one-line reason when that fails."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise InvalidArgument(f"cannot write {what} {path}: {(e.strerror or str(e)).lower()}") from e
