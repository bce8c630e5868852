"""The one place gRPC servers and channels are created: one `Transport` per node (or client)
holds the message limits, the keepalive policy, the TLS material and the caller's credentials,
so TLS, authentication and keepalive apply everywhere at once.

Keepalive: both sides ping every `interval_s` and drop a connection whose ping is not answered
within `timeout_s`, so a silently dead link is found within interval + timeout (3 s by default,
tests/test_dead_links.py). The server accepts
pings down to half the interval (without this, gRPC's default server policy answers a client that
pings more often than every five minutes with GOAWAY too_many_pings).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from node.errors import ConfigError, listen_error
from node.security import bearer, credentials, peercert, pki
from node.security.cluster import TlsMaterial

# Room for the largest payload plus the job around it.
_ENVELOPE_BYTES = 4 * 1024 * 1024
DEFAULT_PAYLOAD_BYTES = 64 * 1024 * 1024
# Membership messages are small; a whole member table with properties stays far below this.
PEER_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive: ping period and how long a ping may go unanswered."""

    interval_s: float = 1.0
    timeout_s: float = 2.0

    def client_options(self) -> list[tuple[str, int]]:
        """Channel options: ping every interval, also on idle connections."""
        return [
            ("grpc.keepalive_time_ms", int(self.interval_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        """Server options: ping clients too, and accept their pings down to half the interval.

        `permit_without_calls` stays 1 even though pinging idle connections costs (0.3-0.4 % of a
        core per node in a 30-node cluster, measured): on a server it also decides whether pings
        on a connection without calls are accepted, and at 0 each is a strike, the third ending
        the connection with GOAWAY too_many_pings (an older node, another language's stub)."""
        half = max(1, int(self.interval_s * 500))
        return [
            *self.client_options(),
            ("grpc.http2.min_ping_interval_without_data_ms", half),
            ("grpc.http2.min_sent_ping_interval_without_data_ms", int(self.interval_s * 1000)),
        ]


def _limits(max_payload_bytes: int) -> list[tuple[str, int]]:
    limit = max_payload_bytes + _ENVELOPE_BYTES
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


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
            raise listen_error(e, host, port, "port", "choose --port") from e


class Transport:
    """Makes every server and channel of one node or client.

    `tls` None is plaintext (`--insecure`). A node's material carries its key and certificate
    (mutual TLS on every call it makes); a client's carries only the CA, and `token` is sent as
    `authorization: Bearer <token>` on every call.
    """

    def __init__(
        self, keepalive: Keepalive | None = None, tls: TlsMaterial | None = None, token: str | None = None
    ) -> None:
        self.keepalive = keepalive or Keepalive()
        self._tls = tls
        self._token = token
        self._served: TlsMaterial | None = None

    @property
    def secure(self) -> bool:
        """True when servers and channels use TLS."""
        return self._tls is not None

    @property
    def tls(self) -> TlsMaterial | None:
        """The current TLS material."""
        return self._tls

    @property
    def own_instance(self) -> str:
        """The instance id in this node's certificate ("" in plaintext or for a client)."""
        if self._tls is None or self._tls.chain is None:
            return ""
        return pki.identity_of(pki.load_cert(self._tls.chain)).instance_id

    async def server_instance(self, target: str, timeout_s: float) -> str | None:
        """The instance id the server at `target` (`host:port`) proves in a TLS handshake; None
        in plaintext (nothing to prove). Raises OSError or TimeoutError if no handshake completes."""
        if self._tls is None or self._tls.key is None:
            return None
        host, _, port = target.rpartition(":")
        return await peercert.server_instance(host.strip("[]"), int(port), self._tls, timeout_s)

    def update_tls(self, tls: TlsMaterial) -> None:
        """Use renewed material: new channels and new server handshakes pick it up."""
        self._tls = tls

    # --- servers ---

    def create_server(
        self, max_payload_bytes: int, interceptors: list[grpc.aio.ServerInterceptor] | None = None
    ) -> grpc.aio.Server:
        """A new (not yet started) asyncio gRPC server."""
        options = [*_limits(max_payload_bytes), *self.keepalive.server_options()]
        return grpc.aio.server(options=options, interceptors=interceptors or [])

    def bind(self, server: grpc.aio.Server, host: str, port: int) -> int:
        """Listen on host:port (port 0: any free port); returns the port actually bound."""
        _refuse_if_in_use(host, port)
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            if self._tls is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, self._server_credentials(self._tls))
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {address}: {e}") from e
        if bound == 0:
            raise ConfigError(f"cannot listen on {address}: the address is in use or not available here")
        return int(bound)

    def _server_credentials(self, tls: TlsMaterial) -> grpc.ServerCredentials:
        if tls.key is None or tls.chain is None:
            raise ConfigError("a server needs a node key and certificate")
        self._served = tls
        # Every caller must present a certificate of the cluster CA, so a stranger is refused in
        # the handshake. (gRPC Python cannot request a certificate without requiring it:
        # require_client_authentication=False does not ask for one at all, which would leave
        # peers without an identity.) Clients add a bearer token for their scopes.
        return grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(tls),
            self._fetch_configuration,
            require_client_authentication=True,
        )

    @staticmethod
    def _certificate_configuration(tls: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        assert tls.key is not None
        assert tls.chain is not None
        return grpc.ssl_server_certificate_configuration([(tls.key, tls.chain)], root_certificates=tls.ca)

    def _fetch_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before handshakes: the renewed certificate once there is one."""
        tls = self._tls
        if tls is None or tls is self._served:
            return None
        self._served = tls
        return self._certificate_configuration(tls)

    # --- channels ---

    def _channel_options(self, max_payload_bytes: int) -> list[tuple[str, int | str]]:
        options: list[tuple[str, int | str]] = [*_limits(max_payload_bytes), *self.keepalive.client_options()]
        if self._tls is not None:
            options.append(("grpc.ssl_target_name_override", pki.SERVER_NAME))
        return options

    def _channel_credentials(self) -> grpc.ChannelCredentials:
        assert self._tls is not None
        return grpc.ssl_channel_credentials(self._tls.ca, self._tls.key, self._tls.chain)

    def create_channel(self, target: str, max_payload_bytes: int = DEFAULT_PAYLOAD_BYTES) -> grpc.aio.Channel:
        """A new asyncio channel to `target` (`host:port`)."""
        return self._aio_channel(target, self._channel_options(max_payload_bytes))

    def _aio_channel(self, target: str, options: list[tuple[str, int | str]]) -> grpc.aio.Channel:
        interceptors = bearer.aio_interceptors(self._token) if self._token and self._tls else None
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(
            target, self._channel_credentials(), options, interceptors=interceptors
        )

    def create_sync_channel(
        self, target: str, max_payload_bytes: int = DEFAULT_PAYLOAD_BYTES
    ) -> grpc.Channel:
        """A new blocking channel to `target` (for the CLI and simple clients)."""
        options = self._channel_options(max_payload_bytes)
        if self._tls is None:
            return grpc.insecure_channel(target, options=options)
        channel = grpc.secure_channel(target, self._channel_credentials(), options=options)
        return grpc.intercept_channel(channel, bearer.SyncBearer(self._token)) if self._token else channel

    def create_peer_channel(self, target: str, reconnect_backoff_ms: int) -> grpc.aio.Channel:
        """A new asyncio channel to a peer node, for the membership protocol.

        gRPC's default reconnect backoff grows to two minutes; a peer that restarts, or a
        partition that heals, must be reachable again within a probe or two, so the backoff
        is capped at `reconnect_backoff_ms`. No transparent retries: a probe that fails must
        fail within its own deadline.
        """
        options: list[tuple[str, int | str]] = [
            *self._channel_options(PEER_MESSAGE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.enable_retries", 0),
        ]
        return self._aio_channel(target, options)

    def join_channel(self, target: str, ca: bytes, key: bytes, cert: bytes) -> grpc.aio.Channel:
        """A TLS channel to an admitting node for joining: trusts only the pinned CA and presents
        the join token's bootstrap certificate."""
        options: list[tuple[str, int | str]] = [
            *_limits(PEER_MESSAGE_BYTES),
            *self.keepalive.client_options(),
        ]
        options.append(("grpc.ssl_target_name_override", pki.SERVER_NAME))
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert), options=options)


def client_transport(
    environ: Mapping[str, str], token: str | None = None, keepalive: Keepalive | None = None
) -> Transport:
    """The transport of a client (CLI, tests) with the credentials `credentials.find` picks."""
    found = credentials.find(environ, token)
    return Transport(keepalive, tls=found.tls, token=found.token)
