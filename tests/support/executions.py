"""Executions recorded by `consumers:record_execution`, and why a job ran more than once.

The consumer appends a start line and an end line per execution to a file per node (see its
docstring). `read_executions` reads them back; `explain` takes the execution the origin
accepted (its result message names the execution's token) and the fault windows of a run,
and gives every other execution of a job a cause, or none: an unexplained re-execution.

The causes, for a job's execution that the origin did not accept:
- `worker-kill`: it ran on the killed worker and was in flight at the kill (started before
  the killed process was reaped, ended no earlier than `slack` before it, or never ended);
- `partition`: it ran on the cut-off worker during the partition (from `slack` before the cut
  up to the heal) under an epoch the origin has since replaced (the job was reassigned): its
  result could not reach the origin in time;
- `fenced-after-heal`, `fenced-after-restart`: it ran on that worker after the heal (or its
  restart) under a replaced epoch: work the worker should have dropped unrun (its lease on the
  origin's jobs had lapsed, see node/transfer/lease.py), so the run FAILS on any of them;
- `origin-kill`: it was in flight (on any worker, and ended) when the origin was killed.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from tests.consumers import EXECUTIONS_SUFFIX

TOKEN_PREFIX = "exec="
"""`record_execution`'s result message: `exec=TOKEN`."""


@dataclass
class Execution:
    """One execution of a job on one node, from its start line (and end line, if written)."""

    token: str
    job_id: str
    claim: int
    attempt: int
    instance: str
    pid: int
    start_us: int
    end_us: int | None = None
    """None: the execution never ended (its node was killed while it ran)."""


@dataclass(frozen=True)
class ExecutionLog:
    """Every execution found in a directory of execution files."""

    executions: list[Execution]
    bad_lines: int
    """Lines that could not be parsed (a line cut by kill -9 would be one)."""

    def by_job(self) -> dict[str, list[Execution]]:
        """Executions grouped by job id, each group in start order."""
        jobs: dict[str, list[Execution]] = defaultdict(list)
        for execution in sorted(self.executions, key=lambda e: e.start_us):
            jobs[execution.job_id].append(execution)
        return dict(jobs)


def read_executions(directory: Path) -> ExecutionLog:
    """Parse every `*.executions` file in `directory`."""
    starts: dict[str, Execution] = {}
    bad = 0
    for path in sorted(directory.glob(f"*{EXECUTIONS_SUFFIX}")):
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split()
            try:
                if fields[0] == "S" and len(fields) == 8:
                    token, job_id, claim, attempt, instance, pid, start = fields[1:]
                    starts[token] = Execution(
                        token, job_id, int(claim), int(attempt), instance, int(pid), int(start)
                    )
                elif fields[0] == "E" and len(fields) == 3 and fields[1] in starts:
                    starts[fields[1]].end_us = int(fields[2])
                else:
                    bad += 1
            except (IndexError, ValueError):
                bad += 1
    return ExecutionLog(list(starts.values()), bad)


class FaultKind(enum.Enum):
    """The faults of the chaos scenario."""

    WORKER_KILL = "worker-kill"
    PARTITION = "partition"
    ORIGIN_KILL = "origin-kill"


@dataclass(frozen=True)
class Fault:
    """One fault: what, on which instance, from when to when (wall-clock microseconds)."""

    kind: FaultKind
    instance: str
    start_us: int
    """The kill (once the killed process is reaped: nothing of it runs after), or the cut."""
    end_us: int
    """The restarted node serves again, or the heal."""


class Cause(enum.Enum):
    """Why an execution the origin did not accept happened."""

    WORKER_KILL = "worker-kill"
    PARTITION = "partition"
    FENCED_AFTER_HEAL = "fenced-after-heal"
    FENCED_AFTER_RESTART = "fenced-after-restart"
    ORIGIN_KILL = "origin-kill"


FENCED = frozenset({Cause.FENCED_AFTER_HEAL, Cause.FENCED_AFTER_RESTART})
"""Causes that are wasted work of a worker back from a fault: a fault explains them, but a
worker must not do them (reported apart, and a failure of the run)."""


@dataclass(frozen=True)
class Extra:
    """An execution of a job beside the one the origin accepted, with its cause (None: unexplained)."""

    execution: Execution
    cause: Cause | None
    accepted: Execution | None


@dataclass
class Verdict:
    """What `explain` found."""

    jobs: int = 0
    executions: int = 0
    extras: list[Extra] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Jobs whose accepted result names no recorded execution, or none at all."""

    @property
    def unexplained(self) -> list[Extra]:
        """Re-executions no fault explains."""
        return [e for e in self.extras if e.cause is None]

    @property
    def fenced(self) -> list[Extra]:
        """Re-executions of jobs a worker back from a fault should have dropped unrun."""
        return [e for e in self.extras if e.cause in FENCED]

    def by_cause(self) -> Counter[str]:
        """Extra executions per cause name (`unexplained` for none)."""
        return Counter(e.cause.value if e.cause else "unexplained" for e in self.extras)


def _in_flight_at(execution: Execution, moment_us: int, slack_us: int) -> bool:
    end = execution.end_us
    return execution.start_us <= moment_us and (end is None or end >= moment_us - slack_us)


def _overlaps(execution: Execution, start_us: int, end_us: int) -> bool:
    end = execution.end_us if execution.end_us is not None else execution.start_us
    return execution.start_us <= end_us and end >= start_us


def cause_of(execution: Execution, stale: bool, faults: Iterable[Fault], slack_us: int) -> Cause | None:
    """The fault that explains `execution` (not the accepted one), or None. `stale`: the
    instance that ran it holds the job under an epoch older than the origin's (reassigned).

    Faults of the instance that ran it come first: an execution cut short by its own node's
    kill is that kill's, even if the origin died later. The origin's kill explains only an
    execution that ended (its worker lived on)."""
    for fault in faults:
        if fault.instance != execution.instance or fault.kind is FaultKind.ORIGIN_KILL:
            continue
        if fault.kind is FaultKind.WORKER_KILL:
            if _in_flight_at(execution, fault.start_us, slack_us):
                return Cause.WORKER_KILL
            if execution.start_us >= fault.end_us and stale:
                return Cause.FENCED_AFTER_RESTART
        elif stale:
            if _overlaps(execution, fault.start_us - slack_us, fault.end_us):
                return Cause.PARTITION
            if execution.start_us > fault.end_us:
                return Cause.FENCED_AFTER_HEAL
    for fault in faults:
        if (
            fault.kind is FaultKind.ORIGIN_KILL
            and execution.end_us is not None
            and _in_flight_at(execution, fault.start_us, slack_us)
        ):
            return Cause.ORIGIN_KILL
    return None


def explain(
    log: ExecutionLog,
    accepted_tokens: Mapping[str, str],
    faults: list[Fault],
    slack_s: float,
    stale: AbstractSet[tuple[str, str]] = frozenset(),
) -> Verdict:
    """Match every job's executions against the token its origin accepted (`accepted_tokens`,
    job id -> the result message's token) and give each other execution its cause. `stale`
    holds the (instance, job id) pairs whose epoch there is older than the origin's."""
    verdict = Verdict(jobs=len(accepted_tokens), executions=len(log.executions))
    slack_us = int(slack_s * 1_000_000)
    executions = log.by_job()
    for job_id in sorted(set(executions) - set(accepted_tokens)):
        verdict.problems.append(f"job {job_id} ran but the origin does not have it")
    for job_id, token in accepted_tokens.items():
        runs = executions.get(job_id, [])
        accepted = next((e for e in runs if e.token == token), None)
        if accepted is None:
            verdict.problems.append(
                f"job {job_id}: the origin's result names execution {token or '(none)'}, "
                f"which no node recorded ({len(runs)} recorded executions)"
            )
        for execution in runs:
            if execution is not accepted:
                replaced = (execution.instance, job_id) in stale
                cause = cause_of(execution, replaced, faults, slack_us)
                verdict.extras.append(Extra(execution, cause, accepted))
    return verdict


def token_of(result_message: str) -> str:
    """The execution token in a `record_execution` result message ('' if it has none)."""
    return result_message[len(TOKEN_PREFIX) :] if result_message.startswith(TOKEN_PREFIX) else ""


def stale_pairs(
    origin_epochs: Mapping[str, int], worker_epochs: Mapping[str, Mapping[str, int]]
) -> set[tuple[str, str]]:
    """(instance, job id) where a worker's epoch of a job is older than the origin's
    (`worker_epochs`: instance -> job id -> epoch, read from each worker's journal)."""
    return {
        (instance, job_id)
        for instance, epochs in worker_epochs.items()
        for job_id, epoch in epochs.items()
        if epoch < origin_epochs.get(job_id, epoch)
    }
