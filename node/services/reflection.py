"""Server reflection, both versions (grpc.reflection.v1 and v1alpha), for every served service.

grpcio-reflection serves only v1alpha and resolves only message, enum and service symbols, so
`grpcurl describe jobmesh.v1.JobService.GetJob` found nothing. This servicer also resolves
method symbols (to the file of their service) and answers v1 too: the v1 messages are the
v1alpha ones under a new package name, field for field, so one implementation serves both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_METHOD = "ServerReflectionInfo"


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, resolving `package.Service.Method` symbols as well."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        service_name, _, method = fully_qualified_name.rpartition(".")
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            try:
                if method in self._pool.FindServiceByName(service_name).methods_by_name:
                    fully_qualified_name = service_name  # a method lives in its service's file
            except KeyError:
                pass  # not a method either: the base class answers NOT_FOUND
        return super()._file_containing_symbol(request, fully_qualified_name)


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and both reflections."""
    servicer = ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {_METHOD: v1}),))
