"""The standard services a node serves beside JobService: health checking and reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.support.fixtures import shared_node
from tests.support.job_calls import rpc_error
from tests.support.launcher import NodeProcess

JOB_SERVICE = "jobmesh.v1.JobService"
WORKER_SERVICE = "jobmesh.v1.WorkerService"


node = shared_node("services")


@pytest.mark.parametrize("service", ["", JOB_SERVICE, WORKER_SERVICE])
def test_health_reports_serving(node: NodeProcess, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)

    response = stub.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(node: NodeProcess) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)

    error = rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))

    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_serving(node: NodeProcess) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=JOB_SERVICE), timeout=5)

    first = next(iter(stream))
    stream.cancel()

    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_job_worker_health_and_reflection_services(node: NodeProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)

    (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))

    names = {s.name for s in response.list_services_response.service}
    assert names >= {
        JOB_SERVICE,
        WORKER_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_reflection_describes_the_worker_stream_as_bidirectional(node: NodeProcess) -> None:
    database = ProtoReflectionDescriptorDatabase(node.channel)

    file_proto: descriptor_pb2.FileDescriptorProto = database.FindFileContainingSymbol(WORKER_SERVICE)

    (service,) = [s for s in file_proto.service if s.name == "WorkerService"]
    methods = {m.name: m for m in service.method}
    assert set(methods) == {"Work", "ListWorkers"}
    work = methods["Work"]
    assert (work.client_streaming, work.server_streaming) == (True, True)
    assert not methods["ListWorkers"].client_streaming
    assert (work.input_type, work.output_type) == (".jobmesh.v1.WorkRequest", ".jobmesh.v1.WorkResponse")


def test_reflection_describes_job_service_methods_with_their_types(node: NodeProcess) -> None:
    # A client with no stubs can learn the API from the node alone
    database = ProtoReflectionDescriptorDatabase(node.channel)

    file_proto: descriptor_pb2.FileDescriptorProto = database.FindFileContainingSymbol(JOB_SERVICE)

    (service,) = [s for s in file_proto.service if s.name == "JobService"]
    methods = {m.name: (m.input_type, m.output_type) for m in service.method}
    assert set(methods) == {
        "AddJob",
        "AddJobs",
        "SubmitJobs",
        "GetJob",
        "GetPayload",
        "FindJobs",
        "StopJob",
        "RemoveJob",
        "RetryJob",
        "WatchJobs",
        "GetStatistics",
        "PurgeJobs",
    }
    assert methods["AddJob"] == (".jobmesh.v1.AddJobRequest", ".jobmesh.v1.AddJobResponse")
    assert file_proto.package == "jobmesh.v1"
