"""Scoped client certificates: a certificate from the cluster CA that carries scopes (and topic
patterns) in its SAN is a credential by itself, checked like a bearer token (real nodes, real TLS)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import jobs_pb2, queues_pb2, queues_pb2_grpc

from node.security import pki
from node.security.cluster import TlsMaterial
from node.transport import Transport
from tests.support.job_calls import add_job, rpc_error
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.waiting import wait_for
from tests.test_audit import entries
from tests.test_security import jobmesh, stub_with

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def bundle(node: NodeProcess, out: Path, *args: str) -> tuple[Transport, str]:
    """`jobmesh cluster client ARGS` on the node's data dir; a token-less transport presenting the
    certificate, and the certificate's serial."""
    printed = jobmesh("cluster", "client", "--data-dir", str(node.data_dir), "--out", str(out), *args)
    cert = (out / "client.pem").read_bytes()
    chain = cert + (out / "ca.pem").read_bytes()
    tls = TlsMaterial((out / "ca.pem").read_bytes(), (out / "client.key").read_bytes(), chain)
    serial = pki.identity_of(pki.load_cert(cert)).serial
    assert (serial in printed) == ("--scope" in args)
    return Transport(tls=tls), serial


def test_a_certificate_with_scope_read_can_read_and_cannot_add(nodes: NodeFactory, tmp_path: Path) -> None:
    node = nodes.start("a")
    job_id = add_job(node.stub, "certs/seen")
    reader, serial = bundle(node, tmp_path / "reader", "--name", "dashboard", "--scope", "read")
    with stub_with(node, reader) as stub:
        # It reads, with no token at all
        assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)).job.id == job_id
        # And it may not add, naming the scope and the certificate
        error = rpc_error(lambda: add_job(stub, "certs/new"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'submit'" in error.details()
        assert "certificate 'dashboard'" in error.details()
    assert node.query_journal("SELECT COUNT(*) FROM jobs WHERE topic = 'certs/new'") == [(0,)]

    # And revoking its serial like a token's id refuses it
    jobmesh("token", "revoke", "--data-dir", str(node.data_dir), serial)
    with stub_with(node, reader) as stub:
        wait_for(
            lambda: (
                rpc_error(lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).code()
                == grpc.StatusCode.UNAUTHENTICATED
            ),
            what="the revoked certificate to be refused",
        )


def test_a_submit_certificate_is_limited_to_its_patterns_and_admin_actions_name_it(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node = nodes.start("a")
    submitter, _ = bundle(
        node, tmp_path / "s", "--name", "camera", "--scope", "submit", "--topics", "images/**"
    )
    with stub_with(node, submitter) as stub:
        add_job(stub, "images/cat")
        error = rpc_error(lambda: add_job(stub, "video/x"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "video/x" in error.details()

    admin, serial = bundle(node, tmp_path / "a", "--name", "ops-laptop", "--scope", "admin")
    channel = admin.create_sync_channel(node.address)
    try:
        queues_pb2_grpc.QueueServiceStub(channel).SuspendQueue(queues_pb2.SuspendQueueRequest(name="main"))
    finally:
        channel.close()
    (entry,) = [e for e in entries(node) if e.action.endswith("SuspendQueue")]
    assert entry.caller == f"certificate 'ops-laptop' ({serial})"


def test_a_certificate_without_scopes_still_needs_a_token(nodes: NodeFactory, tmp_path: Path) -> None:
    node = nodes.start("a")
    plain, _ = bundle(node, tmp_path / "p", "--name", "laptop")
    with stub_with(node, plain) as stub:
        error = rpc_error(lambda: stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
