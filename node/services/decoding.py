"""Requests are decoded inside the handler, so bytes that do not parse get INVALID_ARGUMENT.

Left to grpc, a request that fails to deserialize is answered UNKNOWN ("Unexpected
DecodeError") and logged as an ERROR for every call, on every method, and a garbage message in
the middle of a stream reaches the servicer as an internal failure. `RequestDecoder`, one server
interceptor, registers each method with the identity deserializer and decodes the bytes itself:

- unary requests, and the first request of server-streaming methods, are decoded before the
  servicer runs; a failure aborts with INVALID_ARGUMENT naming the method and message type;
- streamed requests are decoded as the servicer reads them (`context.read()` or the request
  iterator); a failure raises `UndecodableRequest`, an `InvalidArgument` the servicers already
  answer with INVALID_ARGUMENT (and, should one let it escape, the interceptor does).

Undecodable requests are counted and logged at most once per `LOG_INTERVAL_S`, so a stranger
cannot flood the log with them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from node.errors import InvalidArgument
from node.interceptors import WrappingInterceptor

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0
"""At most one log line per this many seconds about undecodable requests."""

Decode = Callable[[bytes], Any]


class UndecodableRequest(InvalidArgument):
    """A request's bytes are not a valid message of the method's request type."""


class BadRequestCounter:
    """Counts refused requests and logs them at most once per interval (thread-unsafe: loop only).

    `message` is a %-format of the count since the last line and the `record` arguments."""

    def __init__(
        self,
        interval_s: float = LOG_INTERVAL_S,
        message: str = "%d undecodable request(s) refused with INVALID_ARGUMENT (latest: %s from %s)",
        logger: logging.Logger = log,
    ) -> None:
        self.total = 0
        """Refused requests since start."""
        self._interval_s = interval_s
        self._message = message
        self._log = logger
        self._unlogged = 0
        self._last_log = float("-inf")

    def record(self, *latest: str) -> None:
        """Count one refused request; log a summary with the `latest` details when the interval has passed."""
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= self._interval_s:
            self._log.warning(self._message, self._unlogged, *latest)
            self._unlogged = 0
            self._last_log = now


class RequestDecoder(WrappingInterceptor):
    """Server interceptor: every method decodes its own requests (see the module docstring)."""

    def __init__(self, counter: BadRequestCounter | None = None) -> None:
        super().__init__()
        self.counter = counter or BadRequestCounter()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler with the identity deserializer, decoding inside."""
        if handler.request_deserializer is None:
            return handler
        return _decoding_handler(handler, method, self.counter)


def _type_name(deserialize: Decode) -> str:
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "the method's request message"))


def _decoder(deserialize: Decode, method: str, counter: BadRequestCounter) -> Callable[[bytes, Any], Any]:
    """`decode(raw, context)`: the message, or UndecodableRequest naming method and type."""
    type_name = _type_name(deserialize)

    def decode(raw: bytes, context: Any) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # DecodeError, RecursionError on deep nesting, ...
            counter.record(method, context.peer())
            raise UndecodableRequest(
                f"{method}: the request is not a valid {type_name} message ({type(e).__name__}); "
                "check that client and server use the same protos"
            ) from e

    return decode


class _DecodingContext:
    """The servicer's context, with `read()` decoding each streamed request."""

    def __init__(self, context: Any, decode: Callable[[bytes, Any], Any]) -> None:
        self._context = context
        self._decode = decode

    async def read(self) -> Any:
        raw = await self._context.read()
        if raw is grpc.aio.EOF:
            return raw
        return self._decode(raw, self._context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _abort_undecodable(context: Any, error: UndecodableRequest) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    raise AssertionError("unreachable")  # abort() always raises


def _decoding_handler(handler: grpc.RpcMethodHandler, method: str, counter: BadRequestCounter) -> Any:
    """The same method with the identity deserializer, decoding inside (same calling style)."""
    decode = _decoder(handler.request_deserializer, method, counter)
    serialize = handler.response_serializer

    async def decoded_iterator(raw_requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            yield decode(raw, context)

    async def first_request(raw: bytes, context: Any) -> Any:
        try:
            return decode(raw, context)
        except UndecodableRequest as e:
            await _abort_undecodable(context, e)

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(raw: bytes, context: Any) -> Any:
            return await unary(await first_request(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)

    if handler.stream_unary is not None:
        collect = handler.stream_unary

        async def stream_unary(raw_requests: AsyncIterator[bytes], context: Any) -> Any:
            try:
                return await collect(
                    decoded_iterator(raw_requests, context), _DecodingContext(context, decode)
                )
            except UndecodableRequest as e:
                await _abort_undecodable(context, e)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)

    # Streaming responses: a servicer either yields them (async generator) or writes them with
    # context.write (coroutine); the wrapper keeps the servicer's style, as grpc tells them apart.
    if handler.unary_stream is not None:
        respond = handler.unary_stream

        def start_unary_stream(raw: Any, context: Any, request: Any) -> Any:
            return respond(request, context)

        wrap_stream = _streaming(respond, start_unary_stream, first_request)
        return grpc.unary_stream_rpc_method_handler(wrap_stream, response_serializer=serialize)

    exchange = handler.stream_stream

    def start_stream_stream(raw_requests: Any, context: Any, _: Any) -> Any:
        return exchange(decoded_iterator(raw_requests, context), _DecodingContext(context, decode))

    async def no_first_request(raw: Any, context: Any) -> None:
        return None

    wrap_bidi = _streaming(exchange, start_stream_stream, no_first_request)
    return grpc.stream_stream_rpc_method_handler(wrap_bidi, response_serializer=serialize)


def _streaming(
    original: Callable[..., Any],
    start: Callable[[Any, Any, Any], Any],
    first: Callable[[Any, Any], Awaitable[Any]],
) -> Callable[[Any, Any], Any]:
    """A response-streaming behaviour in the original's style: async generator or coroutine."""
    if inspect.isasyncgenfunction(original):

        async def generator(raw: Any, context: Any) -> AsyncIterator[Any]:
            request = await first(raw, context)
            try:
                async for response in start(raw, context, request):
                    yield response
            except UndecodableRequest as e:
                await _abort_undecodable(context, e)

        return generator

    async def coroutine(raw: Any, context: Any) -> Any:
        request = await first(raw, context)
        try:
            return await start(raw, context, request)
        except UndecodableRequest as e:
            await _abort_undecodable(context, e)
        except asyncio.CancelledError:
            # grpc cancels the streams still open when the server stops; the servicers
            # (WorkerService.Work, TransferService.Exchange) end quietly then, but the cancellation
            # can also land in a wrapper around them. Ending normally keeps grpc from logging it
            # as an unhandled error: nobody is left to answer.
            return None

    return coroutine
