"""The console of one node: its credentials, its HTTP server and its pages, wired from the node's
parts (the Node creates it after its gRPC server serves, and closes it first)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509

from node.config import NodeConfig
from node.console.api import NodeApi
from node.console.auth import Authenticator
from node.console.counting import JobCounters, Sources
from node.console.live import LiveFeeds
from node.console.metrics import NodeMetrics
from node.console.pages import add_pages
from node.console.server import HttpServer, TlsFiles
from node.discovery.topology import Topology
from node.jobs.remote import RemoteWorkers
from node.journal.journal import Journal
from node.security.cluster import ClusterFiles
from node.transport import Transport

log = logging.getLogger(__name__)


@dataclass
class ConsoleParts:
    """What the console reads and calls."""

    config: NodeConfig
    journal: Journal
    topology: Topology
    workers: RemoteWorkers
    transport: Transport
    """The node's own transport: the console calls its node's gRPC API as the node itself,
    after checking the session's scopes against the RPC's (see `auth.Authenticator.may`)."""
    files: ClusterFiles
    revoked: Callable[[], frozenset[str]]
    address: str
    """`host:port` of the node's own gRPC server."""
    healthy: Callable[[], bool]
    counters: JobCounters
    """The job counters the node keeps from its start (the journal's commit observer)."""
    metric_sources: Sources


class Console:
    """Sign-in, pages, live streams, `/metrics` and `/healthz` of one node."""

    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts
        secure = parts.transport.secure
        self.auth = Authenticator(
            self._ca, parts.revoked, parts.config.data_dir, secure, parts.config.http.session_ttl_s
        )
        tls = TlsFiles(parts.files.node_cert, parts.files.node_key) if secure else None
        self.api = NodeApi(parts.transport, parts.address)
        self.metrics = NodeMetrics(parts.counters, parts.metric_sources)
        self.live = LiveFeeds(parts.journal, parts.topology, parts.counters)
        self.server = HttpServer(
            parts.config.http,
            parts.config.server.host,
            self.metrics,
            self.auth,
            parts.healthy,
            tls,
            self._add_routes,
        )

    def _ca(self) -> x509.Certificate | None:
        return self.parts.files.read_ca() if self.parts.files.has_ca() else None

    def _add_routes(self, app: web.Application) -> None:
        add_pages(app, self)

    @property
    def port(self) -> int:
        """The HTTP port (after start)."""
        return self.server.port

    async def start(self) -> None:
        """Prepare the credentials and listen."""
        self.auth.prepare()
        self.live.start()
        await self.server.start()

    async def stop(self) -> None:
        """End every open page stream and stop listening."""
        await self.live.stop()
        await self.server.stop()
        await self.api.close()
