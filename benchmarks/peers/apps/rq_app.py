"""RQ 3: the two job functions (`rq worker --url unix://SOCKET`, the forking default worker)."""

from __future__ import annotations

from rq import get_current_job

from benchmarks.peers.apps.common import count_done, record_start


def noop() -> None:
    """A no-op job (counts itself done, on the worker's own connection)."""
    job = get_current_job()
    count_done(job.connection if job is not None else None)


def timed(t0: float) -> None:
    """Records how long after `t0` it started."""
    job = get_current_job()
    record_start(t0, job.connection if job is not None else None)
