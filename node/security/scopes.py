"""Who may call what: the table from every served method to the scope it needs, and the rules
that decide whether a caller's scopes (and topic patterns) allow a call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.topics import TopicPattern

OPEN = "open"
"""No credential needed (health checks)."""
PEER = "peer"
"""Only nodes of this cluster (a node certificate)."""
JOIN = "join"
"""Only a join token's bootstrap certificate."""

_JOBS = "jobmesh.v1.JobService/"
_QUEUES = "jobmesh.v1.QueueService/"
_SCHEDULES = "jobmesh.v1.ScheduleService/"
_TOPICS = "jobmesh.v1.TopicService/"
_TOPOLOGY = "jobmesh.v1.TopologyService/"

REQUIRED_SCOPE: dict[str, str] = {
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "read",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "read",
    "/jobmesh.peer.v1.MembershipService/Ping": PEER,
    "/jobmesh.peer.v1.MembershipService/IndirectPing": PEER,
    "/jobmesh.peer.v1.MembershipService/Sync": PEER,
    "/jobmesh.peer.v1.MembershipService/Gossip": PEER,
    "/jobmesh.peer.v1.TransferService/Exchange": PEER,
    "/jobmesh.peer.v1.TransferService/Reconcile": PEER,
    "/jobmesh.peer.v1.GatherService/FindLocalJobs": PEER,
    "/jobmesh.peer.v1.GatherService/GetLocalStatistics": PEER,
    "/jobmesh.peer.v1.ClusterService/Join": JOIN,
    "/jobmesh.peer.v1.ClusterService/Renew": PEER,
    "/" + _JOBS + "AddJob": "submit",
    "/" + _JOBS + "AddJobs": "submit",
    "/" + _JOBS + "SubmitJobs": "submit",
    "/" + _JOBS + "GetJob": "read",
    "/" + _JOBS + "GetPayload": "read",
    "/" + _JOBS + "FindJobs": "read",
    "/" + _JOBS + "StopJob": "submit",
    "/" + _JOBS + "RemoveJob": "admin",
    "/" + _JOBS + "RetryJob": "submit",
    "/" + _JOBS + "WatchJobs": "read",
    "/" + _JOBS + "GetStatistics": "read",
    "/" + _JOBS + "PurgeJobs": "admin",
    "/" + _QUEUES + "ListQueues": "read",
    "/" + _QUEUES + "SetQueue": "admin",
    "/" + _QUEUES + "DeleteQueue": "admin",
    "/" + _QUEUES + "SuspendQueue": "admin",
    "/" + _QUEUES + "ResumeQueue": "admin",
    "/" + _QUEUES + "ClearQueue": "admin",
    "/" + _SCHEDULES + "AddSchedule": "admin",
    "/" + _SCHEDULES + "ListSchedules": "read",
    "/" + _SCHEDULES + "GetSchedule": "read",
    "/" + _SCHEDULES + "RemoveSchedule": "admin",
    "/" + _SCHEDULES + "SuspendSchedule": "admin",
    "/" + _SCHEDULES + "ResumeSchedule": "admin",
    "/" + _TOPICS + "ListTopicConsumption": "read",
    "/" + _TOPICS + "SetTopicConsumption": "admin",
    "/" + _TOPOLOGY + "GetTopology": "read",
    "/" + _TOPOLOGY + "WatchTopology": "read",
    "/" + _TOPOLOGY + "SetInstanceProperties": "admin",
    "/jobmesh.v1.WorkerService/Work": "work",
    "/jobmesh.v1.WorkerService/ListWorkers": "read",
    "/jobmesh.v1.AuditService/ListAuditEntries": "admin",
}
"""Every method a node serves -> the scope it needs (tests/test_security_scopes.py checks it is complete)."""

NODE_FORWARDED = frozenset({"/" + _TOPICS + "SetTopicConsumption"})
"""Client-API methods beyond reading that a node calls on its peers, for an admin it checked
itself (a consumption change is forwarded to the instance it is for). A node's certificate grants
the peer protocol, `read` and these: a member that goes rogue cannot remove, purge, re-queue or
reconfigure anything through the public API."""

IMPLIED: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "submit", "read", "work"}),
    "submit": frozenset({"submit", "read"}),
    "read": frozenset({"read"}),
    "work": frozenset({"work"}),
    JOIN: frozenset({JOIN}),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a node of the cluster, or a client with a token's scopes."""

    name: str
    scopes: frozenset[str]
    topics: tuple[str, ...] = ()
    """Topic patterns limiting submit and work; empty: every topic."""
    instance_id: str = ""
    """Set for nodes (from the certificate's SAN)."""
    token_id: str = ""
    """Set for bearer tokens (the token's id) and scoped client certificates (the serial)."""

    @property
    def description(self) -> str:
        """Who this is, for the audit journal and logs (`token 'ci' (ID)`, `instance ID`, ...)."""
        if self.token_id and self.name.startswith("certificate "):
            return f"{self.name} ({self.token_id})"
        if self.token_id:
            return f"token {self.name!r} ({self.token_id})"
        return self.name

    @property
    def is_node(self) -> bool:
        """True for a node of this cluster."""
        return bool(self.instance_id)

    def granted(self) -> frozenset[str]:
        """Every scope the caller holds, implied ones included."""
        if self.is_node:
            return frozenset({PEER, "read"})
        return frozenset(s for scope in self.scopes for s in IMPLIED.get(scope, frozenset()))

    def missing(self, required: str, method: str = "") -> str | None:
        """None if the caller may call `method`, which needs `required`, else what is missing."""
        if required == OPEN or required in self.granted():
            return None
        if self.is_node and method in NODE_FORWARDED:
            return None
        if required == PEER:
            return "a node certificate of this cluster"
        if required == JOIN:
            return "a join token"
        return f"scope {required!r}"

    def topic_refused(self, topics: Iterable[str]) -> str | None:
        """The first topic (or pattern) outside the caller's patterns, if any."""
        if not self.topics or "admin" in self.scopes or self.is_node:
            return None
        allowed = [TopicPattern.parse(p) for p in self.topics]
        for topic in topics:
            if not any(_within(topic, pattern) for pattern in allowed):
                return topic
        return None


def _within(topic_or_pattern: str, allowed: TopicPattern) -> bool:
    """True if every topic `topic_or_pattern` matches is matched by `allowed`."""
    inner = TopicPattern.parse(topic_or_pattern)
    if inner.kind == "exact":
        return allowed.matches(inner.base)
    if allowed.kind == "descendants":
        return not allowed.base or inner.base == allowed.base or inner.base.startswith(allowed.base + "/")
    return allowed.kind == inner.kind == "children" and allowed.base == inner.base
