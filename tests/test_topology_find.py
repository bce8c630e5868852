"""Topology-wide FindJobs and statistics that count what they say (issue 13 point 5): `total_size`
counts each job once whatever the page size, pages continue with page tokens, topology-wide
statistics count jobs once (at their origin) apart from the attempts where they ran, and an
instance that does not answer is named (`partial`, `unanswered_instances`) and warned about by
`jobmesh jobs --topology` and `jobmesh stats --topology`.

Real node processes: an origin that offloads, and two workers that also run jobs of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from jobmesh.v1 import jobs_pb2

from tests.support.job_calls import get_job
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import start_cluster
from tests.support.protos import new_job
from tests.support.waiting import wait_for

TOPIC = "offload/count"
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED


def _request(page_size: int, page_token: str = "", newest_first: bool = False) -> jobs_pb2.FindJobsRequest:
    return jobs_pb2.FindJobsRequest(
        type=jobs_pb2.QUERY_TYPE_ALL,
        topic=TOPIC,
        page_size=page_size,
        page_token=page_token,
        newest_first=newest_first,
        scope=jobs_pb2.QUERY_SCOPE_TOPOLOGY,
    )


def _pages(node: NodeProcess, page_size: int, newest_first: bool = False) -> list[jobs_pb2.FindJobsResponse]:
    pages = [node.stub.FindJobs(_request(page_size, newest_first=newest_first), timeout=20)]
    while pages[-1].next_page_token:
        assert len(pages) < 100, "the pages never end"
        pages.append(
            node.stub.FindJobs(_request(page_size, pages[-1].next_page_token, newest_first), timeout=20)
        )
    return pages


def _add(node: NodeProcess, count: int) -> list[str]:
    request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC) for _ in range(count)])
    return list(node.stub.AddJobs(request).job_ids)


def test_topology_find_jobs_counts_each_job_once_pages_with_tokens_and_names_who_did_not_answer(
    nodes: NodeFactory,
) -> None:
    # Given 30 jobs offloaded from the origin and 6 that each worker ran of its own
    origin, (w1, w2) = start_cluster(nodes, "consumers:succeed")
    added = {origin: _add(origin, 30), w1: _add(w1, 6), w2: _add(w2, 6)}
    ids = [job_id for batch in added.values() for job_id in batch]
    for n, batch in added.items():
        for job_id in batch:
            wait_for(lambda n=n, j=job_id: get_job(n.stub, j).state == SUCCEEDED, 30.0, f"job {job_id}")  # type: ignore[misc]

    # When any node is asked, with small pages, oldest or newest first
    for asked in (origin, w2):
        for newest_first in (False, True):
            pages = _pages(asked, 7, newest_first)
            listed = [j.id for p in pages for j in p.jobs]
            # Then total_size counts every job once on every page, and the pages list each once
            assert {p.total_size for p in pages} == {42}
            assert sorted(listed) == sorted(ids)
            assert listed == sorted(listed, reverse=newest_first)
            assert [len(p.jobs) for p in pages] == [7, 7, 7, 7, 7, 7]
            assert not any(p.partial for p in pages)
    # and an offloaded job is listed as its origin has it
    first = origin.stub.FindJobs(_request(100), timeout=20)
    assert all(j.origin_instance == origin.instance_id for j in first.jobs if j.id in set(ids[:30]))
    assert first.total_size == 42
    assert not first.next_page_token

    # and topology-wide statistics count each job once, apart from the attempts where they ran
    whole = origin.stub.GetStatistics(_statistics_request(), timeout=20)
    assert _jobs_by_state(whole) == {SUCCEEDED: 42}
    assert getattr(whole, "global").finished == 42  # one attempt each: here attempts = jobs
    assert not whole.partial
    by_origin = {n: _jobs_by_state(n.stub.GetStatistics(jobs_pb2.GetStatisticsRequest())) for n in added}
    assert by_origin == {origin: {SUCCEEDED: 30}, w1: {SUCCEEDED: 6}, w2: {SUCCEEDED: 6}}

    # When a worker stops answering (paused), while the commands are asked at once (a paused peer
    # is soon declared dead and then not asked at all: the commands are started, and imported,
    # before the pause, and go when told to)
    clis = [
        subprocess.Popen(
            [sys.executable, "-c", CLI_ON_GO, *command, "--topology", "--node", origin.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=origin.cli_environ(),
        )
        for command in (("jobs", "--topic", TOPIC), ("stats",))
    ]
    for cli in clis:
        assert cli.stdout is not None
        assert cli.stdout.readline() == "ready\n"
    os.kill(w2.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        for cli in clis:
            assert cli.stdin is not None
            cli.stdin.write("go\n")
            cli.stdin.flush()
        with ThreadPoolExecutor(1) as pool:
            statistics = pool.submit(origin.stub.GetStatistics, _statistics_request(), timeout=30)
            partial = origin.stub.FindJobs(_request(100), timeout=30)
            partial_statistics = statistics.result()
        outcomes = [cli.communicate(timeout=60) for cli in clis]
    finally:
        os.kill(w2.process.pid, signal.SIGCONT)  # type: ignore[union-attr]

    # Then the answer says so and names it, and counts only what it could see
    assert partial.partial
    assert list(partial.unanswered_instances) == [w2.instance_id]
    assert partial.total_size == 36
    assert partial_statistics.partial
    assert list(partial_statistics.unanswered_instances) == [w2.instance_id]
    assert _jobs_by_state(partial_statistics) == {SUCCEEDED: 36}
    for cli, (_out, err) in zip(clis, outcomes, strict=True):
        assert cli.returncode == 0, err
        assert "did not answer" in err, (cli.args, _out)
        assert w2.instance_id in err


CLI_ON_GO = (
    "import sys; from node.cli import main; print('ready', flush=True); sys.stdin.readline(); "
    "sys.exit(main(sys.argv[1:]))"
)
"""`jobmesh ARGS` that has imported everything, says so, and runs when a line arrives."""


def _statistics_request() -> jobs_pb2.GetStatisticsRequest:
    return jobs_pb2.GetStatisticsRequest(scope=jobs_pb2.QUERY_SCOPE_TOPOLOGY)


def _jobs_by_state(response: jobs_pb2.GetStatisticsResponse) -> dict[int, int]:
    return {c.state: c.jobs for c in response.jobs}
