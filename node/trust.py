"""A node's trust lifecycle: its cluster material at start (bootstrap a one-node cluster, or join
one with a token), the interceptor that checks every call, the ClusterService of an admitting
node, and certificate renewal before expiry. `--insecure` skips all of it, loudly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Mapping

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jobmesh.peer.v1 import cluster_pb2, cluster_pb2_grpc

from node.config import NodeConfig
from node.discovery.events import Subscription, TopologyListener
from node.discovery.properties import InstanceProperties
from node.errors import ConfigError, JobmeshError
from node.security import pki
from node.security.admission import ClusterServicer
from node.security.audit import AuditRecord, AuditSink
from node.security.authz import AuthInterceptor
from node.security.cluster import ClusterFiles, bootstrap, renewal_due
from node.security.join import JoinRefused, JoinToken
from node.security.joining import fetch_pinned_ca, join
from node.security.registry import TokenRegistry
from node.transport import Transport
from node.waits import wait_event

log = logging.getLogger(__name__)

INSECURE_PROPERTY = "jobmesh.insecure"
"""Instance property of a node that runs with `--insecure` (visible in the topology view)."""
ADMITS_PROPERTY = "jobmesh.admits"
"""Instance property of a node that holds the CA key (it can admit and renew others)."""
REVOKED_PROPERTY = "jobmesh.revoked"
"""Instance property: the revoked token ids this node knows (comma-separated); every node adopts
the revocations its peers publish, so a revocation reaches the whole cluster within a gossip
round or two."""
REVOCATION_POLL_S = 0.5
"""How often the data dir is looked at for revocations and audit notes of token commands (calls
check the revocation list themselves, at once); peers' revocations are adopted at every
topology change, without waiting for this."""
RENEW_CHECK_MAX_S = 60.0


class NodeTrust:
    """The trust part of one Node (see the module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        transport: Transport,
        properties: InstanceProperties,
        admitters: Callable[[], list[str]],
        peer_properties: Callable[[], list[Mapping[str, str]]],
    ) -> None:
        self._config = config
        self._transport = transport
        self._properties = properties
        self._admitters = admitters
        """Addresses of live peers that admit (for renewal of a node without the CA key)."""
        self._peer_properties = peer_properties
        """Instance properties of the live peers (where their revocations come from)."""
        self.files = ClusterFiles(config.data_dir)
        self.registry = TokenRegistry(self.files)
        self._instance_id = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._peers_changed = asyncio.Event()
        self._subscription: Subscription | None = None
        self.audit_sink: AuditSink | None = None
        """Where the token commands' notes go (the node's audit journal); None: they wait."""

    @property
    def fingerprint(self) -> str:
        """Short fingerprint of the cluster CA ("" with --insecure or before `prepare`)."""
        if not self._transport.secure:
            return ""
        return pki.short_fingerprint(self.files.read_ca())

    @property
    def _lifetime(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self._config.security.cert_lifetime_s)

    def _addresses(self) -> tuple[str, ...]:
        host = self._config.server.host
        return tuple(a for a in (host, "127.0.0.1", *self._config.discovery.advertise_addresses) if a)

    async def prepare(self, instance_id: str) -> list[grpc.aio.ServerInterceptor]:
        """Load, make or join this node's cluster; the server interceptors to use."""
        self._instance_id = instance_id
        security = self._config.security
        if security.insecure:
            log.warning(
                "INSECURE: serving plaintext without authentication (security.insecure): "
                "anyone who reaches this port can call every RPC"
            )
            self._properties.set(INSECURE_PROPERTY, "true")
            return []
        if security.join and not self.files.has_ca():
            await self._join(JoinToken.parse(security.join))
        self._transport.update_tls(bootstrap(self.files, instance_id, self._addresses(), self._lifetime))
        if self.files.admits():
            self._properties.set(ADMITS_PROPERTY, "true")
        return [AuthInterceptor(self.files.read_ca(), self.registry.revoked)]

    async def _join(self, token: JoinToken) -> None:
        seeds = self._config.discovery.seeds
        if not seeds:
            raise ConfigError("--join needs --seed HOST:PORT of a node that admits (jobmesh cluster status)")
        problems = []
        for seed in seeds:
            try:
                ca = await asyncio.to_thread(fetch_pinned_ca, seed, token)
                key_pem, cert_pem = token.bootstrap_material()
                async with self._transport.join_channel(seed, ca, key_pem, cert_pem) as channel:
                    await join(self.files, token, channel, ca, self._instance_id, self._addresses())
                log.info("joined the cluster of %s (CA %s)", seed, token.ca_fingerprint[:16])
                return
            except (OSError, JoinRefused) as e:
                problems.append(f"{seed}: {e}")
        raise JobmeshError("cannot join: " + "; ".join(problems))

    def add_servicers(self, server: grpc.aio.Server) -> bool:
        """Serve ClusterService on a node that holds the CA key; True if it does."""
        if self.files.admits() and not self._config.security.insecure:
            cluster_pb2_grpc.add_ClusterServiceServicer_to_server(
                ClusterServicer(self.files, self._lifetime), server
            )
            return True
        return False

    def start(self, subscribe: Callable[[TopologyListener], Subscription]) -> None:
        """Start renewing this node's certificate, and sharing token revocations with peers
        (`subscribe`: the topology's, whose events cue the adoption of peers' revocations)."""
        if self._transport.secure:
            self._subscription = subscribe(lambda _event: self._peers_changed.set())
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._renew_loop(), name="cert-renewal"),
                loop.create_task(self._revocation_loop(), name="token-revocations"),
            ]

    async def stop(self) -> None:
        """Stop the background tasks."""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _revocation_loop(self) -> None:
        published: frozenset[str] = frozenset()
        while True:
            learnt = frozenset(
                token_id
                for properties in self._peer_properties()
                for token_id in properties.get(REVOKED_PROPERTY, "").split(",")
                if token_id
            )
            if not learnt <= self.registry.revoked():
                self.registry.add_revoked(learnt)
                log.info("adopted %d token revocation(s) from peers", len(learnt - published))
            await self._take_audit_notes()
            own = self.registry.revoked()
            if own != published:
                try:
                    self._properties.set(REVOKED_PROPERTY, ",".join(sorted(own)))
                    published = own
                except JobmeshError as e:  # too many for the properties budget: still enforced here
                    log.error("cannot publish the token revocations to peers: %s", e)
            await wait_event(self._peers_changed, REVOCATION_POLL_S)
            self._peers_changed.clear()

    async def _take_audit_notes(self) -> None:
        """Move what token commands did on the data dir into the audit journal."""
        if self.audit_sink is None:
            return
        for note in self.registry.take_actions():
            record = AuditRecord(
                time_us=int(note.get("time_us", 0)),
                caller=str(note.get("caller", "cli")),
                action=str(note.get("action", "")),
                request=str(note.get("request", "")),
                status="OK",
            )
            try:
                await self.audit_sink(record)
            except Exception:  # keep sharing revocations whatever the journal does
                log.exception("cannot record the audit entry of %s by %s", record.action, record.caller)

    async def _renew_loop(self) -> None:
        fraction = self._config.security.renew_fraction
        while True:
            cert = self.files.read_node_cert()
            if cert is not None and renewal_due(cert, fraction):
                try:
                    await self._renew()
                    cert = self.files.read_node_cert()
                except (JobmeshError, grpc.aio.AioRpcError, OSError) as e:
                    log.error("certificate renewal failed (will retry): %s", e)
            await asyncio.sleep(self._next_check(cert))

    def _next_check(self, cert: x509.Certificate | None) -> float:
        if cert is None:
            return RENEW_CHECK_MAX_S
        lifetime = (pki.expires_at(cert) - pki.issued_at(cert)).total_seconds()
        return max(0.05, min(RENEW_CHECK_MAX_S, lifetime / 20))

    async def _renew(self) -> None:
        if self.files.admits():
            self.files.issue_own(self._instance_id, self._addresses(), self._lifetime)
        else:
            await self._renew_remotely()
        self._transport.update_tls(self.files.material())
        cert = self.files.read_node_cert()
        if cert is not None:
            log.info("renewed this node's certificate; it expires %s", pki.expires_at(cert).isoformat())

    async def _renew_remotely(self) -> None:
        key = pki.new_key()
        csr = pki.new_csr(key, self._instance_id).public_bytes(serialization.Encoding.PEM)
        request = cluster_pb2.RenewRequest(csr_pem=csr, addresses=list(self._addresses()))
        for address in self._admitters():
            async with self._transport.create_channel(address) as channel:
                response = await cluster_pb2_grpc.ClusterServiceStub(channel).Renew(request, timeout=10)
            cert = pki.load_cert(response.certificate_pem)
            if pki.is_signed_by(cert, self.files.read_ca()):
                self.files.install_node(pki.key_pem(key), cert)
                return
        raise JobmeshError("no live node that admits (holds the CA key) answered")
