"""What the peers' tasks share: the Redis socket, and the two side effects the driver reads."""

from __future__ import annotations

import os
import time

import redis

SOCKET = os.environ.get("PEERS_REDIS_SOCKET", "/tmp/peers-redis.sock")
DONE_KEY = "peers:done"
"""Incremented by every finished no-op task: the driver polls it to see when N are done."""
LATENCY_KEY = "peers:latency"
"""Seconds from before the add call to the task's start, one entry per timed task."""

_client: redis.Redis | None = None
_client_pid = 0


def client() -> redis.Redis:
    """One Redis client per process (prefork and forking workers get their own after the fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis(unix_socket_path=SOCKET)
        _client_pid = os.getpid()
    return _client


def count_done(connection: redis.Redis | None = None) -> None:
    """The no-op task's only work: count itself done."""
    (connection or client()).incr(DONE_KEY)


def record_start(t0: float, connection: redis.Redis | None = None) -> None:
    """The timed task's work: how long after `t0` (wall clock, seconds) it started."""
    started = time.time()
    (connection or client()).rpush(LATENCY_KEY, started - t0)
