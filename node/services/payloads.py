"""JobService.GetPayload: a job's input or output payload, streamed in pieces of `CHUNK_BYTES`.

The journal stores a payload as one SQLite value (a WITHOUT ROWID table, so no incremental blob
reads), so a stream reads the payload once, verifies its checksum before sending anything
(DATA_LOSS then, and nothing sent), and cuts it into pieces as it sends them: it holds that one
payload (at most `jobs.max_payload_bytes`) plus the piece in its message while it runs, and
grpc's flow control paces the pieces to the client's reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from jobmesh.v1 import jobs_pb2

from node.errors import InvalidArgument, JobmeshError, NotFound
from node.jobs.manager import JobManager
from node.journal.payloads import KIND_NAMES, PAYLOAD_INPUT, PAYLOAD_OUTPUT
from node.services.chunking import crc32, slices
from node.services.status import status_for

log = logging.getLogger(__name__)

_KINDS = {jobs_pb2.PAYLOAD_KIND_INPUT: PAYLOAD_INPUT, jobs_pb2.PAYLOAD_KIND_OUTPUT: PAYLOAD_OUTPUT}


async def read_payload(manager: JobManager, request: jobs_pb2.GetPayloadRequest) -> bytes:
    """The verified payload a GetPayloadRequest names; InvalidArgument, NotFound or DataLoss."""
    if not request.job_id:
        raise InvalidArgument("job_id is empty; pass the id AddJob returned")
    kind = _KINDS.get(request.kind)
    if kind is None:
        raise InvalidArgument(f"kind is {request.kind}; use PAYLOAD_KIND_INPUT or PAYLOAD_KIND_OUTPUT")
    payload = await manager.get_payload(request.job_id, kind)
    if not payload:
        when = " (a job has one once it succeeded with one)" if kind == PAYLOAD_OUTPUT else ""
        raise NotFound(f"job {request.job_id} has no {KIND_NAMES[kind]} payload{when}")
    return payload


async def stream_payload(
    manager: JobManager, request: jobs_pb2.GetPayloadRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[jobs_pb2.GetPayloadResponse]:
    """The GetPayload stream: errors end it with their status before any piece is sent."""
    try:
        payload = await read_payload(manager, request)
    except JobmeshError as e:
        await context.abort(status_for(e), str(e))
    except Exception as e:  # a request never crashes the node
        log.exception("GetPayload failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in GetPayload: {e}")
    # zlib releases the GIL on large buffers: 64 MiB (~15 ms) off the loop
    total, whole = len(payload), await asyncio.to_thread(crc32, payload)
    for offset, piece in slices(payload):
        yield jobs_pb2.GetPayloadResponse(
            offset=offset,
            total_size=total,
            data=piece.tobytes(),
            data_crc32=crc32(piece),
            payload_crc32=whole,
        )
