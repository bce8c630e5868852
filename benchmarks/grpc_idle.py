"""What one gRPC exchange costs at a low rate: CPU per call, on each side, of grpc.aio itself.

An idle node's CPU is mostly SWIM's probes (a few calls a second), so this measures the floor
under them with nothing of Jobmesh: a bare grpc.aio server in a child process and a grpc.aio
client here, plaintext on loopback, one tiny message per exchange, either as a unary call or as
a message each way on one open bidirectional stream.

    .venv/bin/python -m benchmarks.grpc_idle [--rate 5] [--seconds 20]

(inside a private network namespace, like every benchmark: `source scripts/netns.sh &&
in_private_netns ...`). CPU is utime + stime from /proc, per exchange, server and client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

PORT = 50998
METHODS = "/bench.Idle/Unary", "/bench.Idle/Stream"


def cpu_s(pid: int) -> float:
    """utime + stime of `pid`, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve() -> None:
    """The bare server: echoes b"ok" for each request (unary) or each message (stream)."""

    async def unary(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return b"ok"

    async def stream(
        requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield b"ok"

    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Idle", handlers)])
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    await server.start()
    await server.wait_for_termination()


async def measure(server: int, rate: float, seconds: float) -> None:
    """Print CPU per exchange (the `server` process and this one) for unary calls, then stream
    messages, at `rate` per second."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{PORT}") as channel:
        await channel.channel_ready()
        unary = channel.unary_unary(METHODS[0])
        call = channel.stream_stream(METHODS[1])()
        await unary(b"x", timeout=5)
        await call.write(b"x")
        await call.read()

        async def one_unary() -> None:
            await unary(b"x", timeout=5)

        async def one_message() -> None:
            await call.write(b"x")
            await call.read()

        for label, exchange in (("unary call", one_unary), ("stream message", one_message)):
            server_0, client_0, began = cpu_s(server), cpu_s(os.getpid()), time.monotonic()
            count = 0
            while time.monotonic() - began < seconds:
                await exchange()
                count += 1
                await asyncio.sleep(1 / rate)
            server_ms = 1000 * (cpu_s(server) - server_0) / count
            client_ms = 1000 * (cpu_s(os.getpid()) - client_0) / count
            print(
                f"{label}: {count} at {rate:g}/s: server {server_ms:.2f} ms, client {client_ms:.2f} ms CPU each"
            )
        await call.done_writing()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5.0, help="exchanges per second (5: one node's probes)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_idle", "--serve"])
    try:
        asyncio.run(measure(server.pid, args.rate, args.seconds))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
