"""The AuditService servicer: the node's audit journal, newest entry first."""

from __future__ import annotations

import grpc
from jobmesh.v1 import audit_pb2, audit_pb2_grpc

from node.errors import InvalidArgument
from node.journal.audit import AuditEntry, AuditStore
from node.security.audit import AuditRecord, AuditSink
from node.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decode_token, encode_token
from node.services.status import rpc

_KIND = "audit"


def entry_to_proto(entry: AuditEntry) -> audit_pb2.AuditEntry:
    """The wire form of one stored entry."""
    message = audit_pb2.AuditEntry(
        seq=entry.seq,
        caller=entry.caller,
        action=entry.action,
        request=entry.request,
        status=entry.status,
        message=entry.message,
    )
    message.time.FromMicroseconds(entry.time_us)
    return message


def sink_for(store: AuditStore) -> AuditSink:
    """The AuditInterceptor's sink: each record stored in `store`."""

    async def sink(record: AuditRecord) -> None:
        await store.record(
            AuditEntry(
                record.time_us, record.caller, record.action, record.request, record.status, record.message
            )
        )

    return sink


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves AuditService from the node's `AuditStore`."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store

    @rpc
    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEntriesResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size {request.page_size} is out of range; use 1..{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
            )
        before = None
        if request.page_token:  # the shape (one int) is checked by decode_token
            before = int(decode_token(_KIND, request.page_token, (0,))[0])
        size = request.page_size or DEFAULT_PAGE_SIZE
        entries, total = await self._store.page(before, size + 1)
        more = len(entries) > size
        entries = entries[:size]
        token = encode_token(_KIND, (entries[-1].seq,)) if more and entries else ""
        return audit_pb2.ListAuditEntriesResponse(
            entries=[entry_to_proto(e) for e in entries], next_page_token=token, total_size=total
        )
