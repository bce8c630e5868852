"""The standard gRPC health service, complete: Check names an unknown service, List answers."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc_health's asyncio servicer plus a message for unknown services and the List method.

    The library's Check aborts NOT_FOUND with no message, and its List is the generated stub's
    "Method not implemented!" (UNKNOWN, logged as an error for every call).
    """

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The status of one service (`""`: the node as a whole)."""
        status = self._server_status.get(request.service)
        if status is None:
            known = ", ".join(sorted(name for name in self._server_status if name))
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no service {request.service!r} is served here; known: {known} (or '' for the node)",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """A snapshot of every service's status."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )
