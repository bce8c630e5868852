"""The job state machine: what one attempt's result does to a job (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

from node.model.events import EventType
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


_END_EVENTS = {
    JobState.SUCCEEDED: (EventType.FINISHED, "finished"),
    JobState.QUEUED: (EventType.FAILED, "failed"),
    JobState.GIVEN_UP: (EventType.CANCELLED, "cancelled"),
    JobState.ERROR: (EventType.CANCELLED, "cancelled"),
    JobState.STOPPED: (EventType.STOPPED, "cancelled"),
}


def end_event(state: JobState) -> tuple[EventType, str]:
    """The event an attempt that left the job in `state` records, and its statistics outcome
    (finished, failed or cancelled)."""
    return _END_EVENTS[state]


def event_for(state: JobState, *, is_progress: bool = False) -> EventType:
    """The event that announces a job now in `state` (a mirrored report, for instance)."""
    if state is JobState.ACTIVE:
        return EventType.PROGRESS if is_progress else EventType.STARTED
    if state is JobState.DROPPED:
        return EventType.CANCELLED
    return _END_EVENTS[state][0]
