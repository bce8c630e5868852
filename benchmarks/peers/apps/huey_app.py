"""Huey 3: a RedisHuey and two tasks (`huey_consumer benchmarks.peers.apps.huey_app.huey`)."""

from __future__ import annotations

from huey import RedisHuey

from benchmarks.peers.apps.common import SOCKET, count_done, record_start

huey = RedisHuey("peers", url=f"unix://{SOCKET}")


@huey.task()
def noop() -> None:
    """A no-op task (counts itself done)."""
    count_done()


@huey.task()
def timed(t0: float) -> None:
    """Records how long after `t0` it started."""
    record_start(t0)
