"""Waits for tests that run a `node.Node` in their own event loop (no gRPC, real SQLite)."""

from __future__ import annotations

from node import Job, JobState, Node

from .waiting import DEFAULT_TIMEOUT_S, async_wait_for


async def job_in_state(n: Node, job_id: str, *states: JobState, timeout: float = DEFAULT_TIMEOUT_S) -> Job:
    """Wait until the job is in one of `states`; returns it."""

    async def check() -> Job | None:
        job = await n.jobs.get_job(job_id)
        return job if job.state in states else None

    return await async_wait_for(check, timeout, f"job {job_id} to reach {[s.name for s in states]}")


async def finished(n: Node, job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> Job:
    """Wait until the job is in a history state; returns it."""
    return await job_in_state(n, job_id, *(s for s in JobState if s.is_finished), timeout=timeout)
