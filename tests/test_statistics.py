"""Statistics: global, per queue and per topic counters and timings, correct after restarts and crashes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

from tests.support.job_calls import add_job, add_running_job, get_job, wait_for_state
from tests.support.launcher import NodeFactory
from tests.support.waiting import wait_for

S = jobs_pb2
QUEUES = json.dumps([{"name": "statq", "topics": ["stat/**"], "retry_delay_s": 0.05}])


def statistics(stub: object) -> jobs_pb2.GetStatisticsResponse:
    response: jobs_pb2.GetStatisticsResponse = stub.GetStatistics(S.GetStatisticsRequest())  # type: ignore[attr-defined]
    return response


def statistics_when(
    stub: object, ready: Callable[[jobs_pb2.GetStatisticsResponse], bool]
) -> jobs_pb2.GetStatisticsResponse:
    """Poll GetStatistics until `ready(statistics)`."""

    def poll() -> jobs_pb2.GetStatisticsResponse | None:
        stats = statistics(stub)
        return stats if ready(stats) else None

    return wait_for(poll, what="the statistics")


def counts(stats: jobs_pb2.Statistics) -> tuple[int, ...]:
    """(queued, active, finished, failed, cancelled, processed)."""
    return (stats.queued, stats.active, stats.finished, stats.failed, stats.cancelled, stats.processed)


def micros(ts: object) -> int:
    return int(ts.ToMicroseconds())  # type: ignore[attr-defined]


def test_statistics_count_every_outcome_time_it_exactly_and_survive_restart_and_crash(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a node with a queue for stat/** and jobs that succeed, fail once, cancel, or wait for a consumer
    node = nodes.start(
        "stats",
        [
            "stat/ok=consumers:succeed",
            "stat/flaky=consumers:fail_then_succeed",
            "stat/bad=consumers:cancel",
            "other/**=consumers:succeed",
        ],
        {"queues": QUEUES},
    )
    ok = [add_job(node.stub, "stat/ok") for _ in range(2)]
    flaky = add_job(node.stub, "stat/flaky", failures=1, attempts_file=str(tmp_path / "flaky"))
    bad = add_job(node.stub, "stat/bad")
    other = add_job(node.stub, "other/ok")
    add_job(node.stub, "stat/none/x")  # nobody consumes it: it stays QUEUED
    for job_id in [*ok, flaky, other]:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    wait_for_state(node.stub, bad, S.JOB_STATE_ERROR)

    # Then the counters are right at every level
    stats = statistics_when(node.stub, lambda s: getattr(s, "global").processed == 6)
    g = getattr(stats, "global")
    assert counts(g) == (1, 0, 4, 1, 1, 6)
    assert counts(stats.queues["statq"]) == (1, 0, 3, 1, 1, 5)
    assert counts(stats.queues["main"]) == (0, 0, 1, 0, 0, 1)
    assert counts(stats.topics["stat/ok"]) == (0, 0, 2, 0, 0, 2)
    assert counts(stats.topics["stat/flaky"]) == (0, 0, 1, 1, 0, 2)
    assert counts(stats.topics["stat/bad"]) == (0, 0, 0, 0, 1, 1)
    assert counts(stats.topics["stat/none/x"]) == (1, 0, 0, 0, 0, 0)
    assert not stats.topics["stat/none/x"].HasField("last_activated")
    # And the timings of a topic are exactly those of its jobs (queued -> started -> finished)
    jobs = [get_job(node.stub, job_id) for job_id in ok]
    topic = stats.topics["stat/ok"]
    waited = [micros(j.started_time) - micros(j.created_time) for j in jobs]
    processed = [micros(j.finished_time) - micros(j.started_time) for j in jobs]
    # Averages are Durations, to the microsecond
    assert topic.average_waiting.ToMicroseconds() == pytest.approx(sum(waited) / 2, abs=1)
    assert topic.average_processing.ToMicroseconds() == pytest.approx(sum(processed) / 2, abs=1)
    assert micros(topic.last_activated) == max(micros(j.started_time) for j in jobs)
    assert micros(topic.last_finished) == max(micros(j.finished_time) for j in jobs)
    every_finish = [micros(get_job(node.stub, j).finished_time) for j in [*ok, flaky, bad, other]]
    assert micros(g.last_finished) == max(every_finish)
    assert g.average_processing.ToMicroseconds() > 0

    # When the node restarts gracefully, and then crashes and starts again
    node.restart()
    after_restart = statistics(node.stub)
    node.kill()
    node.start()
    after_crash = statistics(node.stub)

    # Then the statistics are exactly the same
    assert after_restart == stats
    assert after_crash == stats

    # And new work adds to them
    wait_for_state(node.stub, add_job(node.stub, "stat/ok"), S.JOB_STATE_SUCCEEDED)
    more = statistics_when(node.stub, lambda s: s.topics["stat/ok"].processed == 3)
    assert counts(more.topics["stat/ok"]) == (0, 0, 3, 0, 0, 3)
    assert counts(getattr(more, "global")) == (1, 0, 5, 1, 1, 7)


def test_statistics_of_a_new_node_are_empty(nodes: NodeFactory) -> None:
    node = nodes.start("fresh")

    stats = statistics(node.stub)

    assert counts(getattr(stats, "global")) == (0, 0, 0, 0, 0, 0)
    assert not getattr(stats, "global").HasField("last_finished")
    assert dict(stats.queues) == {}
    assert dict(stats.topics) == {}


def test_an_attempt_cut_short_by_a_crash_counts_as_failed_like_its_retry_count_says(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given a job running when the node is killed
    node = nodes.start("crashy", ["crash/**=consumers:block_until_released"])
    job_id, files = add_running_job(node.stub, "crash/x", tmp_path)
    node.kill()

    # When the node restarts and the job's second attempt succeeds
    node.start()
    files.release.touch()
    job = wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)

    # Then the statistics count the cut-short attempt as failed, as the retry count does,
    # and only the measured attempt in the processing average
    assert job.retry_count == 1
    stats = statistics_when(node.stub, lambda s: s.topics["crash/x"].processed == 2)
    topic = stats.topics["crash/x"]
    assert counts(topic) == (0, 0, 1, 1, 0, 2)
    assert topic.average_processing.ToMicroseconds() == pytest.approx(
        micros(job.finished_time) - micros(job.started_time), abs=1
    )
