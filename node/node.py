"""The Node: one process's journal, consumers, job manager and gRPC server, with a lifecycle.

async with Node(NodeConfig.for_tests(tmp_path)) as node:
    node.consumers.register(["images/**"], resize)
    job = await node.jobs.add_job("images/resize", {"width": 100})

Remote workers connect over WorkerService (`node.services.workers`); while connected, each is a
consumer of its topic patterns (`node.workers`, see `node.jobs.remote`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobmesh.peer.v1 import (
    cluster_pb2,
    gather_pb2,
    gather_pb2_grpc,
    membership_pb2,
    transfer_pb2,
    transfer_pb2_grpc,
)
from jobmesh.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    topics_pb2,
    topics_pb2_grpc,
    topology_pb2,
    workers_pb2,
    workers_pb2_grpc,
)

from node.config import NodeConfig
from node.console.counting import JobCounters, Sources
from node.discovery.identity import format_endpoint
from node.discovery.membership import MembershipCounters
from node.discovery.properties import TOPICS_PROPERTY, format_topics
from node.discovery.topology import Topology
from node.errors import InvalidArgument
from node.instance import (
    DataDirLock,
    InstanceIdentity,
    choose_instance_id,
    default_name,
    now_us,
    remove_run_file,
    write_run_file,
)
from node.jobs.consumers import ConsumerRegistry, load_handler
from node.jobs.manager import JobManager
from node.jobs.remote import RemoteWorkers
from node.jobs.validation import JobLimits
from node.journal.audit import AuditStore
from node.journal.jobs import JobStore
from node.journal.journal import Journal, discard_journal
from node.model.consumption import ConsumptionRules, ConsumptionSetting
from node.security.audit import AuditInterceptor
from node.services.audit import AuditServicer, sink_for
from node.services.decoding import BadRequestCounter, RequestDecoder
from node.services.gather import GatherServicer
from node.services.grpc_log import install_client_gone_filter
from node.services.health import HealthService
from node.services.jobs import JobServicer
from node.services.queues import QueueServicer
from node.services.reflection import add_reflection
from node.services.schedules import ScheduleServicer
from node.services.shutdown import StreamShutdown
from node.services.topics import TopicServicer
from node.services.topology import add_topology_servicers
from node.services.transfer import TransferServicer
from node.services.workers import WorkerServicer
from node.transfer.consumption import ConsumptionStore
from node.transfer.link import GrpcTransferLink, TransferLink, TransferReceiver
from node.transfer.offloader import FRAME_MAX_BYTES, Offloader
from node.transfer.placement import PeerPlacement
from node.transfer.store import TransferStore
from node.transport import Keepalive, Transport
from node.trust import ADMITS_PROPERTY, NodeTrust

if TYPE_CHECKING:
    from node.console.console import Console

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite"
# The Jobmesh services, public (jobmesh.v1) and node-to-node (jobmesh.peer.v1); health reports
# each of them SERVING.
JOBMESH_SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    queues_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    topology_pb2.DESCRIPTOR.services_by_name["TopologyService"].full_name,
    topics_pb2.DESCRIPTOR.services_by_name["TopicService"].full_name,
    membership_pb2.DESCRIPTOR.services_by_name["MembershipService"].full_name,
    transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
    gather_pb2.DESCRIPTOR.services_by_name["GatherService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)
# Served only by nodes that admit others (they hold the CA key) in the secure default.
CLUSTER_SERVICE_NAME = cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name
# Everything reflection lists (besides the two reflection services themselves).
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Node:
    """A Jobmesh node. Use `async with Node(config) as node:` or `start()` / `close()`.

    Event-loop contract: create, start and close it on one asyncio loop; all its coroutines
    run on that loop.
    """

    def __init__(
        self, config: NodeConfig, *, reset_journal: bool = False, transfer_link: TransferLink | None = None
    ) -> None:
        """`reset_journal`: move the journal aside and start with an empty one (keeping the id)."""
        self.config = config
        self._reset_journal = reset_journal
        self._transfer_link = transfer_link
        """How offloaded jobs and reports reach peers; None: gRPC (tests pass an in-memory link)."""
        self.consumers = ConsumerRegistry()
        self.workers = RemoteWorkers(
            self.consumers,
            max_concurrency=config.workers.max_concurrency,
            max_inflight_bytes=config.workers.max_inflight_bytes,
        )
        self._lock = DataDirLock(config.data_dir)
        self._journal: Journal | None = None
        self._jobs: JobManager | None = None
        self._offloader: Offloader | None = None
        self._transfer: TransferServicer | None = None
        self._worker_servicer: WorkerServicer | None = None
        self._consumption: ConsumptionStore | None = None
        self._server: grpc.aio.Server | None = None
        self._health: HealthService | None = None
        self.identity: InstanceIdentity | None = None
        self.bad_requests = BadRequestCounter()
        """Requests refused because they did not decode (logged at most every few seconds)."""
        self._stream_shutdown = StreamShutdown()
        install_client_gone_filter()
        self.port = 0
        self.job_counters = JobCounters()
        """Jobs added and ended, waits and run times, commits (fed by the journal's commits;
        `/metrics` on the console's HTTP port shows them)."""
        self.console: Console | None = None
        """The web console, `/metrics` and `/healthz` (after start, when `http.enabled`)."""
        self.transport = Transport(
            Keepalive(config.server.keepalive_interval_s, config.server.keepalive_timeout_s)
        )
        """Makes every server and channel of this node (TLS material, keepalive, limits)."""
        self.topology = Topology(config.discovery, channels=self.transport)
        self.trust = NodeTrust(
            config, self.transport, self.topology.properties, self._admitters, self._peer_properties
        )
        """Cluster material, the call interceptor, ClusterService and certificate renewal."""
        """Discovery, the topology view and this node's instance properties (see node.discovery)."""
        # Peers (offloading) read which topics this node consumes from its instance properties.
        self.consumers.add_listener(self._publish_topics)

    @property
    def jobs(self) -> JobManager:
        """The job manager (after start)."""
        if self._jobs is None:
            raise RuntimeError("the node is not started")
        return self._jobs

    @property
    def transfer_receiver(self) -> TransferReceiver:
        """What applies the transfer frames peers send (after start; for in-memory links)."""
        if self._offloader is None:
            raise RuntimeError("the node is not started")
        return self._offloader

    @property
    def journal(self) -> Journal:
        """The journal (after start)."""
        if self._journal is None:
            raise RuntimeError("the node is not started")
        return self._journal

    @property
    def address(self) -> str:
        """`host:port` clients on this machine can dial."""
        host = self.config.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host
        return f"{host}:{self.port}"

    @property
    def bound_address(self) -> str:
        """`host:port` the gRPC server listens on (`0.0.0.0:7710` means every interface)."""
        return format_endpoint(self.config.server.host or "0.0.0.0", self.port)

    @property
    def advertised_addresses(self) -> tuple[str, ...]:
        """The `host:port` addresses peers are told to dial, preferred first (after start)."""
        return self.topology.info.endpoints if self.topology.info is not None else ()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Lock the data dir, open the journal, recover, load consumers, and serve gRPC."""
        config = self.config
        self._lock.acquire()
        try:
            if config.http.enabled:
                # The console's module (aiohttp, prometheus_client: a third of the node's
                # imports) loads only when the console is on, so clients and console-less nodes
                # never pay for it; and here, before anything starts, not on a thread beside the
                # start-up: on two cores that doubled a 30-node cluster's time to a full view.
                importlib.import_module("node.console.console")
            for spec in config.consumers:
                self.consumers.register(
                    spec.topics, load_handler(spec.handler), name=spec.handler, spec=spec.handler
                )
            if self._reset_journal:
                discard_journal(config.data_dir / JOURNAL_FILE)
            self._journal = Journal.open(
                config.data_dir / JOURNAL_FILE, config.journal.durability, config.journal.readers
            )
            self._journal.recorder.observer = self.job_counters
            in_journal = await self._journal.get_meta("instance_id")
            instance_id = choose_instance_id(config.data_dir, in_journal, reset_journal=self._reset_journal)
            if in_journal is None:
                await self._journal.set_meta("instance_id", instance_id)
            # The transfer store registers the outbox as the journal's hook before anything runs a
            # job: reports of jobs from other origins are written from the first transaction on.
            transfer = TransferStore(
                self._journal, JobStore(self._journal), instance_id, JobLimits.of(config.jobs)
            )
            placement = PeerPlacement(instance_id, self.topology, transfer)
            self._jobs = JobManager(self._journal, self.consumers, config, instance_id, placement)
            self._offloader = Offloader(
                self._jobs,
                self.topology,
                placement,
                transfer,
                config.offload,
                self._transfer_link
                or GrpcTransferLink(self.transport, config.jobs.max_payload_bytes + FRAME_MAX_BYTES),
            )
            # Before the runners start: a job of another origin starts only under its lease.
            self._jobs.hold = self._offloader.lease.hold
            self._consumption = ConsumptionStore(self._journal)
            self._jobs.consumption = await self._consumption.load()
            self._publish_consumption(self._jobs.consumption)
            requeued, stopped, given_up = await self._jobs.start()
            if requeued or stopped or given_up:
                log.warning(
                    "recovered jobs left ACTIVE by a crash: %d re-queued, %d stopped, %d given up",
                    requeued,
                    stopped,
                    given_up,
                )
            await self._serve(instance_id)
        except BaseException:
            await self.close()
            raise

    async def _serve(self, instance_id: str) -> None:
        config = self.config
        # Outermost first: requests are decoded (garbage gets INVALID_ARGUMENT, not UNKNOWN), so
        # the trust interceptors check decoded messages (scopes, topics, the sender's identity);
        # innermost, StreamShutdown wraps the servicers' own response generators.
        trust = await self.trust.prepare(instance_id)
        audit = AuditStore(self.journal, config.audit.max_entries)
        self.trust.audit_sink = sink_for(audit)  # token commands run on the data dir
        # Inside the trust check: it names the caller the audit journal records.
        interceptors = [
            RequestDecoder(self.bad_requests),
            *trust,
            AuditInterceptor(self.trust.audit_sink),
            self._stream_shutdown,
        ]
        server = self.transport.create_server(config.jobs.max_payload_bytes, interceptors)
        admits = self.trust.add_servicers(server)
        served = (*JOBMESH_SERVICE_NAMES, *([CLUSTER_SERVICE_NAME] if admits else []))
        job_servicer = JobServicer(self.jobs, self._live_peers, self.transport)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(job_servicer, server)
        gather_pb2_grpc.add_GatherServiceServicer_to_server(GatherServicer(job_servicer), server)
        add_topology_servicers(server, self.topology)
        if self._offloader is not None:
            self._transfer = TransferServicer(self._offloader)
            transfer_pb2_grpc.add_TransferServiceServicer_to_server(self._transfer, server)
        topics_pb2_grpc.add_TopicServiceServicer_to_server(
            TopicServicer(self.topology, self.set_topic_consumption, self.transport), server
        )
        queues_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(self.jobs), server)
        schedules_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleServicer(self.jobs), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit), server)
        self._worker_servicer = WorkerServicer(self.workers, instance_id, config.jobs.max_payload_bytes)
        workers_pb2_grpc.add_WorkerServiceServicer_to_server(self._worker_servicer, server)
        self._health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        add_reflection(server, (*served, HEALTH_SERVICE_NAME))
        self.port = self.transport.bind(server, config.server.host, config.server.port)
        await server.start()
        self._server = server
        for name in ("", *served):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.identity = InstanceIdentity(instance_id, config.name or default_name(self.port), now_us())
        await self.topology.start(self.identity, self.port, config.server.host, self.trust.fingerprint)
        self.trust.start(self.topology.subscribe)
        if self._offloader is not None:
            await self._offloader.start()
        if config.http.enabled:
            self.console = self._console()
            await self.console.start()
        write_run_file(
            config.data_dir,
            {
                "pid": os.getpid(),
                "port": self.port,
                "address": self.address,
                "bound": self.bound_address,
                "advertised": list(self.advertised_addresses),
                "instance_id": instance_id,
                "name": self.identity.name,
                "http_port": self.console.port if self.console is not None else 0,
            },
        )
        log.info(
            "node %s (%s) serving on %s, advertised as %s",
            self.identity.name,
            instance_id,
            self.bound_address,
            ", ".join(self.advertised_addresses),
        )

    def _metric_sources(self, journal: Journal) -> Sources:
        def frames() -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
            o = self._offloader
            return (
                (o.sent.frames, o.sent.bytes, o.received.frames, o.received.bytes) if o else ({}, {}, {}, {})
            )

        def members() -> dict[str, int]:
            if self.topology.info is None or self.topology._protocol is None:
                return {}
            counts = {"alive": 1}  # this node
            for member in self.topology.protocol.table:
                state = member.record.state.value
                counts[state] = counts.get(state, 0) + 1
            return counts

        def membership() -> MembershipCounters | None:
            protocol = self.topology._protocol
            return protocol.table.counters if protocol is not None else None

        def reconciled() -> dict[str, int]:
            return vars(self._offloader.reconciler.counts).copy() if self._offloader else {}

        return Sources(journal, self.workers, membership, members, frames, reconciled)

    def _console(self) -> Console:
        from node.console.console import Console, ConsoleParts  # loaded at start

        parts = ConsoleParts(
            self.config,
            self.journal,
            self.topology,
            self.workers,
            self.transport,
            self.trust.files,
            self.trust.registry.revoked,
            self.address,
            lambda: self._server is not None and self._jobs is not None,
            self.job_counters,
            self._metric_sources(self.journal),
        )
        return Console(parts)

    async def set_topic_consumption(self, pattern: str, setting: ConsumptionSetting) -> ConsumptionRules:
        """Persist this node's setting for a topic pattern, publish it, and apply it at once."""
        if self._consumption is None:
            raise RuntimeError("the node is not started")
        settings = {p: s for p, s in self.jobs.consumption.settings().items() if p != pattern}
        if setting is not ConsumptionSetting.ENABLED:
            settings[pattern] = setting
        # Published first (refused whole if the properties would not fit), stored second: a
        # setting that could not be published would otherwise stop the node's next start.
        self._publish_consumption(ConsumptionRules.from_settings(settings))
        try:
            rules = await self._consumption.set(pattern, setting)
        except BaseException:
            self._publish_consumption(self.jobs.consumption)
            raise
        await self.jobs.apply_consumption(rules)
        if self._offloader is not None:
            await self._offloader.consumption_changed()
        return rules

    def _publish_consumption(self, rules: ConsumptionRules) -> None:
        published = rules.properties()
        self.topology.properties.update(
            {name: value for name, value in published.items() if value},
            remove=[name for name, value in published.items() if not value],
        )

    def _admitters(self) -> list[str]:
        """Addresses of live peers that hold the CA key."""
        return [
            i.address
            for i in self.topology.view.instances
            if not i.is_local and i.endpoints and i.properties.get(ADMITS_PROPERTY) == "true"
        ]

    def _peer_properties(self) -> list[Mapping[str, str]]:
        """Instance properties of every live instance but this one."""
        return [i.properties for i in self.topology.settled.instances if not i.is_local]

    def _live_peers(self) -> list[tuple[str, str]]:
        """(instance id, address) of every live instance but this one (topology-wide queries)."""
        return [(i.id, i.address) for i in self.topology.view.instances if not i.is_local and i.endpoints]

    def _publish_topics(self) -> None:
        """Publish the consumers' topic patterns as the `jobmesh.topics` instance property."""
        patterns = [pattern.text for pattern in self.consumers.patterns]
        try:
            if patterns:
                self.topology.properties.set(TOPICS_PROPERTY, format_topics(patterns))
            else:
                self.topology.properties.remove(TOPICS_PROPERTY)
        except InvalidArgument as e:  # the consumer is registered; only its advertisement failed
            log.error("cannot publish this node's topics to its peers: %s", e)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop gracefully: refuse new work, let running jobs finish within the grace, close all."""
        grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
        if self.console is not None:
            await self.console.stop()
            self.console = None
        self._stream_shutdown.close()  # watch streams end now with UNAVAILABLE, not cancelled later
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self.trust.stop()
        # Leave first: peers stop counting on this node while its jobs wind down.
        await self.topology.stop()
        if self._offloader is not None:
            await self._offloader.stop()
            self._offloader = None
        if self._transfer is not None:
            self._transfer.close()
        if self._jobs is not None:
            await self._jobs.stop(grace)
            self._jobs = None
        self.workers.close()  # after the jobs: remote workers may finish theirs within the grace
        if self._worker_servicer is not None:
            await self._worker_servicer.drained(1.0)  # their calls end before the server stops
        if self._server is not None:
            await self._server.stop(min(grace, 1.0))
            self._server = None
        if self._journal is not None:
            self._journal.recorder.observer = None
            self._journal.close()
            self._journal = None
        remove_run_file(self.config.data_dir)
        self._lock.release()
