"""A client as one in another language makes it: gRPC's default options (no raised message
limits), TLS with a node's client credentials and its admin token."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from node.security import bearer, credentials, pki

from .launcher import NodeProcess

DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
"""gRPC's default receive limit (the C core's, Go's, Java's and grpc-js's alike)."""


def plain_client(node: NodeProcess, options: Sequence[tuple[str, int]] = ()) -> grpc.Channel:
    """A client channel with gRPC's defaults (none of the node package's limits) plus `options`."""
    found = credentials.find(node.cli_environ(), None)
    assert found.tls is not None
    assert found.token
    tls = grpc.ssl_channel_credentials(found.tls.ca, found.tls.key, found.tls.chain)
    channel = grpc.secure_channel(
        node.address, tls, options=[("grpc.ssl_target_name_override", pki.SERVER_NAME), *options]
    )
    # The token as call metadata through an interceptor (call credentials would start a thread pool)
    return grpc.intercept_channel(channel, bearer.SyncBearer(found.token))
