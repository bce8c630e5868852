"""The one place gRPC servers and channels are created, so transport settings
(message limits, keepalive, later TLS and auth) apply everywhere at once."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import grpc

from node.errors import AddressInUse, ConfigError

# Room for the largest payload plus the job around it.
_ENVELOPE_BYTES = 4 * 1024 * 1024


def _options(max_payload_bytes: int) -> list[tuple[str, int]]:
    limit = max_payload_bytes + _ENVELOPE_BYTES
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def create_server(
    max_payload_bytes: int, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> grpc.aio.Server:
    """A new (not yet started) asyncio gRPC server, its calls passing through `interceptors`."""
    return grpc.aio.server(options=_options(max_payload_bytes), interceptors=list(interceptors))


def _refuse_if_in_use(host: str, port: int) -> None:
    """AddressInUse if something listens on host:port already.

    Checked with a plain socket first: gRPC only says "failed to bind" (and logs a raw line),
    which does not tell a port in use from an address that is not on this machine.
    """
    if port == 0:
        return
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is fine
        try:
            probe.bind((bare, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AddressInUse(f"port {port} on {host} is in use (another node?); choose --port") from e
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from e


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Listen on host:port (port 0: any free port); returns the port actually bound."""
    _refuse_if_in_use(host, port)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {address}: {e}") from e
    if bound == 0:
        raise ConfigError(f"cannot listen on {address}: the address is in use or not available here")
    return int(bound)


def create_channel(target: str, max_payload_bytes: int = 64 * 1024 * 1024) -> grpc.aio.Channel:
    """A new asyncio channel to `target` (`host:port`)."""
    return grpc.aio.insecure_channel(target, options=_options(max_payload_bytes))


def create_sync_channel(target: str, max_payload_bytes: int = 64 * 1024 * 1024) -> grpc.Channel:
    """A new blocking channel to `target` (for the CLI and simple clients)."""
    return grpc.insecure_channel(target, options=_options(max_payload_bytes))


# Membership messages are small; a whole member table with properties stays far below this.
PEER_MESSAGE_BYTES = 16 * 1024 * 1024


def create_peer_channel(target: str, reconnect_backoff_ms: int) -> grpc.aio.Channel:
    """A new asyncio channel to a peer node, for the membership protocol.

    gRPC's default reconnect backoff grows to two minutes; a peer that restarts, or a
    partition that heals, must be reachable again within a probe or two, so the backoff
    is capped at `reconnect_backoff_ms`. No transparent retries: a probe that fails must
    fail within its own deadline.
    """
    options: list[tuple[str, int]] = [
        *_options(PEER_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", reconnect_backoff_ms),
        ("grpc.min_reconnect_backoff_ms", reconnect_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
        ("grpc.enable_retries", 0),
    ]
    return grpc.aio.insecure_channel(target, options=options)
