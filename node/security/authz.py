"""The one server interceptor that authenticates and authorizes every call.

Who the caller is comes from the TLS handshake (`context.auth_context()`: the certificate the
caller proved it holds, verified against the cluster CA) and, for clients, from the bearer token
in the `authorization` metadata; never from a message body. What the caller may do comes from
`scopes.REQUIRED_SCOPE`. Refusals say which scope or topic was missing.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509

from node.interceptors import WrappingInterceptor
from node.security import pki, tokens
from node.security.audit import CALLER
from node.security.scopes import JOIN, OPEN, REQUIRED_SCOPE, Principal

Check = Callable[[grpc.aio.ServicerContext, Any], Awaitable[Principal]]


@functools.lru_cache(maxsize=256)
def _cert_identity(pem: bytes) -> pki.CertIdentity:
    return pki.identity_of(pki.load_cert(pem))


def _topics_of(request: Any) -> list[str]:
    """Topics a request asks to submit or consume (empty for other requests)."""
    name = type(request).__name__
    if name == "AddJobRequest":
        return [request.job.topic]
    if name == "SubmitJobsRequest":  # every job of a packed message
        return [request.job.topic, *(item.job.topic for item in request.more)]
    if name == "AddJobsRequest":
        return [job.topic for job in request.jobs]
    if name == "WorkRequest" and request.WhichOneof("kind") == "register":
        return list(request.register.topics)
    return []


_SENDER_RECORD = frozenset({"PingRequest", "IndirectPingRequest", "SyncRequest", "GossipRequest"})


def refusal(caller: Principal, request: Any) -> str | None:
    """Why `request` is refused for `caller` beyond its scope: a topic outside its patterns, or a
    node speaking for another instance (membership sender, transfer frame sender)."""
    refused = caller.topic_refused(_topics_of(request))
    if refused is not None:
        return f"{caller.name} may not use topic {refused!r} (its patterns: {', '.join(caller.topics)})"
    name = type(request).__name__
    claimed = (
        request.sender.info.id
        if name in _SENDER_RECORD
        else request.sender_id
        if name in ("ExchangeRequest", "ReconcileRequest")
        else None
    )
    if caller.is_node and claimed is not None and claimed != caller.instance_id:
        return f"{caller.name} may speak only for itself, not for instance {claimed!r}"
    return None


class AuthInterceptor(WrappingInterceptor):
    """Checks every call against `REQUIRED_SCOPE` (UNAUTHENTICATED / PERMISSION_DENIED)."""

    def __init__(self, ca: x509.Certificate, revoked: Callable[[], frozenset[str]] | None = None) -> None:
        super().__init__()
        self._ca = ca
        self._revoked = revoked or frozenset
        self._verify = functools.lru_cache(maxsize=1024)(self._verify_token)

    def _verify_token(self, token: str) -> tokens.Claims:
        return tokens.verify(token, self._ca, now=0.0)  # expiry is checked per call below

    async def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """The authenticated caller, or abort UNAUTHENTICATED."""
        pems = context.auth_context().get("x509_pem_cert", [])
        identity = _cert_identity(pems[0]) if pems else pki.CertIdentity()
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value.removeprefix("Bearer ").strip()
        # A node speaks as itself unless it presents a token: its console then calls as the
        # signed-in user, checked (and audited) as that token, not with the node's rights.
        if identity.instance_id and not token:
            return Principal(
                f"instance {identity.instance_id}", frozenset(), instance_id=identity.instance_id
            )
        if identity.join_token:
            return Principal(f"join token {identity.join_token}", frozenset({JOIN}))
        if not token and identity.client and identity.scopes:
            return await self._certificate_principal(identity, context)
        if not token:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no credential: send `authorization: Bearer <token>` (jobmesh token create), or "
                "present a client certificate with scopes (jobmesh cluster client --scope ...)",
            )
        try:
            claims = self._verify(token)
            if claims.expires and claims.expires < _now():
                raise tokens.InvalidToken(f"the bearer token {claims.name!r} ({claims.id}) has expired")
        except tokens.InvalidToken as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        if claims.id in self._revoked():
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"the bearer token {claims.name!r} ({claims.id}) is revoked"
            )
        return Principal(claims.name, claims.scopes, claims.topics, token_id=claims.id)

    async def _certificate_principal(
        self, identity: pki.CertIdentity, context: grpc.aio.ServicerContext
    ) -> Principal:
        """A client certificate carrying scopes is a credential by itself (a bearer token, when
        one is sent, takes precedence); its serial number is its id for revocation."""
        name = f"certificate {identity.client!r}"
        if identity.serial in self._revoked():
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"the client {name} ({identity.serial}) is revoked"
            )
        return Principal(name, frozenset(identity.scopes), identity.topics, token_id=identity.serial)

    async def _check(
        self, method: str, required: str, context: grpc.aio.ServicerContext, request: Any
    ) -> Principal:
        caller = await self.principal(context)
        missing = caller.missing(required, method)
        if missing is not None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} needs {missing}; {caller.name} lacks it"
            )
        refused = refusal(caller, request) if request is not None else None
        if refused is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        CALLER.set(caller)  # for the audit journal (this call's own context)
        return caller

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler checking the caller first; open methods (health) are left as they are."""
        required = REQUIRED_SCOPE.get(method, "admin")  # a method missing from the table: admins only
        if required == OPEN:
            return handler
        return _wrap(handler, functools.partial(self._check, method, required))


def _now() -> float:
    return time.time()


class _FirstAgain:
    """A servicer context whose first `read()` returns a message the interceptor already read,
    and whose later reads are checked too: a refused message ends the request stream (EOF for
    the servicer) and `refused` says why, for the interceptor's abort once the servicer returns."""

    def __init__(self, context: grpc.aio.ServicerContext, first: Any, caller: Principal) -> None:
        self._context = context
        self._first: Any = first
        self._caller = caller
        self.refused: str | None = None

    async def read(self) -> Any:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self.refused is not None:
            return grpc.aio.EOF
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self.refused = refusal(self._caller, message)
            if self.refused is not None:
                return grpc.aio.EOF
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _requests(context: Any) -> AsyncIterator[Any]:
    """The request stream through the (read/write API) context."""
    while (message := await context.read()) is not grpc.aio.EOF:
        yield message


async def _forward(result: Any, context: grpc.aio.ServicerContext) -> Any:
    """Run a handler's result: write what an async generator yields, or await a coroutine."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
        return None
    return await result


def _wrap(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """The same handler, running `check` first (and on each message a stream reads)."""
    serde = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context, request)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, **serde)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> None:
            await check(context, request)
            await _forward(unary_stream(request, context), context)

        return grpc.unary_stream_rpc_method_handler(us, **serde)

    async def streaming(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        # The first message (a worker's registration) is checked here, before the servicer runs,
        # so a refusal is this wrapper's abort, never an error inside the servicer.
        first = await context.read()
        caller = await check(context, None if first is grpc.aio.EOF else first)
        again = _FirstAgain(context, None if first is grpc.aio.EOF else first, caller)
        original = handler.stream_unary or handler.stream_stream
        result = await _forward(original(_requests(again), again), context)
        if again.refused is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, again.refused)
        return result

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(streaming, **serde)
    return grpc.stream_stream_rpc_method_handler(streaming, **serde)
