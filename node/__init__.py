"""Jobmesh node: durable, broker-less job handling over gRPC.

The public API: run a `Node` from a `NodeConfig`, register consumers, add and control
jobs through `node.jobs` (a `JobManager`), see the other nodes through `node.topology`
(a `Topology`), or talk to any node with `JobmeshClient`.
"""

import os

# gRPC's C core logs a line at INFO for every failed connection attempt (a peer of another
# cluster: one per probe). The node logs such a peer once itself; keep grpc to its errors unless
# the operator asked for more. Set before grpc is first imported, which reads it then.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from node.config import ConsumerSpec, JobsConfig, JournalConfig, NodeConfig, ServerConfig, load_config
from node.discovery import (
    DiscoveryConfig,
    InstanceDescription,
    PeerState,
    Topology,
    TopologyEvent,
    TopologyEventType,
    TopologyView,
)
from node.errors import (
    ConfigError,
    DuplicateInstance,
    FailedPrecondition,
    InvalidArgument,
    JobmeshError,
    JobNotFound,
    JournalError,
    PeerUnavailable,
    ResourceExhausted,
    Unavailable,
)
from node.jobs.context import JobContext
from node.journal.connection import Durability
from node.model.job import Job, JobResult, JobState, Outcome
from node.node import Node

__all__ = [
    "ConfigError",
    "ConsumerSpec",
    "DiscoveryConfig",
    "DuplicateInstance",
    "Durability",
    "FailedPrecondition",
    "InstanceDescription",
    "InvalidArgument",
    "Job",
    "JobContext",
    "JobNotFound",
    "JobResult",
    "JobState",
    "JobmeshError",
    "JobsConfig",
    "JournalConfig",
    "JournalError",
    "Node",
    "NodeConfig",
    "Outcome",
    "PeerState",
    "PeerUnavailable",
    "ResourceExhausted",
    "ServerConfig",
    "Topology",
    "TopologyEvent",
    "TopologyEventType",
    "TopologyView",
    "Unavailable",
    "load_config",
]
