"""Health checking, complete: an unknown service is named in the error, List answers every service."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeFactory, NodeProcess


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    return module_nodes.start("health")


def test_an_unknown_service_is_not_found_with_a_message_naming_it_and_the_known_ones(
    node: NodeProcess,
) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)

    error = rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no service 'no.such.Service' is served here" in error.details()
    assert "jobmesh.v1.JobService" in error.details()


def test_list_answers_the_status_of_every_service_without_an_error_in_the_log(node: NodeProcess) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)

    listed = stub.List(health_pb2.HealthListRequest(), timeout=5)

    serving = health_pb2.HealthCheckResponse.SERVING
    assert {"", "jobmesh.v1.JobService", "jobmesh.v1.WorkerService"} <= set(listed.statuses)
    assert all(status.status == serving for status in listed.statuses.values())
    assert " ERROR " not in node.log_text()
