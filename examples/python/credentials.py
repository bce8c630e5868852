"""How the Python examples reach a node: TLS with the cluster CA, a client certificate, a token.

A node serves TLS only (unless it runs with `--insecure`) and asks every caller for a
certificate of its cluster CA; rights come from a bearer token sent with every call (or from
a client certificate made with scopes). On the node's machine:

    jobmesh cluster client --name laptop --out bundle/      # ca.pem, client.pem, client.key
    jobmesh token create --scope submit --topics 'demo/**' > submit.token

then pass `--bundle bundle/ --token-file submit.token` (or `--token TOKEN`). Needs only `grpcio`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

SERVER_NAME = "node.jobmesh"
"""The DNS name every node certificate carries; nodes are dialed by address, so TLS checks this."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--bundle, --token, --token-file, --insecure."""
    group = parser.add_argument_group("credentials")
    group.add_argument(
        "--bundle",
        type=Path,
        help="directory of `jobmesh cluster client --out`: ca.pem, client.pem, client.key",
    )
    group.add_argument("--token", default="", help="bearer token (`jobmesh token create`)")
    group.add_argument("--token-file", type=Path, help="file holding the bearer token")
    group.add_argument("--insecure", action="store_true", help="plaintext, for a node run with --insecure")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `args.node` with the credentials the arguments name."""
    if args.insecure:
        return grpc.insecure_channel(args.node)
    if args.bundle is None:
        raise SystemExit("give --bundle DIR (from `jobmesh cluster client --out DIR`), or --insecure")
    bundle: Path = args.bundle
    tls = grpc.ssl_channel_credentials(
        root_certificates=(bundle / "ca.pem").read_bytes(),
        private_key=(bundle / "client.key").read_bytes(),
        certificate_chain=(bundle / "client.pem").read_bytes(),
    )
    token = args.token or (args.token_file.read_text().strip() if args.token_file else "")
    if token:  # sent as `authorization: Bearer <token>` on every call
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(args.node, tls, options=[("grpc.ssl_target_name_override", SERVER_NAME)])
