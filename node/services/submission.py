"""SubmitJobs: jobs added over one stream, answered in order after their commit.

Each message becomes its own add (so concurrent messages share the journal's group commits):
one journal operation for the jobs a client packed into it (`more`), each job checked and
answered on its own. A reader runs ahead of the writer by at most IN_FLIGHT jobs, so a client
that sends without reading is held by flow control, not buffered without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

import grpc
from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument, JobmeshError
from node.services.status import status_for

log = logging.getLogger(__name__)

IN_FLIGHT = 1024
"""Jobs of one stream read ahead of the responses written (documented in jobs.proto)."""
MAX_JOBS_PER_REQUEST = IN_FLIGHT
"""Jobs one request may carry, `job` and `more` together (documented in jobs.proto): no more
than the read-ahead holds, so that a request always finds room once those before it are answered."""

Added = tuple[jobs_pb2.Job, bool] | Exception
"""One job's outcome: it as committed and whether it was deduplicated, or why it was refused."""
AddEach = Callable[[Sequence[jobs_pb2.NewJob]], Awaitable[list[Added]]]
"""Add jobs, each on its own; returns each one's outcome, in order."""

Answer = jobs_pb2.SubmitJobsResponse | jobs_pb2.SubmitJobsAnswer
"""What answers one job: a response for a request's `job`, an answer for each of its `more`."""


class _ReadAhead:
    """Jobs read and not yet answered, at most `limit` (a request is never larger: see `read`)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._taken = 0
        self._room = asyncio.Event()

    async def take(self, jobs: int) -> None:
        while self._taken + jobs > self._limit:
            self._room.clear()
            await self._room.wait()
        self._taken += jobs

    def give(self, jobs: int) -> None:
        self._taken -= jobs
        self._room.set()


async def answer(
    requests: AsyncIterator[jobs_pb2.SubmitJobsRequest], add: AddEach
) -> AsyncGenerator[jobs_pb2.SubmitJobsResponse, None]:
    """The responses to `requests`, in order; a refused job is an answer with `error`. A request
    with more than MAX_JOBS_PER_REQUEST jobs raises InvalidArgument after the answers to those
    before it (nothing after it is read)."""
    pending: asyncio.Queue[tuple[asyncio.Task[jobs_pb2.SubmitJobsResponse], int] | None] = asyncio.Queue()
    read_ahead = _ReadAhead(IN_FLIGHT)

    async def read() -> None:
        try:
            async for request in requests:
                jobs = 1 + len(request.more)
                if jobs > MAX_JOBS_PER_REQUEST:  # a broken client: it ends the call, read no further
                    raise InvalidArgument(
                        f"request {request.request_id}'s more holds {len(request.more)} jobs; one "
                        f"request carries at most {MAX_JOBS_PER_REQUEST} (job and "
                        f"{MAX_JOBS_PER_REQUEST - 1} in more); none of its jobs was added"
                    )
                await read_ahead.take(jobs)
                pending.put_nowait((asyncio.ensure_future(_request(request, add)), jobs))
        finally:
            pending.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while (item := await pending.get()) is not None:
            task, jobs = item
            response = await task
            read_ahead.give(jobs)
            yield response
        reader.result()  # the request stream's own error (e.g. the client cancelled) goes on
    finally:
        reader.cancel()
        while not pending.empty():
            item = pending.get_nowait()
            if item is not None:
                item[0].add_done_callback(_retrieve)  # its adds go on to their commit; nobody waits


async def _request(request: jobs_pb2.SubmitJobsRequest, add: AddEach) -> jobs_pb2.SubmitJobsResponse:
    response = jobs_pb2.SubmitJobsResponse(request_id=request.request_id)
    if not request.more and request.HasField("job"):  # the most common message: one job
        (outcome,) = await _add(add, [request.job])
        _fill(response, outcome)
        return response
    answers: list[Answer] = [response, *(response.more.add(request_id=i.request_id) for i in request.more)]
    items: list[jobs_pb2.SubmitJobsRequest | jobs_pb2.SubmitJobsItem] = [request, *request.more]
    adding: list[tuple[jobs_pb2.NewJob, Answer]] = []
    for item, into in zip(items, answers, strict=True):
        if item.HasField("job"):
            adding.append((item.job, into))
        else:
            _refuse(into, InvalidArgument("job is missing"))
    outcomes = await _add(add, [job for job, _ in adding])
    for (_, into), outcome in zip(adding, outcomes, strict=True):
        _fill(into, outcome)
    return response


async def _add(add: AddEach, new_jobs: list[jobs_pb2.NewJob]) -> list[Added]:
    """One journal operation for a message's jobs, each checked and answered on its own."""
    try:
        return await add(new_jobs)
    except Exception as e:  # a request never crashes the node, nor ends the other requests
        return [e] * len(new_jobs)


def _fill(into: Answer, outcome: Added) -> None:
    if isinstance(outcome, JobmeshError):
        _refuse(into, outcome)
    elif isinstance(outcome, Exception):
        log.error("SubmitJobs failed on one job", exc_info=outcome)
        into.error.code = grpc.StatusCode.INTERNAL.value[0]
        into.error.message = f"internal error in SubmitJobs: {outcome}"
    else:
        into.job.CopyFrom(outcome[0])
        into.deduplicated = outcome[1]


def _refuse(into: Answer, error: JobmeshError) -> None:
    into.error.code, into.error.message = status_for(error).value[0], str(error)


def _retrieve(task: asyncio.Task[jobs_pb2.SubmitJobsResponse]) -> None:
    if not task.cancelled():
        task.exception()
