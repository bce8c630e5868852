"""Who did what: the interceptor that records every admin action with its caller.

`AuthInterceptor` (authz.py) puts the authenticated caller into `CALLER` before the servicer
runs; the `AuditInterceptor`, inside it, runs each audited method's servicer and hands one
`AuditRecord` to its sink when the call ends, whatever its status. A node with `--insecure`
has no caller to name: its entries say `unauthenticated PEER`.

Event-loop contract: the sink is a coroutine run on the node's loop before the response goes
out, so an action is in the audit journal when its caller hears back.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from node.interceptors import WrappingInterceptor
from node.security.scopes import REQUIRED_SCOPE, Principal

log = logging.getLogger(__name__)

CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("jobmesh_caller", default=None)
"""The authenticated caller of the call being served (set by AuthInterceptor)."""

NOT_AUDITED = frozenset({"/jobmesh.v1.AuditService/ListAuditEntries"})
"""Admin-scoped methods that change nothing (reading the audit is not an action)."""
AUDITED = frozenset(m for m, scope in REQUIRED_SCOPE.items() if scope == "admin") - NOT_AUDITED
"""The methods recorded: every admin-scoped method that acts."""
MAX_REQUEST_BYTES = 16 * 1024
"""Larger requests are recorded by type and size only (a schedule's job may carry a payload)."""


@dataclass(frozen=True)
class AuditRecord:
    """One admin action as the interceptor saw it."""

    time_us: int
    caller: str
    action: str
    request: str
    status: str
    message: str = ""


AuditSink = Callable[[AuditRecord], Awaitable[None]]


def describe_request(request: Message) -> str:
    """The request as one line of protobuf text (type and size only when it is large)."""
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        return f"<{request.DESCRIPTOR.name} of {size} bytes>"
    return str(text_format.MessageToString(request, as_one_line=True))


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """The caller to record for the call being served."""
    principal = CALLER.get()
    if principal is None:
        return f"unauthenticated {context.peer()}"
    return principal.description


class AuditInterceptor(WrappingInterceptor):
    """Records every call of the `AUDITED` methods to `sink` when it ends."""

    def __init__(self, sink: AuditSink) -> None:
        super().__init__()
        self._sink = sink

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Audited unary methods are wrapped (every admin action is unary); others are left alone."""
        if method not in AUDITED or handler.unary_unary is None:
            return handler
        original = handler.unary_unary
        sink = self._sink

        async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            recording = _RecordingContext(context, sink, method, request)
            try:
                response = await original(request, recording)
            except BaseException as e:
                if not recording.recorded:
                    code = context.code()
                    status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                    await _record(sink, context, method, request, status, context.details() or str(e))
                raise
            await _record(sink, context, method, request, "OK", "")
            return response

        return grpc.unary_unary_rpc_method_handler(
            audited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _RecordingContext:
    """The servicer's context, whose `abort` records the refusal first: grpc sends the status
    from inside `abort`, so recording after it would let the caller hear back before its entry
    is in the journal (and a read right after miss it)."""

    def __init__(self, context: grpc.aio.ServicerContext, sink: AuditSink, method: str, request: Any) -> None:
        self._context = context
        self._sink = sink
        self._method = method
        self._request = request
        self.recorded = False

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        if not self.recorded:
            self.recorded = True
            await _record(self._sink, self._context, self._method, self._request, code.name, details)
        await self._context.abort(code, details, trailing_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _record(
    sink: AuditSink, context: grpc.aio.ServicerContext, method: str, request: Any, status: str, message: str
) -> None:
    record = AuditRecord(
        time_us=time.time_ns() // 1000,
        caller=caller_of(context),
        action=method,
        request=describe_request(request),
        status=status,
        message=str(message),
    )
    try:
        await sink(record)
    except Exception:  # the action happened; a failing audit write must not turn it into an error
        log.exception("cannot record the audit entry of %s by %s", method, record.caller)
