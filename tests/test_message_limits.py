"""The message-size limits the README tells clients in other languages about: gRPC's default
4 MiB receive limit (the same C core default in Python, C++, Ruby and PHP; Go, Java and grpc-js
chose the same) refuses a job with a larger payload, the documented option lets it through,
and sending needs no option."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from node.config import JobsConfig
from node.security import bearer, credentials, pki
from tests.support.job_calls import get_job, rpc_error
from tests.support.launcher import TESTS_DIR, NodeFactory, NodeProcess
from tests.support.protos import new_job

# The receive limit the README tells clients to set: jobs.max_payload_bytes + 4 MiB.
README_RECEIVE_LIMIT = 71303168
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
PAYLOAD = b"\x5a" * (DEFAULT_RECEIVE_LIMIT + 1024 * 1024)


def plain_client(node: NodeProcess, options: Sequence[tuple[str, int]] = ()) -> grpc.Channel:
    """A client channel with gRPC's defaults (none of the node package's limits): TLS with the
    node's client credentials and its admin token, as a client in another language makes it."""
    found = credentials.find(node.cli_environ(), None)
    assert found.tls is not None
    assert found.token
    tls = grpc.ssl_channel_credentials(found.tls.ca, found.tls.key, found.tls.chain)
    channel = grpc.secure_channel(
        node.address, tls, options=[("grpc.ssl_target_name_override", pki.SERVER_NAME), *options]
    )
    # The token as call metadata through an interceptor (call credentials would start a thread pool)
    return grpc.intercept_channel(channel, bearer.SyncBearer(found.token))


def test_a_payload_over_4_mib_needs_the_receive_limit_the_readme_names(nodes: NodeFactory) -> None:
    node = nodes.start("limits")
    # Given a client with gRPC's default limits: sending a 5 MiB payload works
    with plain_client(node) as plain:
        stub = jobs_pb2_grpc.JobServiceStub(plain)
        added = stub.AddJob(jobs_pb2.AddJobRequest(job=new_job("nobody/consumes", PAYLOAD)), timeout=30)
        job_id = added.job.id
        # But receiving it back does not
        error = rpc_error(
            lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=True), timeout=30)
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Received message larger than max" in (error.details() or "")

    # When the client raises its receive limit as the README says, the payload arrives whole
    options = [("grpc.max_receive_message_length", README_RECEIVE_LIMIT)]
    with plain_client(node, options) as raised:
        job = get_job(jobs_pb2_grpc.JobServiceStub(raised), job_id, include_payloads=True)
    assert job.payload == PAYLOAD


def test_the_readme_names_the_limit_the_node_really_has() -> None:
    """The node's limit is its jobs.max_payload_bytes plus 4 MiB of envelope; the README says so."""
    default_payload_limit = JobsConfig().max_payload_bytes
    assert default_payload_limit + 4 * 1024 * 1024 == README_RECEIVE_LIMIT
    readme = (TESTS_DIR.parent / "README.md").read_text()
    assert f"68 MiB = {README_RECEIVE_LIMIT} bytes" in readme


def test_a_client_refusing_a_large_response_leaves_one_warning_line_not_a_traceback(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("limits-log")
    with plain_client(node) as plain:
        stub = jobs_pb2_grpc.JobServiceStub(plain)
        job_id = stub.AddJob(
            jobs_pb2.AddJobRequest(job=new_job("nobody/consumes", PAYLOAD)), timeout=30
        ).job.id
        for _ in range(3):
            rpc_error(
                lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=True), timeout=30)
            )

    log = node.log_text()
    assert "Traceback" not in log
    assert "ExecuteBatchError" not in log
