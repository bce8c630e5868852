"""Keepalive: the server's ping policy accepts the pings every channel sends, so idle streams stay
open (no GOAWAY too_many_pings), with real gRPC servers and channels made by one Transport."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.transport import Keepalive, Transport

IDLE_S = 3.0
# Pings every 100 ms: a server that did not accept them would send GOAWAY after its third
# unwelcome ping, long before IDLE_S.
FAST = Keepalive(0.1, 1.0)


async def test_an_idle_stream_outlives_many_keepalive_pings(capfd: pytest.CaptureFixture[str]) -> None:
    transport = Transport(FAST)
    server = transport.create_server(1024)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = transport.bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with transport.create_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            call = stub.Watch(health_pb2.HealthCheckRequest())
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(asyncio.TimeoutError):  # idle: nothing more arrives, nothing fails
                await asyncio.wait_for(call.read(), IDLE_S)
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            call.cancel()
    finally:
        await server.stop(0)
    # gRPC core logs a GOAWAY it receives on stderr (the server's stop sends one too: not that).
    err = capfd.readouterr().err
    assert "too_many_pings" not in err, err


def test_the_server_accepts_pings_at_half_the_interval() -> None:
    options = dict(Keepalive(2.0, 2.0).server_options())
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 1000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.keepalive_time_ms"] == 2000  # the server pings its clients too


def test_unknown_calls_do_not_break_the_channel() -> None:
    channel = Transport(FAST).create_sync_channel("127.0.0.1:1")
    with pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.2)
    channel.close()
