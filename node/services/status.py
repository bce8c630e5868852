"""Mapping Jobmesh errors to gRPC status codes, in one place for every servicer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node.errors import (
    ConfigError,
    DataLoss,
    DuplicateInstance,
    FailedPrecondition,
    InvalidArgument,
    JobmeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)
R = TypeVar("R")

STATUS_BY_ERROR: tuple[tuple[type[JobmeshError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (DuplicateInstance, grpc.StatusCode.ALREADY_EXISTS),
    (DataLoss, grpc.StatusCode.DATA_LOSS),
)


def status_for(error: JobmeshError) -> grpc.StatusCode:
    """The gRPC status code for a Jobmesh error."""
    for kind, code in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def rpc(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Wrap a unary servicer method: Jobmesh errors become their status; anything else INTERNAL.

    A request never crashes the node: unexpected exceptions are logged with their traceback
    and answered with INTERNAL.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except JobmeshError as e:
            await context.abort(status_for(e), str(e))
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as e:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {e}")
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper
