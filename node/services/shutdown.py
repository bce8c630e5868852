"""Open response streams end cleanly when the node stops, instead of being cancelled by grpc.

WatchJobs and WatchTopology never end on their own. Left open at shutdown, grpc cancels them
when the server stops and logs "Exception not handled … CancelledError" with a traceback for
each. `StreamShutdown` wraps every method whose servicer yields its responses: once `close()`
is called (first thing in `Node.close`), each such stream stops waiting for its next response
and ends with UNAVAILABLE "the node is shutting down", which tells a client to reconnect
(elsewhere, or here after the restart) and resume where it was. Streams written with
`context.write` (WorkerService.Work, TransferService.Exchange) end through their own services.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node.interceptors import WrappingInterceptor

SHUTTING_DOWN = "the node is shutting down; reconnect (to another node, or here after its restart) and resume"


class StreamShutdown(WrappingInterceptor):
    """Server interceptor ending every open generator stream at `close()` (event loop only)."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every open stream now, and every stream opened from now on at once."""
        self._closing.set()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Generator streams end at `close()`; every other handler is left as it is."""
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(self._ending(handler.unary_stream), **options)
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(self._ending(handler.stream_stream), **options)
        return handler

    def _ending(self, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        closing = self._closing

        async def until_closing(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            responses = behaviour(request, context).__aiter__()
            closed = asyncio.ensure_future(closing.wait())
            following: asyncio.Future[Any] | None = None
            try:
                while not closing.is_set():
                    following = asyncio.ensure_future(responses.__anext__())
                    await asyncio.wait((following, closed), return_when=asyncio.FIRST_COMPLETED)
                    if not following.done():
                        break
                    try:
                        response = following.result()
                    except StopAsyncIteration:
                        return
                    following = None
                    yield response
            finally:
                # Also when grpc cancels this stream (the client went away): reap what is pending.
                closed.cancel()
                if following is not None and not following.done():
                    following.cancel()
                if following is not None:
                    await asyncio.gather(following, return_exceptions=True)
                await responses.aclose()  # type: ignore[attr-defined]
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return until_closing
