"""A small blocking Python client for a node's services, with typed errors.

with JobmeshClient("127.0.0.1:7710") as client:
    job = client.add_job("images/resize", {"width": 100})
    done = client.wait(job.id, timeout_s=30)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from jobmesh.v1 import (
    audit_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2_grpc,
    schedules_pb2_grpc,
    topics_pb2_grpc,
    topology_pb2_grpc,
    workers_pb2_grpc,
)

from node.errors import DataLoss, JobmeshError
from node.properties import PropertyValue, value_to_proto
from node.services.chunking import PayloadAssembler
from node.submitter import METHOD as SUBMIT_METHOD
from node.submitter import SubmitError, Submitter
from node.transport import Transport, client_transport

R = TypeVar("R")
GET_PAYLOAD_METHOD = "/jobmesh.v1.JobService/GetPayload"
FINISHED_STATES = frozenset(
    {
        jobs_pb2.JOB_STATE_SUCCEEDED,
        jobs_pb2.JOB_STATE_STOPPED,
        jobs_pb2.JOB_STATE_GIVEN_UP,
        jobs_pb2.JOB_STATE_ERROR,
        jobs_pb2.JOB_STATE_DROPPED,
    }
)


class RpcError(JobmeshError):
    """A call to a node failed; `code` is the gRPC status code, the message the node's text."""

    def __init__(self, code: grpc.StatusCode, message: str, method: str) -> None:
        super().__init__(f"{method}: {code.name}: {message}")
        self.code = code
        self.details = message
        self.method = method

    @classmethod
    def wrap(cls, error: grpc.RpcError, method: str) -> RpcError:
        """The typed error for a `grpc.RpcError` (e.g. one raised while iterating a stream)."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return cls(code, details or "", method)


def _method_name(method: Callable[..., Any]) -> str:
    """`/pkg.Service/Method` of a stub method (bytes on a plain channel, str behind interceptors)."""
    name = getattr(method, "_method", None)
    if isinstance(name, bytes):
        return name.decode()
    return name if isinstance(name, str) else "?"


def set_seconds(message: Message, name: str, seconds: float) -> None:
    """Set the `google.protobuf.Duration` field `name` of `message` to `seconds`."""
    getattr(message, name).FromNanoseconds(round(seconds * 1e9))


def new_job(
    topic: str,
    properties: Mapping[str, PropertyValue] | None = None,
    payload: bytes = b"",
    *,
    dedup_key: str = "",
    max_retries: int | None = None,
    retry_delay_s: float | None = None,
    timeout_s: float | None = None,
) -> jobs_pb2.NewJob:
    """A NewJob proto from Python values; None leaves the queue's setting in force."""
    proto = jobs_pb2.NewJob(topic=topic, payload=payload, dedup_key=dedup_key)
    for name, value in (properties or {}).items():
        proto.properties[name].CopyFrom(value_to_proto(value, f"properties[{name!r}]"))
    if max_retries is not None:
        proto.max_retries = max_retries
    if retry_delay_s is not None:
        set_seconds(proto, "retry_delay", retry_delay_s)
    if timeout_s is not None:
        set_seconds(proto, "timeout", timeout_s)
    return proto


class JobmeshClient:
    """Blocking client of one node. Thread-safe; close it (or use `with`) when done.

    Every call waits for a node that is not serving yet (still starting, restarting) until
    `timeout_s`, then fails with DEADLINE_EXCEEDED; `wait_ready` waits for the connection alone.
    """

    def __init__(self, target: str, timeout_s: float = 30.0, transport: Transport | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = (transport or client_transport(os.environ)).create_sync_channel(target)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        """JobService stub (use `call` for typed errors)."""
        self._stub = self.jobs
        self.queues = queues_pb2_grpc.QueueServiceStub(self._channel)
        """QueueService stub (use `call` for typed errors)."""
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(self._channel)
        """ScheduleService stub (use `call` for typed errors)."""
        self.topics = topics_pb2_grpc.TopicServiceStub(self._channel)
        """TopicService stub (use `call` for typed errors)."""
        self.topology = topology_pb2_grpc.TopologyServiceStub(self._channel)
        """TopologyService stub (use `call` for typed errors, `stream` for WatchTopology)."""
        self.workers = workers_pb2_grpc.WorkerServiceStub(self._channel)
        """WorkerService stub (use `call` for typed errors)."""
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        """AuditService stub (use `call` for typed errors)."""
        # add/add_job go over one SubmitJobs stream, shared by this client's threads.
        self._submitter = Submitter(
            lambda requests: self.jobs.SubmitJobs(requests, wait_for_ready=True), timeout_s
        )

    def __enter__(self) -> JobmeshClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (after the answers to jobs still being added)."""
        self._submitter.close()
        self._channel.close()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the channel to connect (a node that is starting); True if it did."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _call(self, method: str, request: Any) -> Any:
        return self.call(getattr(self._stub, method), request)

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        """Call a unary stub method with this client's timeout; gRPC errors become RpcError.

        The call waits for a node that is not serving yet (wait_for_ready) until the deadline.
        """
        try:
            return method(request, timeout=self.timeout_s, wait_for_ready=True)
        except grpc.RpcError as e:
            raise RpcError.wrap(e, _method_name(method)) from e

    def stream(self, method: Callable[..., Any], request: Any, timeout_s: float | None = None) -> Any:
        """Open a server stream (no deadline unless `timeout_s`): iterate it, `cancel()` it when done.

        Iteration raises `grpc.RpcError` (use `RpcError.wrap` for the typed error).
        """
        return method(request, timeout=timeout_s, wait_for_ready=True)

    def watch(self, request: jobs_pb2.WatchJobsRequest, timeout_s: float | None = None) -> Any:
        """Open a WatchJobs stream (see `stream`)."""
        return self.stream(self._stub.WatchJobs, request, timeout_s)

    def head_seq(self) -> int:
        """The sequence number of the node's newest job event."""
        call = self.watch(jobs_pb2.WatchJobsRequest(after_seq=-1, job_ids=["-"]), self.timeout_s)
        try:
            return int(next(call).head_seq)
        except grpc.RpcError as e:
            raise RpcError.wrap(e, "WatchJobs") from e
        finally:
            call.cancel()

    def add_job(
        self,
        topic: str,
        properties: Mapping[str, PropertyValue] | None = None,
        payload: bytes = b"",
        dedup_key: str = "",
    ) -> jobs_pb2.Job:
        """Add one job; returns it as committed (the existing job when `dedup_key` matched one)."""
        return self.add(new_job(topic, properties, payload, dedup_key=dedup_key))

    def add(self, job: jobs_pb2.NewJob) -> jobs_pb2.Job:
        """Add one job built with `new_job`; returns it as committed.

        Jobs go over one SubmitJobs stream that this client's threads share (one message each
        way instead of a unary call per job; jobs that queue while two messages wait for their
        answers go together in the next); the errors are AddJob's.
        """
        try:
            return self._submitter.add(job).job
        except SubmitError as e:
            raise RpcError(e.code, e.details, SUBMIT_METHOD) from None

    def add_jobs(self, jobs: Sequence[jobs_pb2.NewJob]) -> list[str]:
        """Add many jobs atomically; returns their ids."""
        return list(self._call("AddJobs", jobs_pb2.AddJobsRequest(jobs=jobs)).job_ids)

    def get_job(self, job_id: str, include_payloads: bool = False, include_log: bool = False) -> jobs_pb2.Job:
        """One job by id."""
        request = jobs_pb2.GetJobRequest(
            job_id=job_id, include_payloads=include_payloads, include_log=include_log
        )
        return self._call("GetJob", request).job  # type: ignore[no-any-return]

    def get_payload(self, job_id: str, output: bool = False) -> bytes:
        """A job's input payload (its output payload with `output`), downloaded with GetPayload
        in pieces of at most 1 MiB and checked against its CRC-32 (RpcError DATA_LOSS if it
        does not match; NOT_FOUND for an unknown job or one without that payload)."""
        kind = jobs_pb2.PAYLOAD_KIND_OUTPUT if output else jobs_pb2.PAYLOAD_KIND_INPUT
        request = jobs_pb2.GetPayloadRequest(job_id=job_id, kind=kind)
        what = f"the {'output' if output else 'input'} payload of job {job_id}"
        assembler = PayloadAssembler(what)
        whole = 0
        try:
            for piece in self._stub.GetPayload(request, timeout=self.timeout_s, wait_for_ready=True):
                assembler.add(piece.offset, piece.total_size, piece.data, piece.data_crc32)
                whole = piece.payload_crc32
            return assembler.take(whole)
        except grpc.RpcError as e:
            raise RpcError.wrap(e, GET_PAYLOAD_METHOD) from e
        except DataLoss as e:
            raise RpcError(grpc.StatusCode.DATA_LOSS, str(e), GET_PAYLOAD_METHOD) from e

    def get_job_with_payloads(self, job_id: str, include_log: bool = False) -> jobs_pb2.Job:
        """One job with both its payloads, whatever their size: GetJob inlines those of at most
        1 MiB; the larger ones come with `get_payload`."""
        job = self.get_job(job_id, include_payloads=True, include_log=include_log)
        if job.payload_omitted:
            job.payload = self.get_payload(job_id)
            job.payload_omitted = False
        if job.output_payload_omitted:
            job.output_payload = self.get_payload(job_id, output=True)
            job.output_payload_omitted = False
        return job

    def find_jobs(self, request: jobs_pb2.FindJobsRequest) -> jobs_pb2.FindJobsResponse:
        """One page of a query."""
        return self._call("FindJobs", request)  # type: ignore[no-any-return]

    def iter_jobs(self, request: jobs_pb2.FindJobsRequest) -> Iterator[jobs_pb2.Job]:
        """Every job of a query, fetching page after page."""
        page_request = jobs_pb2.FindJobsRequest()
        page_request.CopyFrom(request)
        while True:
            page = self.find_jobs(page_request)
            yield from page.jobs
            if not page.next_page_token:
                return
            page_request.page_token = page.next_page_token

    def stop_job(self, job_id: str) -> jobs_pb2.Job:
        """Stop a job (see StopJob)."""
        return self._call("StopJob", jobs_pb2.StopJobRequest(job_id=job_id)).job  # type: ignore[no-any-return]

    def remove_job(self, job_id: str) -> jobs_pb2.RemoveJobResponse:
        """Remove a job (see RemoveJob)."""
        return self._call("RemoveJob", jobs_pb2.RemoveJobRequest(job_id=job_id))  # type: ignore[no-any-return]

    def retry_job(self, job_id: str) -> jobs_pb2.Job:
        """Run a finished job again."""
        return self._call("RetryJob", jobs_pb2.RetryJobRequest(job_id=job_id)).job  # type: ignore[no-any-return]

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_poll: Callable[[jobs_pb2.Job], None] | None = None,
    ) -> jobs_pb2.Job:
        """Poll until the job is finished; returns it. TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.02
        while True:
            job = self.get_job(job_id)
            if on_poll is not None:
                on_poll(job)
            if job.state in FINISHED_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {jobs_pb2.JobState.Name(job.state)} after {timeout_s}s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
