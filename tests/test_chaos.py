"""The chaos scenario, short (issue 13 point 12; the full one at production timings is
`benchmarks/run-chaos`): three namespace hosts on one bridge found by mDNS, an origin that only
offloads, 500 short jobs, kill -9 and restart of worker A, worker B cut off past the death
timeout and healed, kill -9 and restart of the origin (see tests/support/chaos.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import Chaos, ChaosProfile
from tests.support.chaos_report import render
from tests.support.executions import Execution, ExecutionLog, Fault, FaultKind, explain, read_executions
from tests.support.launcher import NodeFactory
from tests.support.netlab import Lab


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_jobs_through_a_worker_kill_a_partition_and_an_origin_kill_succeed_once_with_every_rerun_explained(
    lab: Lab, nodes: NodeFactory
) -> None:
    # Given three hosts, when the faults of the scenario hit while jobs flow
    outcome = Chaos(lab, nodes, ChaosProfile.quick(jobs=500, seed=13), print).run()
    print(render(outcome))
    # Then every job SUCCEEDED once at the origin, every re-execution has a fault for a cause,
    # every journal checks clean, and the three nodes end in one view with one leader
    assert outcome.passed, render(outcome)


# --- the explanation of re-executions, on hand-made records (the scenario's check can fail) ---

S = 1_000_000  # microseconds per second
A, B = "instance-a", "instance-b"
FAULTS = [
    Fault(FaultKind.WORKER_KILL, A, 10 * S, 12 * S),
    Fault(FaultKind.PARTITION, B, 20 * S, 40 * S),
    Fault(FaultKind.ORIGIN_KILL, "origin", 50 * S, 52 * S),
]


def _run(token: str, instance: str, start_s: float, end_s: float | None, job: str = "j") -> Execution:
    end = None if end_s is None else int(end_s * S)
    return Execution(token, job, 1, 1, instance, 1, int(start_s * S), end)


def _causes(*runs: Execution, accepted: str, stale: str = "") -> list[str]:
    """The causes of the runs beside the accepted one; `stale`: the instance whose epoch of the
    job the origin replaced (it was reassigned from there)."""
    replaced = {(stale, "j")} if stale else set()
    verdict = explain(ExecutionLog(list(runs), 0), {"j": accepted}, FAULTS, 1.0, replaced)
    assert not verdict.problems
    return [e.cause.value if e.cause else "unexplained" for e in verdict.extras]


def test_a_rerun_is_explained_only_by_a_fault_on_its_own_node_at_its_time() -> None:
    # in flight on A at its kill (never ended, or ended within the slack before it)
    assert _causes(_run("x", A, 9.9, None), _run("ok", A, 13, 13.01), accepted="ok") == ["worker-kill"]
    assert _causes(_run("x", A, 9.0, 9.5), _run("ok", A, 13, 13.01), accepted="ok") == ["worker-kill"]
    # run on B while it was cut off, then fenced work of B after the heal (jobs reassigned from B)
    ok_on_a = _run("ok", A, 31, 31.01)
    assert _causes(_run("x", B, 30, 30.01), ok_on_a, accepted="ok", stale=B) == ["partition"]
    assert _causes(ok_on_a, _run("x", B, 41, 41.01), accepted="ok", stale=B) == ["fenced-after-heal"]
    assert _causes(_run("x", A, 13, 13.01), _run("ok", B, 20, 20.1), accepted="ok", stale=A) == [
        "fenced-after-restart"
    ]
    # in flight when the origin died; cut short by A's own kill, although the origin died later
    assert _causes(_run("x", A, 49.9, 50.5), _run("ok", A, 53, 53.01), accepted="ok") == ["origin-kill"]
    assert _causes(_run("x", A, 9.99, None), _run("ok", A, 13, 13.01), accepted="ok") == ["worker-kill"]
    # no fault explains these: long before A's kill; on A during B's partition; on B during or
    # after the partition of a job that was not reassigned from B (same epoch: run twice there)
    assert _causes(_run("x", A, 5, 5.01), _run("ok", A, 13, 13.01), accepted="ok") == ["unexplained"]
    assert _causes(_run("x", A, 30, 30.01), _run("ok", B, 41, 41.01), accepted="ok") == ["unexplained"]
    assert _causes(_run("x", B, 30, 30.01), ok_on_a, accepted="ok") == ["unexplained"]
    assert _causes(_run("x", B, 45, 45.01), _run("ok", B, 46, 46.01), accepted="ok") == ["unexplained"]
    # never ended on a worker nobody killed: not the origin's kill either
    assert _causes(_run("x", B, 49.9, None), _run("ok", A, 53, 53.01), accepted="ok") == ["unexplained"]


def test_an_accepted_result_that_no_node_recorded_is_a_problem(tmp_path: Path) -> None:
    # Given execution files with one whole execution and one line cut short
    (tmp_path / f"{A}.executions").write_text(f"S t1 j 1 1 {A} 7 100\nE t1 200\nS t2 k 1")
    log = read_executions(tmp_path)
    assert [(e.token, e.end_us) for e in log.executions] == [("t1", 200)]
    assert log.bad_lines == 1
    # Then a job whose accepted token is unknown, and one that never ran, are problems
    verdict = explain(log, {"j": "t9", "k": "t2"}, FAULTS, slack_s=1.0)
    assert len(verdict.problems) == 2
    assert [e.cause for e in verdict.extras] == [None]  # j's recorded run is not the accepted one
