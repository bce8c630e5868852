"""Dramatiq 2: the Redis broker and two actors (`dramatiq benchmarks.peers.apps.dramatiq_app`)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers.apps.common import SOCKET, count_done, record_start

broker = RedisBroker(unix_socket_path=SOCKET)
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    """A no-op actor (counts itself done)."""
    count_done()


@dramatiq.actor
def timed(t0: float) -> None:
    """Records how long after `t0` it started."""
    record_start(t0)
