"""Client interceptors that send `authorization: Bearer <token>` on every call.

Interceptors rather than `grpc.access_token_call_credentials`: those run a plugin on gRPC's own
threads for each call; an interceptor adds the header on the calling thread, at no extra cost.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grpc


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """Call details with the bearer header added."""


def _with_token(metadata: Any, token: str) -> list[tuple[str, str]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


class SyncBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """For blocking channels (`grpc.intercept_channel`)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: Any) -> _Details:
        return _Details(
            d.method,
            d.timeout,
            _with_token(d.metadata, self._token),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def _aio_details(d: Any, token: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method, d.timeout, _with_token(d.metadata, token), d.credentials, d.wait_for_ready
    )


class _AioBearer:
    def __init__(self, token: str) -> None:
        self._token = token

    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._token), request)


class _AioUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AioBearer._call


class _AioUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AioBearer._call


class _AioStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AioBearer._call


class _AioStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AioBearer._call


def aio_interceptors(token: str) -> list[Any]:
    """Interceptors for asyncio channels (`interceptors=`)."""
    return [cls(token) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]
