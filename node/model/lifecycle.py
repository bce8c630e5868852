"""The job state machine: what one attempt's result does to a job (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

from node.model.job import JobState, Outcome


@dataclass(frozen=True)
class Transition:
    """The state a job moves to after an attempt, and its new retry count."""

    state: JobState
    retry_count: int


def after_attempt(
    outcome: Outcome, *, retry_count: int, max_retries: int, stop_requested: bool
) -> Transition:
    """Where a job goes when its consumer reports `outcome`.

    A stop request turns any unsuccessful result into STOPPED (a job that succeeded anyway
    keeps its success). A failure is retried while retries last (`max_retries` -1: forever),
    then GIVEN_UP. A cancellation is never retried: ERROR.
    """
    if outcome is Outcome.SUCCEEDED:
        return Transition(JobState.SUCCEEDED, retry_count)
    if stop_requested:
        return Transition(JobState.STOPPED, retry_count)
    if outcome is Outcome.CANCELLED:
        return Transition(JobState.ERROR, retry_count)
    retries = retry_count + 1
    if 0 <= max_retries < retries:
        return Transition(JobState.GIVEN_UP, retries)
    return Transition(JobState.QUEUED, retries)
