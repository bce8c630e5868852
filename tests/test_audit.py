"""The audit journal with real node processes: admin actions are recorded with their caller,
kept bounded, listed by `jobmesh audit`, and readable by admins only."""

from __future__ import annotations

import json

import grpc
import pytest
from jobmesh.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    jobs_pb2,
    queues_pb2,
    queues_pb2_grpc,
    topology_pb2,
    topology_pb2_grpc,
)

from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.waiting import wait_for
from tests.test_security import token

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

QUEUES = "/jobmesh.v1.QueueService/"


def entries(node: NodeProcess, channel: grpc.Channel | None = None) -> list[audit_pb2.AuditEntry]:
    """Every audit entry of `node`, newest first (over the admin channel unless given)."""
    stub = audit_pb2_grpc.AuditServiceStub(channel or node.channel)
    found: list[audit_pb2.AuditEntry] = []
    page_token = ""
    while True:
        reply = stub.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=2, page_token=page_token), timeout=10
        )
        found += reply.entries
        page_token = reply.next_page_token
        if not page_token:
            return found


def test_admin_actions_are_recorded_with_their_caller_and_only_admins_read_them(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("a")
    queues = queues_pb2_grpc.QueueServiceStub(node.channel)
    # When the local admin suspends and resumes a queue, removes a job that does not exist and
    # sets an instance property
    queues.SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))
    queues.ResumeQueue(queues_pb2.ResumeQueueRequest(name="main"))
    rpc_error(lambda: node.stub.RemoveJob(jobs_pb2.RemoveJobRequest(job_id="nope")))
    topology_pb2_grpc.TopologyServiceStub(node.channel).SetInstanceProperties(
        topology_pb2.SetInstancePropertiesRequest(set={"team": "blue"})
    )
    # And an operator's own admin token suspends a queue too
    ops = token(node, "--scope", "admin", "--name", "ops")
    ops_channel = node.client_transport(token=ops).create_sync_channel(node.address)
    queues_pb2_grpc.QueueServiceStub(ops_channel).SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))
    # Then each action is in the journal, newest first, with who asked and how it ended
    found = [e for e in entries(node) if e.action.startswith("/")]  # RPCs; token commands below
    actions = [(e.action, e.status) for e in found]
    assert actions[:5] == [
        (QUEUES + "SuspendQueue", "OK"),
        ("/jobmesh.v1.TopologyService/SetInstanceProperties", "OK"),
        ("/jobmesh.v1.JobService/RemoveJob", "NOT_FOUND"),
        (QUEUES + "ResumeQueue", "OK"),
        (QUEUES + "SuspendQueue", "OK"),
    ]
    assert found[0].caller.startswith("token 'ops' (")
    assert all(e.caller.startswith("token 'local-admin' (") for e in found[1:5])
    assert 'name: "main"' in found[0].request
    assert "nope" in found[2].request
    assert found[2].message
    assert [e.seq for e in found] == sorted((e.seq for e in found), reverse=True)
    # And the token command that made the ops token is there too, naming the OS user
    wait_for(
        lambda: any(e.action == "token create" for e in entries(node)),
        what="the token command's note to reach the audit journal",
    )
    made = [e for e in entries(node) if e.action == "token create"]
    assert len(made) == 1
    assert made[0].caller.startswith("cli ")
    assert "'ops'" in made[0].request
    # And reads are not actions: listing the audit added nothing
    kept = len(entries(node))
    assert len(entries(node)) == kept

    # And a read token (or a submit token) may not read the audit
    for scope in ("read", "submit"):
        channel = node.client_transport(token=token(node, "--scope", scope)).create_sync_channel(node.address)
        error = rpc_error(lambda channel=channel: entries(node, channel))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'admin'" in error.details()
        channel.close()
    ops_channel.close()


def test_jobmesh_audit_lists_the_journal_and_a_revocation(nodes: NodeFactory) -> None:
    node = nodes.start("a")
    token(node, "--scope", "read", "--name", "leaked")
    listed = node.cli("token", "list", "--data-dir", str(node.data_dir)).stdout
    leaked_id = next(line.split()[0] for line in listed.splitlines() if " leaked " in line)
    assert node.cli("token", "revoke", "--data-dir", str(node.data_dir), leaked_id).returncode == 0
    wait_for(
        lambda: any(e.action == "token revoke" for e in entries(node)),
        what="the revocation to reach the audit journal",
    )

    done = node.cli("audit", "--node", node.address)
    assert done.returncode == 0, done.stderr
    assert "token revoke" in done.stdout
    assert leaked_id in done.stdout
    assert "token create" in done.stdout
    as_json = node.cli("audit", "--node", node.address, "--json")
    assert as_json.returncode == 0, as_json.stderr
    listing = json.loads(as_json.stdout)
    assert listing["entries"][0]["action"] == "token revoke"
    assert listing["total_size"] == len(listing["entries"])


def test_the_journal_keeps_only_the_newest_entries(nodes: NodeFactory) -> None:
    node = nodes.start("a", settings={"audit.max_entries": 3})
    queues = queues_pb2_grpc.QueueServiceStub(node.channel)
    for n in range(6):  # no such queues: refused actions are recorded too, before the refusal returns
        rpc_error(lambda n=n: queues.SuspendQueue(queues_pb2.SuspendQueueRequest(name=f"q{n}")))  # type: ignore[misc]
        newest = audit_pb2_grpc.AuditServiceStub(node.channel).ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=1), timeout=10
        )
        assert newest.entries[0].request == f'name: "q{n}"'
        assert newest.entries[0].status == "NOT_FOUND"

    found = entries(node)
    assert [e.request for e in found] == [f'name: "q{n}"' for n in (5, 4, 3)]
    assert node.query_journal("SELECT COUNT(*) FROM audit") == [(3,)]


def test_an_insecure_node_records_its_actions_as_unauthenticated(nodes: NodeFactory) -> None:
    node = nodes.start("a", extra_args=["--insecure"])
    queues_pb2_grpc.QueueServiceStub(node.channel).SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))

    (entry,) = entries(node)
    assert entry.caller.startswith("unauthenticated ")
    assert entry.action == QUEUES + "SuspendQueue"
