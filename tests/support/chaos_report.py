"""The report of a chaos run (tests/support/chaos.py): timeline, counts, re-executions by
cause, failures and the verdict, as Markdown-ish text for a terminal or a test failure."""

from __future__ import annotations

from .chaos import ChaosOutcome


def render(outcome: ChaosOutcome) -> str:
    """The report of a run: timeline, counts, re-executions by cause, verdict."""
    p, v = outcome.profile, outcome.verdict
    name = outcome.names.get
    lines = [
        f"# chaos: {'production timings' if not p.preset else 'test preset'}, at least {p.jobs} jobs, seed {p.seed}",
        "",
        "## Timeline",
        *(f"- {t:8.2f} s  {what}" for t, what in outcome.timeline),
        "",
        "## Counts",
        f"- jobs acknowledged by the origin: {outcome.added}",
        f"- states at the origin (FindJobs): {outcome.terminal_states}",
        f"- the origin's offloaded statistics: {outcome.statistics}",
        f"- executions recorded: {v.executions} for {v.jobs} jobs; beyond the accepted one: {len(v.extras)}",
        f"- re-executions by cause (slack {p.slack_s:.1f} s): {dict(sorted(v.by_cause().items())) or 'none'}",
        "",
        "## Re-executions",
    ]

    def at(us: int) -> str:
        return f"{(us - outcome.t0_us) / 1e6:.3f} s"

    for extra in sorted(v.extras, key=lambda x: (x.cause is not None, x.execution.start_us)):
        e, a = extra.execution, extra.accepted
        ended = "never ended" if e.end_us is None else f"ended {at(e.end_us)}"
        where = f"accepted: {name(a.instance, a.instance)} claim {a.claim}" if a else "accepted: none"
        arrival = outcome.arrivals.get((e.instance, e.job_id))
        came = ""
        if arrival:
            after, before = (at(us) if us else "?" for us in arrival)
            came = f", arrived there between {after} and {before}"
        cause = extra.cause.value if extra.cause else "UNEXPLAINED"
        lines.append(
            f"- {cause}: job {e.job_id} on {name(e.instance, e.instance)} claim {e.claim} started "
            f"{at(e.start_us)}, {ended}{came} ({where})"
        )
    if not v.extras:
        lines.append("- none")
    problems = outcome.failures + v.problems
    if v.unexplained:
        problems.append(f"{len(v.unexplained)} re-executions no fault explains")
    if v.fenced:
        problems.append(
            f"{len(v.fenced)} executions of jobs already reassigned (fenced work a worker must drop)"
        )
    lines += ["", "## Failures", *(f"- {f}" for f in problems[:50])]
    if len(problems) > 50:
        lines.append(f"- ... and {len(problems) - 50} more")
    if not problems:
        lines.append("- none")
    lines += ["", f"VERDICT: {'PASS' if outcome.passed else 'FAIL'}"]
    return "\n".join(lines)
