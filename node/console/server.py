"""The node's HTTP server: the console pages, `/metrics` and `/healthz`, on the node's own loop.

HTTPS with the node's certificate in the secure default (server authentication only: browsers
have no client certificate; people sign in with a bearer token instead), plain HTTP with
`--insecure`. `/healthz` is open; `/metrics` needs a `read` token unless `http.open_metrics`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from node.config import HttpConfig
from node.console.auth import Authenticator
from node.console.metrics import NodeMetrics
from node.errors import listen_error

log = logging.getLogger(__name__)

Healthy = Callable[[], bool]
AddRoutes = Callable[[web.Application], None]


class TlsFiles:
    """The node's key and certificate files, reloaded for new connections once they change."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert = cert
        self._key = key
        self._loaded = 0.0
        self._current = self._load()
        self.context = self._current
        self.context.sni_callback = self._pick

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        self._loaded = self._cert.stat().st_mtime
        return context

    def _pick(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        """Before each handshake: a renewed certificate is served from the next connection on."""
        try:
            if self._cert.stat().st_mtime != self._loaded:
                self._current = self._load()
        except (OSError, ssl.SSLError) as e:  # keep serving the previous certificate
            log.error("cannot load the renewed certificate for HTTPS: %s", e)
        if self._current is not self.context:
            sock.context = self._current


class HttpServer:
    """An aiohttp `AppRunner` with its site; started and stopped by the Node."""

    def __init__(
        self,
        config: HttpConfig,
        host: str,
        metrics: NodeMetrics,
        auth: Authenticator,
        healthy: Healthy,
        tls: TlsFiles | None,
        add_routes: AddRoutes | None = None,
    ) -> None:
        self._config = config
        self._host = config.host or host
        self._metrics = metrics
        self._auth = auth
        self._healthy = healthy
        self._tls = tls
        self._add_routes = add_routes
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        """https or http."""
        return "https" if self._tls is not None else "http"

    def app(self) -> web.Application:
        """The application: `/healthz`, `/metrics`, then the console's routes."""
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_page)
        if self._add_routes is not None:
            self._add_routes(app)
        return app

    async def start(self) -> None:
        """Listen (port 0: a free one, see `port`)."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host = self._host.strip("[]") or "0.0.0.0"
        site = web.TCPSite(
            runner, host, self._config.port, ssl_context=self._tls.context if self._tls else None
        )
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            choose = "choose --set http.port=N (0: any free port), or --set http.enabled=false"
            raise listen_error(e, host, self._config.port, "console port", choose) from e
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._config.port
        log.info("console and metrics on %s://%s:%d/", self.scheme, host, self.port)

    async def stop(self) -> None:
        """Close open connections (event streams included) and stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="shutting down\n")

    async def _metrics_page(self, request: web.Request) -> web.Response:
        if not self._config.open_metrics:
            refusal = self._auth.bearer_refusal(request, "read")
            if refusal is not None:
                return refusal
        body = await self._metrics.scrape()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
