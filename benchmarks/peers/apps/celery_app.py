"""Celery 5: the app and its two tasks (`celery -A benchmarks.peers.apps.celery_app worker`)."""

from __future__ import annotations

from celery import Celery

from benchmarks.peers.apps.common import SOCKET, count_done, record_start

app = Celery("peers", broker=f"redis+socket://{SOCKET}")
# No result backend (nothing reads results); everything else is Celery's default.
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task
def noop() -> None:
    """A no-op task (counts itself done)."""
    count_done()


@app.task
def timed(t0: float) -> None:
    """Records how long after `t0` it started."""
    record_start(t0)
