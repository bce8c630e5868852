"""The web console in a real headless browser (Debian's chromium driven by Playwright), against
two real node processes of one cluster over HTTPS: what a person sees and can do.

The nodes run on two hosts of the namespace lab (tests/support/netlab.py), one subnet, so they
find each other by mDNS alone (no seed); the browser runs in the test's namespace and reaches
each console over the host's management link (10.78.<n>.2), as a person's browser reaches a
node across a network, not on loopback beside it.

Every page's browser console is captured and any error fails the test; each page's screenshot
is saved under docs/console/ (the README shows them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobmesh.v1 import jobs_pb2, schedules_pb2, topics_pb2
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from node.console.history import HISTORY_PAGE
from node.security import tokens
from node.security.cluster import ClusterFiles
from tests.support.job_calls import JobFiles, add_job, get_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.netlab import Lab
from tests.support.protos import new_job
from tests.support.topology import start_all, wait_views
from tests.support.waiting import wait_for
from tests.support.worker_stream import WorkerStream
from tests.test_console_metrics import http_get, samples

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
SUCCEEDED, STOPPED, ACTIVE, GIVEN_UP = 3, 4, 2, 5
CONSUMERS = [
    "web/off/**=consumers:succeed",
    "web/progress/**=consumers:progress_on_release",
    "web/stop/**=consumers:wait_until_stopped",
]


ALPHA_ONLY = ["web/fail/**=consumers:fail_always"]  # its jobs run where they are added: every event local
GRPC_PORT, HTTP_PORT = 7710, 7711  # the defaults: every host has its own port space
SUBNET = 1


@pytest.fixture(scope="module")
def cluster(module_lab: Lab, module_nodes: NodeFactory) -> tuple[NodeProcess, NodeProcess]:
    """alpha and beta on two hosts of one subnet: they meet by mDNS; the test dials their
    management addresses (the lab is torn down after the nodes: fixtures end in reverse)."""
    nodes = []
    for name in ("alpha", "beta"):
        host = module_lab.add_host(name, SUBNET)
        nodes.append(
            module_nodes.create(
                name,
                CONSUMERS + (ALPHA_ONLY if name == "alpha" else []),
                settings={
                    "discovery.mdns": "true",
                    "discovery.interfaces": "eth0",
                    "discovery.advertise_addresses": host.address,
                    "http.port": HTTP_PORT,
                },
                extra_args=["--name", name, "--host", "0.0.0.0", "--port", str(GRPC_PORT)],
                netns=host.netns.path,
                dial_host=host.mgmt_address,
            )
        )
    a, b = start_all(*nodes)
    wait_views([a, b], {"alpha", "beta"}, timeout=15)
    return a, b


def make_token(node: NodeProcess, *scopes: str) -> str:
    ca_key = ClusterFiles(node.data_dir).read_ca_key()
    return tokens.sign(tokens.new_claims("console-" + "-".join(scopes), list(scopes), [], 0), ca_key)


def base(node: NodeProcess) -> str:
    """The node's console as the browser reaches it: over its host's management address."""
    assert node.dial_host is not None
    assert node.dial_host.startswith("10.78."), node.dial_host
    return f"https://{node.dial_host}:{node.info['http_port']}"


@pytest.fixture(scope="module", autouse=True)
def browser(
    tmp_path_factory: pytest.TempPathFactory, cluster: tuple[NodeProcess, NodeProcess]
) -> Iterator[Browser]:
    """One chromium for the module (set up before the per-test leak guard: Playwright keeps a
    thread of its own while it runs); a first page warms it up. Launched after the cluster's
    hosts exist: their management links appear in this namespace, and a chromium that sees its
    interfaces change aborts the navigation in flight (net::ERR_NETWORK_CHANGED, seen in CI)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        tmp = tmp_path_factory.mktemp("browser")
        warm = browser.new_context(ignore_https_errors=True)
        page = warm.new_page()
        page.goto("about:blank")
        page.screenshot(path=str(tmp / "warm.png"))  # a first file write starts its executor thread
        warm.close()
        yield browser
        browser.close()


@pytest.fixture
def errors() -> list[str]:
    return []


def open_page(browser: Browser, errors: list[str]) -> Page:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)

    def on_console(message: ConsoleMessage) -> None:
        # Chromium aborts what is in flight when it sees this namespace's addresses change
        # (net::ERR_NETWORK_CHANGED): the lab's doing, not the console's. Once in a local suite
        # run it still came on the first page, every step of the test passing; not reproduced
        # by adding lab hosts during 100 page loads.
        if message.type == "error" and "net::ERR_NETWORK_CHANGED" not in message.text:
            errors.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
    return page


def sign_in(browser: Browser, errors: list[str], node: NodeProcess, token: str) -> Page:
    page = open_page(browser, errors)
    page.goto(base(node) + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Bearer token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def admin(browser: Browser, errors: list[str], cluster: tuple[NodeProcess, NodeProcess]) -> Iterator[Page]:
    page = sign_in(browser, errors, cluster[0], make_token(cluster[0], "admin"))
    yield page
    page.context.close()
    assert errors == [], errors


def test_sign_in_then_every_page_renders_and_both_instances_are_on_the_topology(
    admin: Page, cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    a, _ = cluster
    expect(admin.locator("tbody tr").filter(has_text="beta")).to_be_visible()  # per-instance counts
    admin.goto(base(a) + "/topology")
    expect(admin.locator('tr[data-instance="alpha"]')).to_be_visible()
    # beta is there at its data address on the lab's subnet, found by mDNS (no node has a seed)
    expect(admin.locator('tr[data-instance="beta"]')).to_contain_text(f"10.77.{SUBNET}.2:{GRPC_PORT}")
    assert not any("--seed" in node.args for node in cluster)
    shot(admin, "topology")
    a.schedules.AddSchedule(
        schedules_pb2.AddScheduleRequest(
            name="nightly report",
            job=new_job("web/off/report"),
            rules=[schedules_pb2.ScheduleRule(cron="0 3 * * *")],
        )
    )
    worker = WorkerStream.connect(a.channel, "web/worker/**", concurrency=3, name="resize-worker")
    try:
        admin.goto(base(a) + "/workers")
        expect(admin.get_by_role("row").filter(has_text="resize-worker")).to_contain_text("web/worker/**")
        shot(admin, "workers")
    finally:
        worker.close()
        worker.ended.wait(10)
    for path, heading in (("/schedules", "Schedules"), ("/queues", "Queues")):
        admin.goto(base(a) + path)
        expect(admin.get_by_role("heading", name=heading)).to_be_visible()
        shot(admin, heading.lower())


def test_suspend_and_resume_a_schedule(admin: Page, cluster: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = cluster
    a.schedules.AddSchedule(
        schedules_pb2.AddScheduleRequest(
            name="weekly", job=new_job("web/off/weekly"), rules=[schedules_pb2.ScheduleRule(cron="0 4 * * 1")]
        )
    )
    admin.goto(base(a) + "/schedules")
    row = admin.get_by_role("row").filter(has_text="weekly")
    row.get_by_role("button", name="Suspend").click()
    expect(admin.get_by_role("status")).to_contain_text("schedule suspended")
    expect(admin.get_by_role("row").filter(has_text="weekly")).to_contain_text("suspended")
    admin.get_by_role("row").filter(has_text="weekly").get_by_role("button", name="Resume").click()
    expect(admin.get_by_role("status")).to_contain_text("schedule resumed")


def test_a_wrong_token_is_refused_at_sign_in(
    browser: Browser, errors: list[str], cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    page = open_page(browser, errors)
    page.goto(base(cluster[0]) + "/jobs")
    page.get_by_label("Bearer token").fill("jm1.not.valid")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not signed by this cluster")
    page.context.close()
    # The browser reports the 401 response itself; that is the refusal, not a script error.
    assert all("401" in e for e in errors), errors
    errors.clear()


def test_disabling_a_topic_in_the_offloading_browser_sends_new_jobs_to_the_other_instance(
    admin: Page, cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    a, b = cluster
    admin.goto(base(a) + "/offloading")
    cell = admin.get_by_label("web/off/** on alpha")
    cell.select_option(label="Disabled")
    expect(admin.get_by_role("status")).to_contain_text("consumption changed")
    expect(admin.locator('form[data-instance="alpha"][data-topic="web/off/**"] select')).to_have_value(
        str(topics_pb2.CONSUMPTION_SETTING_DISABLED)
    )
    shot(admin, "offloading")
    wait_for(lambda: "web/off/**" in _disabled_on(b, "alpha"), what="beta to see alpha's setting")
    job_ids = [add_job(a.stub, "web/off/x") for _ in range(3)]
    for job_id in job_ids:
        job = wait_for_state(a.stub, job_id, SUCCEEDED)
        assert job.target_instance == b.instance_id
    metrics = samples(http_get(a, "/metrics", make_token(a, "read"))[1])
    assert metrics[("jobmesh_transfer_frames_sent_total", (("peer", b.instance_id),))] >= 1
    assert metrics[("jobmesh_members", (("state", "alive"),))] == 2
    admin.goto(base(a) + "/jobs?topic=web/off/x")
    expect(admin.locator(f'tr[data-job="{job_ids[0]}"]')).to_contain_text("beta")
    shot(admin, "jobs")
    admin.goto(base(a) + "/offloading")
    admin.get_by_label("web/off/** on alpha").select_option(label="Enabled")
    expect(admin.get_by_role("status")).to_contain_text("consumption changed")


def _disabled_on(node: NodeProcess, name: str) -> list[str]:
    from jobmesh.v1 import topics_pb2_grpc

    response = topics_pb2_grpc.TopicServiceStub(node.channel).ListTopicConsumption(
        topics_pb2.ListTopicConsumptionRequest()
    )
    return [s.topic for i in response.instances if i.name == name for s in i.settings]


def test_a_jobs_progress_bar_advances_live(
    admin: Page, cluster: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    a, _ = cluster
    files = JobFiles.under(tmp_path, "progress")
    job_id = add_job(a.stub, "web/progress/p", b"input", steps=3, **files.properties())
    wait_for(files.started.exists, what="the job to start")
    admin.goto(base(a) + f"/jobs/{job_id}")
    bar = admin.locator("#progress")
    expect(admin.locator("#progress-text")).to_have_text("0 / 3")
    admin.evaluate("window.notReloaded = true")
    for step in (1, 2):
        Path(f"{files.release}.{step}").touch()
        expect(admin.locator("#progress-text")).to_have_text(f"{step} / 3")
        assert bar.get_attribute("max") is not None
    assert admin.evaluate("window.notReloaded") is True  # the stream moved the bar, not a reload
    assert admin.evaluate("document.getElementById('progress').value") == 2
    expect(admin.locator("#log")).to_contain_text("step 2 of 3")  # the log follows live too
    expect(admin.locator("#log-count")).to_have_text("2")  # and its heading counts the lines
    shot(admin, "job")
    admin.goto(base(a) + "/")
    expect(admin.locator("#totals")).to_contain_text("added")  # the overview's stream drew the chart
    shot(admin, "overview")
    admin.goto(base(a) + f"/jobs/{job_id}")
    Path(f"{files.release}.3").touch()
    expect(admin.locator("#state")).to_have_text("SUCCEEDED")
    expect(admin.locator("#log")).to_contain_text("step 3 of 3")
    # The history (the page reloads once the job ends): its lifecycle, newest first, no PROGRESS
    history = admin.locator("#history tbody tr")
    expect(history.first).to_contain_text("FINISHED")
    expect(history.first).to_contain_text("SUCCEEDED")
    expect(history.last).to_contain_text("ADDED")
    expect(admin.locator("#history tbody")).to_contain_text("STARTED")
    expect(admin.locator("#history tbody")).not_to_contain_text("PROGRESS")


def test_a_long_event_history_is_paged_newest_first(
    admin: Page, cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    # Given a job that failed and was retried 40 times (a STARTED and a FAILED event each)
    a, _ = cluster
    job = new_job("web/fail/many")
    job.max_retries = 40
    job.retry_delay.SetInParent()  # no delay between the attempts
    job_id = a.stub.AddJob(jobs_pb2.AddJobRequest(job=job)).job.id
    wait_for_state(a.stub, job_id, GIVEN_UP)
    expected = [
        row[0]
        for row in a.query_journal(
            "SELECT seq FROM job_events WHERE job_id = ? AND type != 3 ORDER BY seq DESC", (job_id,)
        )
    ]
    assert len(expected) == 83, len(expected)  # ADDED, then 41 attempts
    # When its page and then its older events are opened
    admin.goto(base(a) + f"/jobs/{job_id}")
    rows = admin.locator("#history tbody tr")
    expect(rows).to_have_count(HISTORY_PAGE)
    first = [int(s) for s in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    expect(rows.first).to_contain_text("GIVEN_UP")
    admin.get_by_role("link", name="Older events").click()
    expect(admin.get_by_role("heading", name="Events (older)")).to_be_visible()
    expect(rows).to_have_count(len(expected) - HISTORY_PAGE)
    second = [int(s) for s in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    # Then the pages hold every event once, newest first, ending with ADDED; no more pages
    assert first + second == expected
    expect(rows.last).to_contain_text("ADDED")
    expect(admin.get_by_role("link", name="Older events")).to_have_count(0)
    admin.get_by_role("link", name="Newest events").click()
    expect(rows.first).to_have_attribute("data-seq", str(expected[0]))
    # A malformed page key is refused with a message, not a crash
    for bad in ("-1", "0", "x", "²", "9" * 20, "9" * 5000):
        response = admin.request.get(base(a) + f"/jobs/{job_id}?events_before={bad}")
        assert response.status == 400, bad
        assert "events_before" in response.text()


def test_stop_a_job_from_its_page(admin: Page, cluster: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = cluster
    job_id = add_job(a.stub, "web/stop/s")
    wait_for_state(a.stub, job_id, ACTIVE)
    admin.goto(base(a) + f"/jobs/{job_id}")
    admin.get_by_role("button", name="Stop").click()
    expect(admin.get_by_role("status")).to_contain_text("job stop requested")
    wait_for_state(a.stub, job_id, STOPPED)
    expect(admin.locator("#state")).to_have_text("STOPPED")


def test_suspend_and_resume_a_queue(admin: Page, cluster: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = cluster
    admin.goto(base(a) + "/queues")
    row = admin.locator('tr[data-queue="main"]')
    row.get_by_role("button", name="Suspend").click()
    expect(admin.get_by_role("status")).to_contain_text("queue suspended")
    expect(admin.locator('tr[data-queue="main"] .queue-state')).to_have_text("suspended")
    assert any(q.suspended for q in a.queues.ListQueues(_list_queues()).queues if q.config.name == "main")
    admin.locator('tr[data-queue="main"]').get_by_role("button", name="Resume").click()
    expect(admin.locator('tr[data-queue="main"] .queue-state')).to_have_text("running")


def _list_queues() -> Any:
    from jobmesh.v1 import queues_pb2

    return queues_pb2.ListQueuesRequest()


def test_a_read_token_sees_no_action_controls_and_its_posts_are_refused(
    browser: Browser, errors: list[str], cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    a, _ = cluster
    job_id = add_job(a.stub, "web/off/read")
    wait_for_state(a.stub, job_id, SUCCEEDED)
    page = sign_in(browser, errors, a, make_token(a, "read"))
    page.goto(base(a) + f"/jobs/{job_id}")
    expect(page.locator("#state")).to_have_text("SUCCEEDED")
    for label in ("Stop", "Retry", "Remove"):
        expect(page.get_by_role("button", name=label)).to_have_count(0)
    page.goto(base(a) + "/queues")
    expect(page.get_by_role("button", name="Suspend")).to_have_count(0)
    page.goto(base(a) + "/offloading")
    expect(page.locator("select[data-autosubmit]")).to_have_count(0)
    csrf = page.locator('form[action="/signout"] input[name=csrf]').get_attribute("value")
    assert csrf
    for action, fields in (
        ("queue-suspend", {"queue": "main"}),
        ("job-remove", {"job": job_id}),
        ("consumption", {"instance": a.instance_id, "topic": "web/off/**", "setting": "2"}),
    ):
        response = page.request.post(
            base(a) + f"/actions/{action}", form={"csrf": csrf, "back": "/", **fields}
        )
        assert response.status == 403, (action, response.text())
    assert get_job(a.stub, job_id).state == SUCCEEDED
    # And without the CSRF token even an admin's POST is refused.
    page.context.close()
    assert errors == [], errors


def test_an_admin_post_without_the_csrf_token_is_refused(
    admin: Page, cluster: tuple[NodeProcess, NodeProcess]
) -> None:
    a, _ = cluster
    response = admin.request.post(base(a) + "/actions/queue-suspend", form={"queue": "main", "back": "/"})
    assert response.status == 403
    assert not any(q.suspended for q in a.queues.ListQueues(_list_queues()).queues)
