"""SubmitJobs: jobs added one at a time over one stream, answered in order after their commit.

Each request becomes its own add (so concurrent requests share the journal's group commits);
a reader runs ahead of the writer by at most IN_FLIGHT requests, so a client that sends without
reading is held by flow control, not buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc
from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument, JobmeshError
from node.services.status import status_for

log = logging.getLogger(__name__)

IN_FLIGHT = 1024
"""Requests of one stream read ahead of the responses written (documented in jobs.proto)."""

AddOne = Callable[[jobs_pb2.NewJob], Awaitable[tuple[jobs_pb2.Job, bool]]]
"""Add one job; returns it as committed and whether it was deduplicated."""


async def answer(
    requests: AsyncIterator[jobs_pb2.SubmitJobsRequest], add: AddOne
) -> AsyncGenerator[jobs_pb2.SubmitJobsResponse, None]:
    """The responses to `requests`, in order; a refused job is a response with `error`."""
    pending: asyncio.Queue[asyncio.Task[jobs_pb2.SubmitJobsResponse] | None] = asyncio.Queue(IN_FLIGHT)

    async def read() -> None:
        try:
            async for request in requests:
                await pending.put(asyncio.ensure_future(_one(request, add)))
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                pending.put_nowait(None)  # full: the writer sees the reader done when it drains

    reader = asyncio.ensure_future(read())
    try:
        while True:
            if pending.empty() and reader.done():
                break
            task = await pending.get()
            if task is None:
                break
            yield await task
        reader.result()  # the request stream's own error (e.g. the client cancelled) goes on
    finally:
        reader.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if task is not None:
                task.add_done_callback(_retrieve)  # its add goes on to its commit; nobody waits


async def _one(request: jobs_pb2.SubmitJobsRequest, add: AddOne) -> jobs_pb2.SubmitJobsResponse:
    response = jobs_pb2.SubmitJobsResponse(request_id=request.request_id)
    try:
        if not request.HasField("job"):
            raise InvalidArgument("job is missing")
        job, deduplicated = await add(request.job)
    except JobmeshError as e:
        response.error.code, response.error.message = status_for(e).value[0], str(e)
        return response
    except Exception as e:  # a request never crashes the node, nor ends the other requests
        log.exception("SubmitJobs failed on one job")
        response.error.code = grpc.StatusCode.INTERNAL.value[0]
        response.error.message = f"internal error in SubmitJobs: {e}"
        return response
    response.job.CopyFrom(job)
    response.deduplicated = deduplicated
    return response


def _retrieve(task: asyncio.Task[jobs_pb2.SubmitJobsResponse]) -> None:
    if not task.cancelled():
        task.exception()
