"""A small blocking Python client for a node's job, queue and schedule services, with typed errors.

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
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc, queues_pb2_grpc, schedules_pb2_grpc

from node.errors import JobmeshError
from node.properties import PropertyValue, value_to_proto
from node.transport import Transport, client_transport

R = TypeVar("R")
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


def new_job(
    topic: str, properties: Mapping[str, PropertyValue] | None = None, payload: bytes = b""
) -> jobs_pb2.NewJob:
    """A NewJob proto from Python values."""
    proto = jobs_pb2.NewJob(topic=topic, payload=payload)
    for name, value in (properties or {}).items():
        proto.properties[name].CopyFrom(value_to_proto(value, f"properties[{name!r}]"))
    return proto


class JobmeshClient:
    """Blocking client of one node. Thread-safe; close it (or use `with`) when done."""

    def __init__(self, target: str, timeout_s: float = 30.0, transport: Transport | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = (transport or client_transport(os.environ)).create_sync_channel(target)
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.queues = queues_pb2_grpc.QueueServiceStub(self._channel)
        """QueueService stub (use `call` for typed errors)."""
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(self._channel)
        """ScheduleService stub (use `call` for typed errors)."""

    def __enter__(self) -> JobmeshClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        return self.call(getattr(self._stub, method), request)

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        """Call a unary stub method with this client's timeout; gRPC errors become RpcError."""
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise RpcError(e.code(), e.details() or "", getattr(method, "_method", b"?").decode()) from e

    def watch(self, request: jobs_pb2.WatchJobsRequest, timeout_s: float | None = None) -> Any:
        """Open a WatchJobs stream: iterate it for responses, `cancel()` it when done.

        Iteration raises `grpc.RpcError` (use `RpcError.wrap` for the typed error).
        """
        return self._stub.WatchJobs(request, timeout=timeout_s)

    def head_seq(self) -> int:
        """The sequence number of the node's newest job event."""
        call = self._stub.WatchJobs(
            jobs_pb2.WatchJobsRequest(after_seq=-1, job_ids=["-"]), timeout=self.timeout_s
        )
        try:
            return int(next(call).head_seq)
        except grpc.RpcError as e:
            raise RpcError(e.code(), e.details() or "", "WatchJobs") from e
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
        job = new_job(topic, properties, payload)
        job.dedup_key = dedup_key
        response = self._call("AddJob", jobs_pb2.AddJobRequest(job=job))
        return response.job  # type: ignore[no-any-return]

    def add_jobs(self, jobs: Sequence[jobs_pb2.NewJob]) -> list[str]:
        """Add many jobs atomically; returns their ids."""
        return list(self._call("AddJobs", jobs_pb2.AddJobsRequest(jobs=jobs)).job_ids)

    def get_job(self, job_id: str, include_payloads: bool = False, include_log: bool = False) -> jobs_pb2.Job:
        """One job by id."""
        request = jobs_pb2.GetJobRequest(
            job_id=job_id, include_payloads=include_payloads, include_log=include_log
        )
        return self._call("GetJob", request).job  # type: ignore[no-any-return]

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
