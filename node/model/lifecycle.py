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


@dataclass(frozen=True)
class MirroredEvent:
    """One event the origin records for a mirrored report: its type, state and retry count."""

    type: EventType
    state: JobState
    retry_count: int


def mirrored_events(
    *,
    was_active: bool,
    seen_retry_count: int,
    seen_started_us: int,
    state: JobState,
    retry_count: int,
    started_us: int,
    is_progress: bool = False,
) -> list[MirroredEvent]:
    """The events an origin records when a target's report moves its mirror of a job from what
    it saw (`was_active`, `seen_retry_count`, `seen_started_us`) to `state`/`retry_count`.

    A report carries the job's current row, so one report can stand for several events of the
    target (STARTED and FINISHED of a short job in one frame; whole failed attempts): the
    origin's stream must still show every attempt's STARTED before its end, in order. An
    attempt the origin did not see start is one whose start is newer than the one it saw, or
    a failed attempt between the retry counts; those get their STARTED (and FAILED) here.
    """
    events: list[MirroredEvent] = []
    active = was_active
    failing_end = state in (JobState.QUEUED, JobState.GIVEN_UP)
    final_retry = retry_count - 1 if failing_end and retry_count > seen_retry_count else retry_count
    for retry in range(seen_retry_count, final_retry):  # whole attempts that failed meanwhile
        if not active:
            events.append(MirroredEvent(EventType.STARTED, JobState.ACTIVE, retry))
        events.append(MirroredEvent(EventType.FAILED, JobState.QUEUED, retry + 1))
        active = False
    started_unseen = started_us > seen_started_us or final_retry > seen_retry_count
    if state is JobState.ACTIVE:
        if not active or started_unseen:
            events.append(MirroredEvent(EventType.STARTED, state, retry_count))
        if is_progress:
            events.append(MirroredEvent(EventType.PROGRESS, state, retry_count))
        return events
    if not active and started_unseen and state is not JobState.DROPPED:
        events.append(MirroredEvent(EventType.STARTED, JobState.ACTIVE, final_retry))
    events.append(MirroredEvent(event_for(state), state, retry_count))
    return events
