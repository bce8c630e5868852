"""Bytes that are not a valid request get INVALID_ARGUMENT naming the method, on every method."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from jobmesh.v1 import jobs_pb2, workers_pb2

from tests.support.fuzzing import method_call, served_methods
from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess

# Not a protobuf message: field 0 does not exist and wire type 7 is not defined.
GARBAGE = b"\x07\xff\xff\xff\xff"


METHODS = sorted(served_methods(), key=lambda m: m.full_name)


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    return module_nodes.start("undecodable", ["ok/topic=consumers:succeed"])


def call_with_raw_bytes(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> grpc.RpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    call = method_call(channel, method)
    request = iter([payload]) if method.client_streaming else payload
    try:
        result = call(request, timeout=10)
        if method.server_streaming:
            list(result)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{path} accepted undecodable bytes")


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
def test_an_undecodable_request_is_invalid_argument_naming_the_method(
    node: NodeProcess, method: MethodDescriptor
) -> None:
    error = call_with_raw_bytes(node.channel, method, GARBAGE)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"/{method.containing_service.full_name}/{method.name}" in error.details()
    assert method.input_type.full_name in error.details()


def test_garbage_after_a_valid_register_ends_the_worker_stream_with_invalid_argument(
    node: NodeProcess,
) -> None:
    register = workers_pb2.WorkRequest(
        register=workers_pb2.WorkerRegistration(name="w", topics=["garbage/**"], concurrency=1)
    )
    work = node.channel.stream_stream("/jobmesh.v1.WorkerService/Work")

    with pytest.raises(grpc.RpcError) as ended:
        list(work(iter([register.SerializeToString(), GARBAGE]), timeout=10))

    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "WorkerService/Work" in ended.value.details()


def test_undecodable_requests_log_no_error_and_no_traceback_and_the_node_serves_on(node: NodeProcess) -> None:
    for _ in range(50):
        call_with_raw_bytes(node.channel, METHODS[0], GARBAGE)

    job_id = add_job(node.stub, "ok/topic")

    wait_for_state(node.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    log = node.log_text()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert log.count("undecodable request(s) refused") <= 3  # one summary per interval, not one per call
