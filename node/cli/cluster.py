"""`jobmesh cluster init|status|token create` and `jobmesh token create|list|revoke`.

These work on a data dir (`--data-dir`, `$JOBMESH_DATA_DIR`, default `./.jobmesh`) on the machine
of an admitting node (one holding the CA key); a running node picks up revocations at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from jobmesh.v1 import topology_pb2, topology_pb2_grpc

from node.errors import JobmeshError
from node.instance import RUN_FILE
from node.security import pki
from node.security.cluster import ClusterFiles, write_private
from node.security.join import JoinTokens
from node.security.registry import TokenRegistry
from node.topics import TopicPattern
from node.transport import client_transport
from node.trust import ADMITS_PROPERTY

EXIT_OK = 0
EXIT_FAILED = 1

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `30d` -> seconds (argparse type)."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:])
    try:
        value = float(text[:-1] if unit else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 30d)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration must be >= 0")
    return value * (unit or 1)


def _data_dir_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--data-dir", type=Path, help="data directory (default $JOBMESH_DATA_DIR or ./.jobmesh)")
    return p


def add_parsers(sub: Any) -> None:
    """Register `cluster` and `token`."""
    cluster = sub.add_parser("cluster", help="the cluster this node belongs to (CA, certificates, join)")
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    _data_dir_parser(actions, "init", "make a new cluster CA and admin token in the data dir").set_defaults(
        handler=cmd_init
    )
    _data_dir_parser(actions, "status", "CA fingerprint, this node's certificate, who admits").set_defaults(
        handler=cmd_status
    )
    p = _data_dir_parser(actions, "client", "write a client certificate bundle for another machine")
    p.add_argument("--name", required=True, help="who the certificate is for (logs)")
    p.add_argument("--out", type=Path, required=True, help="directory for ca.pem, client.pem, client.key")
    p.add_argument("--days", type=float, default=365.0, help="validity (default 365)")
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=["read", "submit", "work", "admin"],
        help="rights the certificate carries itself (then no token is needed); repeatable",
    )
    p.add_argument("--topics", nargs="+", default=[], metavar="PATTERN", help="limit submit/work to these")
    p.set_defaults(handler=cmd_client_bundle)
    join = actions.add_parser("token", help="join tokens").add_subparsers(dest="what", required=True)
    p = _data_dir_parser(join, "create", "print a join token for a new node")
    p.add_argument("--ttl", type=parse_duration, default=3600.0, help="lifetime (default 1h)")
    p.add_argument("--uses", type=int, default=1, help="how many nodes may join with it (default 1)")
    p.set_defaults(handler=cmd_join_token)

    token = sub.add_parser("token", help="bearer tokens for clients and workers")
    what = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _data_dir_parser(what, "create", "print a new bearer token")
    p.add_argument("--scope", action="append", required=True, choices=["read", "submit", "work", "admin"])
    p.add_argument("--topics", nargs="+", default=[], metavar="PATTERN", help="limit submit/work to these")
    p.add_argument("--ttl", type=parse_duration, default=0.0, help="lifetime (default: no expiry)")
    p.add_argument("--name", default="", help="a name for lists and logs")
    p.set_defaults(handler=cmd_token_create)
    _data_dir_parser(what, "list", "the tokens made here (never the tokens themselves)").set_defaults(
        handler=cmd_token_list
    )
    p = _data_dir_parser(what, "revoke", "revoke a token by id")
    p.add_argument("id")
    p.set_defaults(handler=cmd_token_revoke)


def _files(args: argparse.Namespace, environ: dict[str, str]) -> ClusterFiles:
    return ClusterFiles(args.data_dir or Path(environ.get("JOBMESH_DATA_DIR", ".jobmesh")))


def _fail(command: str, error: Exception) -> int:
    print(f"jobmesh {command}: {error}", file=sys.stderr)
    return EXIT_FAILED


def cmd_init(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh cluster init`."""
    files = _files(args, environ)
    try:
        ca = files.init()
    except JobmeshError as e:
        return _fail("cluster init", e)
    print(f"cluster CA {pki.fingerprint(ca)}\nwritten to {files.dir} (keys mode 0600)")
    return EXIT_OK


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_status(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh cluster status`."""
    files = _files(args, environ)
    if not files.has_ca():
        print(f"no cluster in {files.dir}: a node makes one at its first start (or `jobmesh cluster init`)")
        return EXIT_FAILED
    ca = files.read_ca()
    print(f"cluster CA     {pki.fingerprint(ca)} (short {pki.short_fingerprint(ca)})")
    print(f"admits others  {'yes (holds the CA key)' if files.admits() else 'no'}")
    cert = files.read_node_cert()
    if cert is None:
        print("node cert      none yet (issued at the node's first start)")
    else:
        identity = pki.identity_of(cert)
        print(f"node cert      instance {identity.instance_id}, expires {_when(pki.expires_at(cert))}")
    admitting = _admitting_nodes(files, environ)
    if admitting is not None:
        print(f"admitting      {', '.join(admitting) or 'none of the live nodes'}")
    return EXIT_OK


def _admitting_nodes(files: ClusterFiles, environ: dict[str, str]) -> list[str] | None:
    """Names of the live instances that hold the CA key, asked of the running node (None if it
    does not run or does not answer)."""
    try:
        address = str(json.loads((files.dir.parent / RUN_FILE).read_text())["address"])
    except (OSError, ValueError, KeyError):
        return None
    environ = {**environ, "JOBMESH_DATA_DIR": str(files.dir.parent)}
    with client_transport(environ).create_sync_channel(address) as channel:
        try:
            reply = topology_pb2_grpc.TopologyServiceStub(channel).GetTopology(
                topology_pb2.GetTopologyRequest(), timeout=5
            )
        except grpc.RpcError:
            return None
    admitting = [i for i in reply.view.instances if i.properties.get(ADMITS_PROPERTY) == "true"]
    return [f"{i.name} ({', '.join(i.endpoints[:1])})" for i in admitting]


def cmd_client_bundle(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh cluster client`: the TLS half of a remote client's credentials (the token is the other)."""
    files = _files(args, environ)
    if args.topics and not args.scope:
        return _fail("cluster client", JobmeshError("--topics limits a --scope; name one"))
    try:
        for pattern in args.topics:
            TopicPattern.parse(pattern)  # names the bad pattern
        key_pem, cert_pem = files.issue_client(args.name, args.days, tuple(args.scope), tuple(args.topics))
    except JobmeshError as e:
        return _fail("cluster client", e)
    serial = pki.identity_of(pki.load_cert(cert_pem)).serial
    if args.scope:
        TokenRegistry(files).note_action(
            "cluster client",
            f"certificate {args.name!r} serial {serial} scopes {','.join(sorted(args.scope))} "
            f"topics {','.join(args.topics) or '*'} days {args.days:g}",
        )
    out: Path = args.out
    write_private(out / "client.key", key_pem)
    write_private(out / "client.pem", cert_pem, 0o644)
    write_private(out / "ca.pem", files.ca_cert.read_bytes(), 0o644)
    print(f"wrote {out}/ca.pem, client.pem, client.key; in ~/.config/jobmesh/config.toml put:")
    print(
        f'ca = "{out.resolve()}/ca.pem"\ncert = "{out.resolve()}/client.pem"\nkey = "{out.resolve()}/client.key"'
    )
    if args.scope:
        print(f"# the certificate carries {', '.join(args.scope)}: no token needed")
        print(f"# its id (serial) is {serial}: `jobmesh token revoke {serial}` revokes it")
    else:
        print('token = "..."   # from `jobmesh token create`')
    return EXIT_OK


def cmd_join_token(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh cluster token create`."""
    try:
        print(JoinTokens(_files(args, environ)).create(args.ttl, args.uses))
    except JobmeshError as e:
        return _fail("cluster token create", e)
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh token create`."""
    try:
        registry = TokenRegistry(_files(args, environ))
        token, claims = registry.create(args.name, args.scope, args.topics, args.ttl)
        registry.note_action(
            "token create",
            f"id {claims.id} name {claims.name!r} scopes {','.join(sorted(claims.scopes))} "
            f"topics {','.join(claims.topics) or '*'} expires {claims.expires or 'never'}",
        )
    except JobmeshError as e:
        return _fail("token create", e)
    print(token)
    print(f"id {claims.id}: keep the token secret; it is shown only now", file=sys.stderr)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh token list`."""
    registry = TokenRegistry(_files(args, environ))
    revoked = registry.revoked()
    print(f"{'ID':<17} {'NAME':<16} {'SCOPES':<18} {'TOPICS':<20} STATE")
    for row in registry.issued():
        expires = float(str(row.get("expires", 0)))
        state = (
            "revoked" if row["id"] in revoked else "expired" if expires and expires < time.time() else "valid"
        )
        scopes = ",".join(map(str, row.get("scopes", [])))  # type: ignore[call-overload]
        topics = ",".join(map(str, row.get("topics", []))) or "*"  # type: ignore[call-overload]
        print(f"{row['id']!s:<17} {row.get('name', '')!s:<16} {scopes:<18} {topics:<20} {state}")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`jobmesh token revoke ID`."""
    registry = TokenRegistry(_files(args, environ))
    known = registry.revoke(args.id)
    registry.note_action("token revoke", f"id {args.id}" + ("" if known else " (not issued here)"))
    print(f"revoked {args.id}" + ("" if known else " (not issued on this node; revoked here anyway)"))
    return EXIT_OK
