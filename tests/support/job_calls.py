"""Calls on a node's JobService through a blocking stub, with readable failures.

`wait_for_state` polls GetJob with the suite's deadline wait and, when it times out, says
which state the job was in instead; `rpc_error` returns the error a call must fail with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from node.services.chunking import PayloadAssembler

from .protos import PropertyInput, new_job, state_name
from .waiting import DEFAULT_TIMEOUT_S, wait_for


def add_job(
    stub: jobs_pb2_grpc.JobServiceStub, topic: str, payload: bytes = b"", **properties: PropertyInput
) -> str:
    """Add one job through AddJob and return its id."""
    return str(stub.AddJob(jobs_pb2.AddJobRequest(job=new_job(topic, payload, **properties))).job.id)


def get_job(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, include_payloads: bool = False) -> jobs_pb2.Job:
    """GetJob."""
    job: jobs_pb2.Job = stub.GetJob(
        jobs_pb2.GetJobRequest(job_id=job_id, include_payloads=include_payloads)
    ).job
    return job


@dataclass(frozen=True)
class JobFiles:
    """The files through which a consumer of tests/consumers.py reports and is released.

    It creates `started` when an attempt begins, appends to `attempts` once per attempt,
    and a blocking consumer returns once `release` exists (see tests/consumers.py).
    """

    started: Path
    release: Path
    attempts: Path

    @classmethod
    def under(cls, directory: Path, name: str = "job") -> JobFiles:
        """`NAME.started`, `NAME.release` and `NAME.attempts` in `directory`."""
        return cls(
            directory / f"{name}.started", directory / f"{name}.release", directory / f"{name}.attempts"
        )

    def properties(self) -> dict[str, PropertyInput]:
        """The job properties that name these files."""
        return {f"{kind}_file": str(getattr(self, kind)) for kind in ("started", "release", "attempts")}


def add_running_job(
    stub: jobs_pb2_grpc.JobServiceStub, topic: str, directory: Path, **properties: PropertyInput
) -> tuple[str, JobFiles]:
    """Add a job for a consumer of tests/consumers.py and wait until its attempt started.

    Returns its id and its files (in `directory`, named after the job's topic).
    """
    files = JobFiles.under(directory, topic.replace("/", "_"))
    job_id = add_job(stub, topic, b"", **files.properties(), **properties)
    wait_for(files.started.exists, what=f"job {job_id} to start")
    return job_id, files


def get_payload(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, output: bool = False) -> tuple[bytes, int]:
    """A job's input (or output) payload through GetPayload, every piece checked: (its bytes,
    the size of the largest message that carried a piece)."""
    kind = jobs_pb2.PAYLOAD_KIND_OUTPUT if output else jobs_pb2.PAYLOAD_KIND_INPUT
    assembler = PayloadAssembler(f"job {job_id}")
    largest, whole = 0, 0
    for piece in stub.GetPayload(jobs_pb2.GetPayloadRequest(job_id=job_id, kind=kind), timeout=60):
        largest = max(largest, piece.ByteSize())
        assembler.add(piece.offset, piece.total_size, piece.data, piece.data_crc32)
        whole = piece.payload_crc32
    return assembler.take(whole), largest


def wait_for_state(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, *states: int, timeout: float = DEFAULT_TIMEOUT_S
) -> jobs_pb2.Job:
    """Poll GetJob until the job is in one of `states`; returns it."""
    last: list[jobs_pb2.Job] = []

    def reached() -> jobs_pb2.Job | None:
        job = get_job(stub, job_id)
        last[:] = [job]
        return job if job.state in states else None

    wanted = " or ".join(state_name(s) for s in states)
    try:
        return wait_for(reached, timeout, f"job {job_id} to be {wanted}")
    except AssertionError:
        if last:
            job = last[0]
            raise AssertionError(
                f"job {job_id} is {state_name(job.state)} (retry_count {job.retry_count}, "
                f"message {job.result_message!r}); waited {timeout:.1f}s for {wanted}"
            ) from None
        raise


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run `call`, which must fail with an RpcError; return that error."""
    try:
        result = call()
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected an RPC error, got {result!r}")


def find_all(stub: jobs_pb2_grpc.JobServiceStub, request: jobs_pb2.FindJobsRequest) -> list[jobs_pb2.Job]:
    """Every job a FindJobs request matches, following page tokens."""
    jobs: list[jobs_pb2.Job] = []
    page = jobs_pb2.FindJobsRequest()
    page.CopyFrom(request)
    while True:
        response = stub.FindJobs(page)
        jobs.extend(response.jobs)
        if not response.next_page_token:
            return jobs
        page.page_token = response.next_page_token
