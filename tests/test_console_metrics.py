"""`/metrics` and `/healthz` of a real node process: Prometheus text that prometheus_client's own
parser reads, with counts that match the jobs the test ran; `/metrics` needs a read token."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.waiting import wait_for

SUCCEEDED, GIVEN_UP = 3, 5


def http_get(node: NodeProcess, path: str, token: str | None = None) -> tuple[int, str]:
    """GET over the node's HTTPS port, at its dial host (a lab host's management address) or
    loopback (its CA is not the browser's: no verification here)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://{node.dial_host or '127.0.0.1'}:{node.info['http_port']}{path}"
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_token(node: NodeProcess) -> str:
    return (node.data_dir / "cluster" / "admin.token").read_text().strip()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_the_jobs_a_node_ran(nodes: NodeFactory) -> None:
    node = nodes.start(
        "metrics",
        consumers=["ok/**=consumers:succeed", "bad/**=consumers:fail_always"],
        settings={"jobs.retries": 1},
    )
    ok = [add_job(node.stub, "ok/a") for _ in range(5)]
    bad = [add_job(node.stub, "bad/b") for _ in range(2)]
    for _ in range(3):
        add_job(node.stub, "idle/nobody")  # no consumer: stays QUEUED
    for job_id in ok:
        wait_for_state(node.stub, job_id, SUCCEEDED)
    for job_id in bad:
        wait_for_state(node.stub, job_id, GIVEN_UP)
    token = admin_token(node)

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        status, text = http_get(node, "/metrics", token)
        assert status == 200, text
        found = samples(text)
        key = ("jobmesh_jobs_finished_total", (("queue", "main"), ("state", "GIVEN_UP"), ("topic", "bad/b")))
        return found if found.get(key) == 2 else None

    found = wait_for(scraped, what="the metrics to count the given-up jobs")
    assert found[("jobmesh_jobs_added_total", (("queue", "main"), ("topic", "ok/a")))] == 5
    assert found[("jobmesh_jobs_added_total", (("queue", "main"), ("topic", "bad/b")))] == 2
    assert found[("jobmesh_jobs_queued", ())] == 3
    assert found[("jobmesh_jobs_queued_by_topic", (("queue", "main"), ("topic", "idle/nobody")))] == 3
    assert (
        found[("jobmesh_jobs_finished_total", (("queue", "main"), ("state", "SUCCEEDED"), ("topic", "ok/a")))]
        == 5
    )
    assert found[("jobmesh_job_retries_total", (("queue", "main"), ("topic", "bad/b")))] == 2
    # Histograms: every attempt (5 + 2 x 2) started and ended once.
    assert found[("jobmesh_job_wait_seconds_count", ())] == 9
    assert found[("jobmesh_job_run_seconds_count", ())] == 9
    assert found[("jobmesh_journal_commits_total", ())] >= 1
    assert (
        found[("jobmesh_journal_commit_operations_count", ())] == found[("jobmesh_journal_commits_total", ())]
    )
    assert found[("jobmesh_members", (("state", "alive"),))] == 1
    assert ("jobmesh_worker_streams", ()) in found
    assert found[("jobmesh_process_resident_memory_bytes", ())] > 0
    assert found[("jobmesh_jobs_active", ())] == 0


def test_healthz_is_open_and_metrics_need_a_read_token(nodes: NodeFactory) -> None:
    node = nodes.start("health")
    assert http_get(node, "/healthz") == (200, "ok\n")
    status, _ = http_get(node, "/metrics")
    assert status == 401
    status, _ = http_get(node, "/metrics", "jm1.forged.token")
    assert status == 401
    assert http_get(node, "/metrics", admin_token(node))[0] == 200
