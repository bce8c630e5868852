"""The WorkerService servicer: remote workers connect over one bidirectional stream.

One `Work` call is one worker connection (see protos/jobmesh/v1/workers.proto for the
message flow). The call reads the registration, registers the worker with
`RemoteWorkers`, then runs two loops: this coroutine reads the worker's reports and applies
them to its jobs; a writer task sends what the worker's outbox holds (jobs, stop requests).
Whatever ends the call (the worker closed the stream, the connection broke, a malformed
message, the node shutting down) disconnects the worker, which re-queues its unfinished jobs.

A worker that registers `chunked_payloads` gets an input payload over `CHUNK_BYTES` as
`payload_chunk` messages written back to back just before its assignment (the writer task is the
only one writing after the acknowledgement, so nothing comes between them): no message to it is
larger than about 1 MiB plus the job's properties. The pieces are views of the job's payload,
which the node holds anyway while the job is outstanding (`workers.max_inflight_bytes` bounds
that per worker), so chunking costs no extra copy of the whole payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
from jobmesh.v1 import workers_pb2, workers_pb2_grpc

from node.config import JobsConfig
from node.durations import optional_seconds
from node.errors import InvalidArgument, JobmeshError
from node.jobs.remote import Assign, Command, RemoteWorker, RemoteWorkers
from node.model.job import JobResult, Outcome
from node.properties import fill_proto_properties, validate_name, value_from_proto
from node.services.chunking import crc32, needs_chunks, slices
from node.services.paging import page_of
from node.services.status import rpc, status_for
from node.waits import wait_event

log = logging.getLogger(__name__)

MAX_ETA_S = 10 * 365 * 86400.0
DEFAULT_PAYLOAD_BYTES = JobsConfig.max_payload_bytes
_OUTCOMES = {
    workers_pb2.WORK_OUTCOME_SUCCEEDED: Outcome.SUCCEEDED,
    workers_pb2.WORK_OUTCOME_FAILED: Outcome.FAILED,
    workers_pb2.WORK_OUTCOME_CANCELLED: Outcome.CANCELLED,
}


def command_to_proto(command: Command, chunked: bool = False) -> Iterator[workers_pb2.WorkResponse]:
    """The messages that carry an outbox command to the worker: for a job whose payload is
    chunked (`chunked` and over CHUNK_BYTES), its pieces, then the assignment."""
    if not isinstance(command, Assign):
        yield workers_pb2.WorkResponse(
            stop=workers_pb2.WorkStop(job_id=command.job_id, attempt=command.attempt, reason=command.reason)
        )
        return
    job = command.job
    payload = job.payload or b""
    assignment = workers_pb2.WorkAssignment(
        job_id=job.id,
        attempt=job.attempt,
        topic=job.topic,
        retry_count=job.retry_count,
        max_retries=job.max_retries,
        queue=job.queue,
        payload_size=len(payload),
    )
    assignment.created_time.FromMicroseconds(job.created_us)
    fill_proto_properties(assignment.properties, job.properties_json)
    if not (chunked and needs_chunks(len(payload))):
        assignment.payload, assignment.payload_crc32 = payload, crc32(payload)
        yield workers_pb2.WorkResponse(assignment=assignment)
        return
    whole = 0  # the whole payload's CRC-32, extended piece by piece as they go out
    for offset, piece in slices(payload):
        piece_crc, whole = crc32(piece), crc32(piece, whole)
        yield workers_pb2.WorkResponse(
            payload_chunk=workers_pb2.WorkPayloadChunk(
                job_id=job.id,
                attempt=job.attempt,
                offset=offset,
                total_size=len(payload),
                data=piece.tobytes(),
                data_crc32=piece_crc,
            )
        )
    assignment.payload_chunked, assignment.payload_crc32 = True, whole
    yield workers_pb2.WorkResponse(assignment=assignment)


def result_from_proto(
    result: workers_pb2.WorkResult, max_payload_bytes: int = DEFAULT_PAYLOAD_BYTES
) -> JobResult:
    """Validate a worker's result. A success whose output payload is over `max_payload_bytes`
    ends the job in ERROR instead: the node must not keep what it may not pass on (an origin
    refuses a larger output from a peer), and a retry would produce the same."""
    outcome = _OUTCOMES.get(result.outcome)
    if outcome is None:
        raise InvalidArgument(
            f"result.outcome is {result.outcome}; use WORK_OUTCOME_SUCCEEDED, _FAILED or _CANCELLED"
        )
    delay = optional_seconds(result, "retry_delay", "result.retry_delay")
    if delay is not None and not 0 <= delay <= MAX_ETA_S:
        raise InvalidArgument(f"result.retry_delay is {delay:g}s; use a duration from 0 to {MAX_ETA_S:g}s")
    output = result.output_payload
    if outcome is Outcome.SUCCEEDED and len(output) > max_payload_bytes:
        return JobResult.cancelled(
            f"the worker's output payload is {len(output)} bytes; the node keeps at most "
            f"{max_payload_bytes} (jobs.max_payload_bytes)"
        )
    return JobResult(outcome, result.message, delay, output or None)


def _job_key(kind: str, job_id: str, attempt: int) -> None:
    if not job_id:
        raise InvalidArgument(f"{kind}.job_id is empty; copy job_id from the job's assignment")
    if attempt <= 0:
        raise InvalidArgument(
            f"{kind}.attempt is {attempt}; copy attempt from the job's assignment (attempts start at 1)"
        )


def _connection_number(worker_id: str) -> int:
    """The number in a connection id (`w12` -> 12); ids grow, so it orders connections."""
    return int(worker_id.removeprefix("w"))


def list_workers(
    workers: Sequence[RemoteWorker], request: workers_pb2.ListWorkersRequest
) -> workers_pb2.ListWorkersResponse:
    """One page of the connected workers, oldest connection first.

    The page token is the connection number of the last worker of the previous page, so a
    worker that disconnects between pages shifts nothing and none is listed twice.
    """
    connected = [w for w in workers if w.connected]
    page = page_of("workers", connected, lambda w: (_connection_number(w.id),), request)
    response = workers_pb2.ListWorkersResponse(
        total_size=page.total_size, next_page_token=page.next_page_token
    )
    for worker in page.items:
        response.workers.add(
            worker_id=worker.id,
            name=worker.name,
            topics=[p.text for p in worker.patterns],
            concurrency=worker.concurrency,
            in_flight=worker.outstanding,
        )
    return response


class WorkerServicer(workers_pb2_grpc.WorkerServiceServicer):
    """Serves WorkerService: connects remote workers to the node's `RemoteWorkers`."""

    def __init__(
        self, workers: RemoteWorkers, instance_id: str, max_payload_bytes: int = DEFAULT_PAYLOAD_BYTES
    ) -> None:
        """`max_payload_bytes` (`jobs.max_payload_bytes`) bounds the output payloads kept."""
        self._workers = workers
        self._instance_id = instance_id
        self._max_payload_bytes = max_payload_bytes
        self._calls = 0
        self._no_calls = asyncio.Event()
        self._no_calls.set()

    async def drained(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every Work call has returned: a call still open when
        the server stops is cancelled by grpc, which prints that cancellation's traceback."""
        await wait_event(self._no_calls, timeout_s)
        for _ in range(3):  # grpc sends each returned call's status a loop turn or two later
            await asyncio.sleep(0)

    async def Work(  # type: ignore[override]  # the read/write API: reads and writes run concurrently
        self,
        request_iterator: AsyncIterator[workers_pb2.WorkRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        worker: RemoteWorker | None = None
        chunked = False
        reason = "the stream ended"
        self._calls += 1
        self._no_calls.clear()
        try:
            registered = await self._register(context)
            if registered is not None:
                worker, chunked = registered
                reason = await self._serve(worker, chunked, context)
        except JobmeshError as e:
            reason = f"bad message: {e}"
            log.warning("remote worker %s: %s", worker.name if worker else context.peer(), e)
            await context.abort(status_for(e), str(e))
        except (asyncio.CancelledError, grpc.RpcError):
            # The connection broke (e.g. the worker process died). Ending normally keeps grpc
            # from logging the cancellation as an error; there is nobody left to answer.
            reason = "the connection broke"
        except Exception as e:  # a bug here must not take the node down; the worker may retry
            reason = f"internal error: {e}"
            log.exception("remote worker %s: internal error", worker.name if worker else context.peer())
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in WorkerService.Work: {e}")
        finally:
            if worker is not None:
                self._workers.disconnect(worker, reason)
            self._calls -= 1
            if not self._calls:
                self._no_calls.set()

    @rpc
    async def ListWorkers(
        self, request: workers_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.ListWorkersResponse:
        return list_workers(self._workers.workers, request)

    async def _register(self, context: grpc.aio.ServicerContext) -> tuple[RemoteWorker, bool] | None:
        """Read the registration and register the worker; (it, whether it takes chunked payloads),
        or None if the stream ended first."""
        first = await context.read()
        if first is grpc.aio.EOF:
            return None
        kind = first.WhichOneof("kind")
        if kind != "register":
            raise InvalidArgument(
                f"the first message must be `register` (a WorkerRegistration), not `{kind or 'empty'}`"
            )
        registration = first.register
        worker = self._workers.connect(
            registration.name or context.peer(), list(registration.topics), registration.concurrency
        )
        return worker, registration.chunked_payloads

    async def _serve(self, worker: RemoteWorker, chunked: bool, context: grpc.aio.ServicerContext) -> str:
        """Acknowledge the registration, then read reports and write the outbox until the stream
        or the node ends; returns why."""
        acknowledgement = workers_pb2.WorkerRegistered(
            instance_id=self._instance_id, worker_id=worker.id, concurrency=worker.concurrency
        )
        # Written before the writer task starts, so it goes out before any job.
        await context.write(workers_pb2.WorkResponse(registered=acknowledgement))
        reader = asyncio.create_task(self._read(worker, context), name=f"worker-{worker.id}-reader")
        writer = asyncio.create_task(self._write(worker, chunked, context), name=f"worker-{worker.id}-writer")
        closing = asyncio.create_task(worker.closing.wait(), name=f"worker-{worker.id}-closing")
        try:
            await asyncio.wait({reader, writer, closing}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                return reader.result()  # raises JobmeshError for a malformed message
            if closing.done():
                return "the node is shutting down"
            return "sending to the worker failed"
        finally:
            for task in (reader, writer, closing):
                task.cancel()
            await asyncio.gather(reader, writer, closing, return_exceptions=True)

    async def _read(self, worker: RemoteWorker, context: grpc.aio.ServicerContext) -> str:
        """Apply the worker's reports until it closes its side of the stream."""
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return "the worker closed the stream"
            self._apply(worker, message)

    async def _write(self, worker: RemoteWorker, chunked: bool, context: grpc.aio.ServicerContext) -> None:
        """Send the worker's outbox, in order, for as long as the stream lives (a chunked
        payload's pieces one message at a time, each written before the next is made)."""
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            while True:
                command = await worker.outbox.get()
                for message in command_to_proto(command, chunked):
                    await context.write(message)

    def _apply(self, worker: RemoteWorker, message: workers_pb2.WorkRequest) -> None:
        """Apply one report of the worker; raises InvalidArgument for a malformed one."""
        kind = message.WhichOneof("kind")
        if kind == "result":
            result = message.result
            _job_key(kind, result.job_id, result.attempt)
            outcome = result_from_proto(result, self._max_payload_bytes)
            if not self._workers.complete(worker, result.job_id, result.attempt, outcome):
                log.debug(
                    "worker %s: ignoring the result of stale attempt %s/%d",
                    worker.id,
                    result.job_id,
                    result.attempt,
                )
            return
        if kind == "progress":
            progress = message.progress
            _job_key(kind, progress.job_id, progress.attempt)
            if progress.HasField("total_steps") and progress.total_steps < 0:
                raise InvalidArgument(f"progress.total_steps is {progress.total_steps}; use >= 0")
            if progress.increment_steps < 0:
                raise InvalidArgument(f"progress.increment_steps is {progress.increment_steps}; use >= 0")
            eta_s = optional_seconds(progress, "eta", "progress.eta")
            if eta_s is not None and not 0 <= eta_s <= MAX_ETA_S:
                raise InvalidArgument(f"progress.eta is {eta_s:g}s; use a duration from 0 to {MAX_ETA_S:g}s")
            job_context = worker.context_for(progress.job_id, progress.attempt)
            if job_context is None:
                return
            if progress.HasField("total_steps"):
                job_context.init_progress(progress.total_steps)
            if progress.increment_steps:
                job_context.increment_progress(progress.increment_steps)
            if eta_s is not None:  # last: an explicit ETA beats the estimate from the pace
                job_context.update_eta(eta_s)
            return
        if kind == "log":
            line = message.log
            _job_key(kind, line.job_id, line.attempt)
            job_context = worker.context_for(line.job_id, line.attempt)
            if job_context is not None:
                job_context.log(line.message)
            return
        if kind == "property":
            prop = message.property
            _job_key(kind, prop.job_id, prop.attempt)
            validate_name(prop.name, "property.name")
            value = value_from_proto(prop.value, f"property.value ({prop.name!r})")
            job_context = worker.context_for(prop.job_id, prop.attempt)
            if job_context is not None:
                job_context.set_property(prop.name, value)
            return
        if kind == "register":
            raise InvalidArgument("`register` may only be the first message of a stream")
        raise InvalidArgument("empty WorkRequest: set one of register, progress, log, property, result")
