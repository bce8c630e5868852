"""The chaos scenario at production timings (issue 13 point 12); `benchmarks/run-chaos` runs it.

Three network namespace hosts on one bridge (tests/support/netlab.py), found by mDNS alone: an
origin without consumers that only offloads, and workers A and B running a ~10 ms job that
records each execution in a file per node (tests/consumers.py `record_execution`). Nodes run at
the production defaults (no test preset) in the secure default (mutual TLS). While jobs are
added steadily (AddJobs batches with dedup keys, retried through the origin's downtime) and in
a burst before each fault: kill -9 and restart of A; B cut off past the death timeout until the
origin reassigned its jobs, then healed; kill -9 and restart of the origin. Then it waits for
every job to be terminal at the origin and checks (tests/support/chaos.py): every job SUCCEEDED
exactly once at the origin, every execution beyond the accepted one explained by a fault
(fenced work after the heal or a restart counted apart, and a failure), `jobmesh check` clean on every data dir, one view
and one leader at the end. Prints the timeline, counts, re-executions by cause and a verdict;
exits 1 on FAIL, 2 when the lab cannot be built here.

Run inside a private network namespace as root there (benchmarks/run-chaos does both):
    .venv/bin/python -m benchmarks.chaos --jobs 3000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

from tests.support.chaos import Chaos, ChaosProfile
from tests.support.chaos_report import render
from tests.support.launcher import NodeFactory
from tests.support.netlab import Lab, LabUnsupported, check_supported


def main(argv: list[str] | None = None) -> int:
    """Run the scenario once; 0 on PASS, 1 on FAIL, 2 when the lab cannot be built."""
    parser = argparse.ArgumentParser(prog="benchmarks/run-chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs to add in all (default 3000)")
    parser.add_argument("--seed", type=int, default=1, help="seeds burst sizes and fault moments")
    parser.add_argument("--rate", type=float, help="steady jobs per second between bursts (default 50)")
    parser.add_argument("--quick", action="store_true", help="the suite's test-preset timings instead")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, journals)")
    parser.add_argument("--json", type=Path, help="also write the outcome as JSON to this file")
    args = parser.parse_args(argv)
    profile = (ChaosProfile.quick if args.quick else ChaosProfile.production)(args.jobs, args.seed)
    if args.rate:
        profile = replace(profile, rate_per_s=args.rate)
    try:
        check_supported()
    except LabUnsupported as e:
        print(f"chaos: {e}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    lab = Lab()
    nodes = NodeFactory(root)
    chaos = Chaos(lab, nodes, profile, lambda line: print(line, flush=True))
    outcome = chaos.outcome
    try:
        chaos.run()
    except Exception as e:  # a step that could not go on: report what was seen up to there
        traceback.print_exc()
        outcome.failures.append(f"the scenario stopped: {e!r}")
    finally:
        problems = nodes.close()  # a traceback in any node's log is a failure, as in the suite
        lab.close()
    outcome.failures += [f"at the stop: {problem}" for problem in problems]
    print()
    print(render(outcome))
    if args.json:
        v = outcome.verdict
        args.json.write_text(
            json.dumps(
                {
                    "passed": outcome.passed,
                    "profile": {"jobs": profile.jobs, "seed": profile.seed, "preset": profile.preset},
                    "timeline": outcome.timeline,
                    "added": outcome.added,
                    "states": outcome.terminal_states,
                    "executions": v.executions,
                    "extras": dict(v.by_cause()),
                    "failures": outcome.failures + v.problems,
                },
                indent=2,
            )
        )
    if args.keep:
        print(f"run directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
