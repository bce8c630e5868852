"""The chaos scenario, short (issue 13 point 12; the full one at production timings is
`benchmarks/run-chaos`): three namespace hosts on one bridge found by mDNS, an origin that only
offloads, 500 short jobs, kill -9 and restart of worker A, worker B cut off past the death
timeout and healed, kill -9 and restart of the origin (see tests/support/chaos.py).
"""

from __future__ import annotations

import pytest

from tests.support.chaos import Chaos, ChaosProfile, render
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
