"""Queues at work, in-process: ordering, fairness, parallelism, retries, timeouts, keep_jobs, selection.

Each test runs a Node on its own event loop (see conftest) with queues from the same JSON
setting `--set queues=...` takes, and consumers that record what ran and when.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jobmesh.v1 import jobs_pb2

from node import Job, JobContext, JobResult, JobState, Node, NodeConfig
from node.errors import JobNotFound, JournalFull, StorageUnavailable
from node.jobs import runner as runner_module
from node.model.events import EventType, JobEvent
from tests.support.in_process import finished
from tests.support.waiting import async_wait_for

TIMEOUT_S = 10.0


def config_with(tmp_path: Path, *queues: dict[str, object], **settings: object) -> NodeConfig:
    """The test preset with queues (as `--set queues=JSON`) and dotted settings."""
    overrides: dict[str, object] = {"queues": json.dumps(list(queues))}
    overrides.update({key.replace("__", "."): value for key, value in settings.items()})
    return NodeConfig.for_tests(tmp_path).with_overrides(overrides)


class Recorder:
    """A sync consumer that notes each attempt (label, start, end) and fails the first `fail` ones of a label."""

    def __init__(self, duration_s: float = 0.0) -> None:
        self.runs: list[tuple[str, float, float]] = []
        self.duration_s = duration_s
        self._lock = threading.Lock()

    def __call__(self, job: Job, context: JobContext) -> JobResult:
        label = str(job.properties["label"])
        start = time.monotonic()
        if self.duration_s:
            time.sleep(self.duration_s)
        with self._lock:
            self.runs.append((label, start, time.monotonic()))
            attempt = sum(1 for run in self.runs if run[0] == label)
        fail = job.properties.get("fail", 0)
        assert isinstance(fail, int)
        if attempt <= fail:
            return JobResult.failed(f"{label}: attempt {attempt} fails")
        return JobResult.succeeded(f"{label}: attempt {attempt}")

    @property
    def labels(self) -> list[str]:
        return [run[0] for run in self.runs]

    def starts(self, label: str) -> list[float]:
        return [run[1] for run in self.runs if run[0] == label]


class RetryDelays:
    """For each FAILED event, the delay the node set: the job's due time minus the failure time.

    Read from the journal right after the commit (a listener), so exact, whatever the timing.
    """

    def __init__(self, n: Node) -> None:
        self._n = n
        self.delays_us: dict[str, list[int]] = {}
        self._reads: set[asyncio.Task[None]] = set()
        self._remove = n.jobs.add_event_listener(self._on_events)

    def _on_events(self, events: list[JobEvent]) -> None:
        for event in events:
            if event.type is EventType.FAILED:
                task = asyncio.ensure_future(self._read(event))
                self._reads.add(task)
                task.add_done_callback(self._reads.discard)

    async def _read(self, event: JobEvent) -> None:
        job = await self._n.jobs.get_job(event.job_id)
        if job.retry_count == event.retry_count:  # else it failed again already (short delays)
            self.delays_us.setdefault(job.id, []).append(job.due_us - event.time_us)

    async def close(self) -> None:
        self._remove()
        await asyncio.gather(*self._reads)


# --- ordered -------------------------------------------------------------------------------------


async def test_ordered_queue_keeps_fifo_and_a_failed_job_blocks_it_for_its_delay_then_runs_first(
    tmp_path: Path,
) -> None:
    # Given an ordered queue over several topics, and five jobs queued while it is suspended,
    # the second of which fails its first attempt
    delay = 0.3
    recorder = Recorder()
    config = config_with(
        tmp_path,
        {"name": "fifo", "topics": ["fifo/**"], "type": "ordered", "retry_delay_s": delay, "max_parallel": 4},
    )
    async with Node(config) as n:
        n.consumers.register(["fifo/**"], recorder)
        await n.jobs.suspend_queue("fifo", True)
        topics = ["fifo/a", "fifo/b", "fifo/a/x", "fifo/c", "fifo/b"]
        ids = [
            (await n.jobs.add_job(topic, {"label": f"j{i}", "fail": 1 if i == 1 else 0})).id
            for i, topic in enumerate(topics)
        ]

        # When the queue runs
        await n.jobs.suspend_queue("fifo", False)
        jobs = [await finished(n, job_id) for job_id in ids]

    # Then the jobs ran one at a time in the order they were added; the failed one ran again
    # first, only after its retry delay, and nothing ran while it waited
    assert recorder.labels == ["j0", "j1", "j1", "j2", "j3", "j4"]
    assert all(job.state is JobState.SUCCEEDED for job in jobs)
    assert jobs[1].retry_count == 1
    for earlier, later in itertools.pairwise(recorder.runs):
        assert earlier[2] <= later[1], f"{earlier[0]} and {later[0]} overlapped in an ordered queue"
    first, second = recorder.starts("j1")
    assert second - first >= delay
    assert {job.queue for job in jobs} == {"fifo"}


async def test_ordered_queue_waits_for_the_head_even_when_later_jobs_are_due(tmp_path: Path) -> None:
    # Given an ordered queue whose first job fails twice with a delay the consumer asks for
    runs: list[str] = []

    def consumer(job: Job, context: JobContext) -> JobResult:
        runs.append(job.topic)
        if job.topic == "head/first" and runs.count("head/first") <= 2:
            return JobResult.failed("again", retry_delay_s=0.15)
        return JobResult.succeeded()

    config = config_with(
        tmp_path, {"name": "head", "topics": ["head/*"], "type": "ordered", "retry_delay_s": 0.01}
    )
    async with Node(config) as n:
        n.consumers.register(["head/*"], consumer)
        await n.jobs.suspend_queue("head", True)
        first = await n.jobs.add_job("head/first")
        later = [await n.jobs.add_job("head/later") for _ in range(3)]
        await n.jobs.suspend_queue("head", False)
        for job in [first, *later]:
            assert (await finished(n, job.id)).state is JobState.SUCCEEDED

    # Then the later jobs never jumped the queue while the head waited for its retries
    assert runs == ["head/first"] * 3 + ["head/later"] * 3


# --- topic round robin ----------------------------------------------------------------------------


async def test_round_robin_takes_turns_between_topics(tmp_path: Path) -> None:
    # Given a round-robin queue running one job at a time, with a busy topic queued first
    recorder = Recorder()
    config = config_with(
        tmp_path, {"name": "rr", "topics": ["rr/*"], "type": "topic_round_robin", "max_parallel": 1}
    )
    async with Node(config) as n:
        n.consumers.register(["rr/*"], recorder)
        await n.jobs.suspend_queue("rr", True)
        ids = [(await n.jobs.add_job("rr/busy", {"label": f"busy{i}"})).id for i in range(6)]
        ids += [(await n.jobs.add_job("rr/quiet", {"label": f"quiet{i}"})).id for i in range(2)]
        ids += [(await n.jobs.add_job("rr/other", {"label": f"other{i}"})).id for i in range(2)]

        # When it runs
        await n.jobs.suspend_queue("rr", False)
        for job_id in ids:
            await finished(n, job_id)

    # Then the topics alternate (each topic in its own FIFO order) until only the busy one is left
    assert recorder.labels == [
        "busy0",
        "other0",
        "quiet0",
        "busy1",
        "other1",
        "quiet1",
        "busy2",
        "busy3",
        "busy4",
        "busy5",
    ]


async def test_round_robin_with_parallelism_claims_one_job_per_topic_per_turn(tmp_path: Path) -> None:
    # Given a round-robin queue running 3 jobs at once and 3 topics with 3 jobs each
    recorder = Recorder(duration_s=0.01)
    config = config_with(
        tmp_path, {"name": "rr3", "topics": ["rr3/*"], "type": "topic_round_robin", "max_parallel": 3}
    )
    async with Node(config) as n:
        n.consumers.register(["rr3/*"], recorder)
        await n.jobs.suspend_queue("rr3", True)
        ids = [
            (await n.jobs.add_job(f"rr3/{topic}", {"label": f"{topic}{i}"})).id
            for topic in ("a", "b", "c")
            for i in range(3)
        ]
        await n.jobs.suspend_queue("rr3", False)
        for job_id in ids:
            await finished(n, job_id)

    # Then every topic's first job starts before any topic's third
    starts = {label: start for label, start, _ in recorder.runs}
    assert max(starts[f"{t}0"] for t in "abc") < min(starts[f"{t}2"] for t in "abc")
    for topic in "abc":
        assert starts[f"{topic}0"] < starts[f"{topic}1"] < starts[f"{topic}2"]


# --- unordered parallelism ------------------------------------------------------------------------


async def test_unordered_queue_runs_up_to_max_parallel_jobs_at_once_and_never_more(tmp_path: Path) -> None:
    # Given an unordered queue with max_parallel 3 and consumers that block until the test lets them go
    lock = threading.Lock()
    release = threading.Event()
    state = {"running": 0, "peak": 0, "done": 0}

    def consumer(job: Job, context: JobContext) -> None:
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        release.wait(TIMEOUT_S)
        with lock:
            state["running"] -= 1
            state["done"] += 1

    config = config_with(tmp_path, {"name": "par", "topics": ["par/*"], "max_parallel": 3})
    async with Node(config) as n:
        n.consumers.register(["par/*"], consumer)
        ids = [(await n.jobs.add_job(f"par/{i % 2}")).id for i in range(9)]

        # When the jobs run: exactly 3 at a time, the others wait QUEUED
        async def three_running() -> bool:
            return state["running"] == 3

        await async_wait_for(three_running, what="3 jobs to run at once")
        await asyncio.sleep(0.1)  # room for a 4th to start, if the limit were broken
        counts = await n.jobs.count_by_state()
        assert counts == {JobState.ACTIVE: 3, JobState.QUEUED: 6}
        info = await n.jobs.queue_info("par")
        assert (info.active, info.queued, info.config.parallelism) == (3, 6, 3)

        release.set()
        for job_id in ids:
            assert (await finished(n, job_id)).state is JobState.SUCCEEDED

    assert state == {"running": 0, "peak": 3, "done": 9}


async def test_a_queue_with_nothing_more_due_claims_again_only_when_woken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim is a write transaction on the single writer. A job's end used to claim twice
    # (when its consumer returned, and after its result committed), both times for nothing on
    # a queue that had no other job due: two of every three claims, and half of a one-job-
    # at-a-time node's commits.
    config = config_with(tmp_path, {"name": "calm", "topics": ["calm/*"], "max_parallel": 4})
    async with Node(config) as n:

        def consumer(job: Job, context: JobContext) -> JobResult | None:
            failing = job.properties.get("fail") and job.retry_count == 0
            return JobResult.failed("the first attempt fails") if failing else None

        n.consumers.register(["calm/*"], consumer)
        claims = 0
        claim = n.jobs.store.claim
        runner = n.jobs._runners["calm"]

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            pending = claim(*args, **kwargs)
            # A slot freeing while the claim is in flight needs no claim of its own: the last job's
            # end did that now and then on a busy machine (31-33 claims), here every time.
            runner._slot_freed()
            return await pending

        warm_up = await n.jobs.add_job("calm/first")  # after the start-up's own wake-ups
        assert (await finished(n, warm_up.id)).state is JobState.SUCCEEDED
        await async_wait_for(lambda: n.jobs.idle, what="the node to be idle")
        monkeypatch.setattr(n.jobs.store, "claim", counted)
        jobs = 30
        for i in range(jobs):
            job = await n.jobs.add_job(f"calm/{i}")
            assert (await finished(n, job.id)).state is JobState.SUCCEEDED
        # Each add wakes the runner once (a claim in its commit or the next); a job's end does
        # not, with nothing else due. A failed attempt may have put its job back: it claims.
        assert jobs <= claims <= jobs + 2, claims  # 90 before, 60 with a claim in flight
        before = claims
        failing = await n.jobs.add_job("calm/again", {"fail": 1}, retry_delay_s=0.05, max_retries=1)
        assert (await finished(n, failing.id)).state is JobState.SUCCEEDED
        assert claims >= before + 2


async def test_a_slot_freed_while_a_claim_fills_every_slot_is_claimed_for_without_a_wake_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job's end during a claim sets no wake-up (above). When that claim took as many jobs as
    # it had slots for, the runner must claim again by itself for the slot that freed: here
    # nothing else would wake it (job b holds the other slot until c has started).
    config = config_with(tmp_path, {"name": "full", "topics": ["full/*"], "max_parallel": 2})
    gates = {"a": threading.Event(), "b": threading.Event(), "c": threading.Event()}
    gates["c"].set()
    started: list[str] = []

    def consumer(job: Job, context: JobContext) -> None:
        label = job.topic.removeprefix("full/")
        started.append(label)
        gates[label].wait()  # every gate opens when the test ends, also when it fails

    async with Node(config) as n:
        n.consumers.register(["full/*"], consumer)
        runner = n.jobs._runners["full"]
        claimed: list[list[str]] = []  # by the claims after a runs
        claim = n.jobs.store.claim

        async def claim_while_a_ends(*args: Any, **kwargs: Any) -> Any:
            if not claimed:  # b and c's claim, with one slot free: a ends while it is in flight
                gates["a"].set()
                await async_wait_for(lambda: a.id not in runner._running, what="a's attempt to end")
            jobs, due = await claim(*args, **kwargs)
            claimed.append([job.topic for job in jobs])
            return jobs, due

        try:
            a = await n.jobs.add_job("full/a")
            await async_wait_for(
                lambda: started == ["a"] and runner._waiting, what="a to run, the runner to wait"
            )
            monkeypatch.setattr(n.jobs.store, "claim", claim_while_a_ends)
            b, c = await n.jobs.add_proto_jobs(
                [jobs_pb2.NewJob(topic="full/b"), jobs_pb2.NewJob(topic="full/c")]
            )
            await async_wait_for(lambda: "c" in started, what="c to start while b holds its slot")
        finally:
            for gate in gates.values():  # b's end would claim c at last: only after a failure
                gate.set()
        assert claimed[:2] == [["full/b"], ["full/c"]]
        for job_id in (a.id, b.id, c.id):
            assert (await finished(n, job_id)).state is JobState.SUCCEEDED


async def test_a_claim_that_fails_is_tried_again_and_the_queue_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A failed claim (a full disk, a failing one, a bug) used to end the queue's dispatcher for
    # good, without a word: no job of the queue started again until a restart.
    monkeypatch.setattr(runner_module, "CLAIM_RETRY_S", 0.01)
    config = config_with(tmp_path, {"name": "flaky", "topics": ["flaky/*"]})
    async with Node(config) as n:
        n.consumers.register(["flaky/*"], lambda job, context: None)
        failures: list[Exception] = [
            JournalFull("the journal's disk is full"),
            StorageUnavailable("the journal cannot be written"),
            RuntimeError("a bug in a claim"),
        ]
        claim = n.jobs.store.claim

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop(0)
            return await claim(*args, **kwargs)

        monkeypatch.setattr(n.jobs.store, "claim", failing)
        job = await n.jobs.add_job("flaky/x")  # nothing else wakes the queue after it
        assert (await finished(n, job.id)).state is JobState.SUCCEEDED
        assert not failures
    logged = [r.getMessage() for r in caplog.records if "queue flaky: claiming jobs" in r.getMessage()]
    # Said once while they fail (not once a retry), and once when they work again.
    assert len(logged) == 2
    assert "failed" in logged[0]
    assert "disk is full" in logged[0]
    assert "works again" in logged[1]


# --- retries and backoff ------------------------------------------------------------------------------


async def test_failed_attempts_back_off_exponentially_up_to_the_cap(tmp_path: Path) -> None:
    # Given a queue: first retry after 0.1 s, doubling, capped at 0.25 s; 3 retries
    recorder = Recorder()
    config = config_with(
        tmp_path,
        {
            "name": "backoff",
            "topics": ["backoff/*"],
            "retries": 3,
            "retry_delay_s": 0.1,
            "retry_backoff": 2.0,
            "retry_delay_max_s": 0.25,
        },
    )
    async with Node(config) as n:
        n.consumers.register(["backoff/*"], recorder)
        delays = RetryDelays(n)
        job = await n.jobs.add_job("backoff/x", {"label": "x", "fail": 99})
        done = await finished(n, job.id)
        await delays.close()

    # Then it is given up after 4 attempts, waiting 0.1, 0.2, then 0.25 (not 0.4) between them
    assert (done.state, done.retry_count, done.max_retries) == (JobState.GIVEN_UP, 4, 3)
    assert delays.delays_us[job.id] == [100_000, 200_000, 250_000]
    gaps = [b - a for a, b in itertools.pairwise(recorder.starts("x"))]
    assert all(gap >= delay for gap, delay in zip(gaps, (0.1, 0.2, 0.25), strict=True)), gaps


async def test_per_job_max_retries_and_retry_delay_override_the_queue(tmp_path: Path) -> None:
    recorder = Recorder()
    config = config_with(
        tmp_path, {"name": "over", "topics": ["over/*"], "retries": 10, "retry_delay_s": 0.01}
    )
    async with Node(config) as n:
        n.consumers.register(["over/*"], recorder)
        delays = RetryDelays(n)
        # A job allowed only 1 retry, on a queue allowing 10
        few = await n.jobs.add_job("over/few", {"label": "few", "fail": 99}, max_retries=1)
        # A job retried forever, on a queue that would give up after 10
        forever = await n.jobs.add_job("over/forever", {"label": "forever", "fail": 12}, max_retries=-1)
        # A job that waits 0.3 s before its retry, on a queue that waits 0.01 s
        slow = await n.jobs.add_job("over/slow", {"label": "slow", "fail": 1}, retry_delay_s=0.3)
        plain = await n.jobs.add_job("over/plain", {"label": "plain", "fail": 1})

        few_done, forever_done, slow_done, plain_done = [
            await finished(n, job.id) for job in (few, forever, slow, plain)
        ]
        await delays.close()

    assert (few.max_retries, few_done.state, few_done.retry_count) == (1, JobState.GIVEN_UP, 2)
    assert len(recorder.starts("few")) == 2
    assert (forever.max_retries, forever_done.state, forever_done.retry_count) == (-1, JobState.SUCCEEDED, 12)
    assert len(recorder.starts("forever")) == 13
    assert slow_done.state is plain_done.state is JobState.SUCCEEDED
    assert (delays.delays_us[slow.id], delays.delays_us[plain.id]) == ([300_000], [10_000])
    slow_first, slow_second = recorder.starts("slow")
    assert slow_second - slow_first >= 0.3


# --- timeouts ---------------------------------------------------------------------------------------------


async def test_queue_timeout_stops_the_attempt_and_counts_it_failed(tmp_path: Path) -> None:
    # Given a queue with a 0.2 s timeout and 1 retry, and consumers (sync and async) that run
    # until they are told to stop
    stopped_seen: list[str] = []

    def sync_consumer(job: Job, context: JobContext) -> JobResult:
        deadline = time.monotonic() + TIMEOUT_S
        while not context.is_stopped() and time.monotonic() < deadline:
            time.sleep(0.005)
        stopped_seen.append(job.topic)
        return JobResult.succeeded("too late: the attempt timed out")

    async def async_consumer(job: Job, context: JobContext) -> JobResult:
        await asyncio.sleep(TIMEOUT_S)  # cancelled by the timeout
        return JobResult.succeeded("never")

    config = config_with(
        tmp_path,
        {"name": "slow", "topics": ["slow/*"], "timeout_s": 0.2, "retries": 1, "retry_delay_s": 0.01},
    )
    async with Node(config) as n:
        n.consumers.register(["slow/sync"], sync_consumer)
        n.consumers.register(["slow/async"], async_consumer)
        sync_job = await n.jobs.add_job("slow/sync")
        async_job = await n.jobs.add_job("slow/async")

        # Then each attempt is cut off, retried once, and the job is given up
        for job in (sync_job, async_job):
            done = await finished(n, job.id)
            assert (done.state, done.retry_count) == (JobState.GIVEN_UP, 2)
            assert done.result_message == "timed out after 0.2s"
            assert done.started_us is not None
            assert done.finished_us is not None
            assert done.finished_us - done.started_us >= 200_000
        # And the statistics count the timed-out attempts as failed, the last one as cancelled
        report = await n.jobs.statistics()
        queue = report.queues["slow"]
        assert (queue.finished, queue.failed, queue.cancelled, queue.processed) == (0, 2, 2, 4)
        # And the sync consumer was told to stop (it cannot be killed)
        await async_wait_for(
            lambda: _true_after(lambda: len(stopped_seen) == 2), what="both sync attempts to see the stop"
        )


async def _true_after(check: Callable[[], bool]) -> bool:
    return check()


async def test_per_job_timeout_overrides_the_queue_and_zero_means_none(tmp_path: Path) -> None:
    release = threading.Event()
    contexts: dict[str, JobContext] = {}

    def consumer(job: Job, context: JobContext) -> JobResult:
        contexts[job.topic] = context
        deadline = time.monotonic() + TIMEOUT_S
        while not context.is_stopped() and not release.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        return JobResult.succeeded("released") if release.is_set() else JobResult.failed("stopped")

    config = config_with(tmp_path, {"name": "t", "topics": ["t/*"], "timeout_s": 0.2, "retries": 0})
    async with Node(config) as n:
        n.consumers.register(["t/*"], consumer)
        # Given a job with a shorter timeout, and one with none, on a queue timing out after 0.2 s
        short = await n.jobs.add_job("t/short", timeout_s=0.05)
        unlimited = await n.jobs.add_job("t/unlimited", timeout_s=0)
        assert short.timeout_us == 50_000
        assert unlimited.timeout_us == 0

        # Then the short one times out on its own timeout
        done = await finished(n, short.id)
        assert (done.state, done.result_message) == (JobState.GIVEN_UP, "timed out after 0.05s")
        assert contexts["t/short"].is_stopped()
        # And the other outlives the queue's timeout and succeeds when released
        await asyncio.sleep(0.4)
        assert (await n.jobs.get_job(unlimited.id)).state is JobState.ACTIVE
        assert not contexts["t/unlimited"].is_stopped()
        release.set()
        done = await finished(n, unlimited.id)
        assert (done.state, done.result_message) == (JobState.SUCCEEDED, "released")


# --- keep_jobs ---------------------------------------------------------------------------------------------


async def test_queue_without_keep_jobs_deletes_succeeded_jobs_but_keeps_failed_ones(tmp_path: Path) -> None:
    config = config_with(
        tmp_path, {"name": "forget", "topics": ["forget/*"], "keep_jobs": False, "retries": 0}
    )
    async with Node(config) as n:
        n.consumers.register(["forget/ok"], lambda job, context: JobResult.succeeded("ok"))
        n.consumers.register(["forget/bad"], lambda job, context: JobResult.failed("bad"))
        n.consumers.register(["kept/ok"], lambda job, context: JobResult.succeeded("ok"))
        ok = await n.jobs.add_job("forget/ok")
        bad = await n.jobs.add_job("forget/bad")
        kept = await n.jobs.add_job("kept/ok")

        assert (await finished(n, bad.id)).state is JobState.GIVEN_UP
        assert (await finished(n, kept.id)).state is JobState.SUCCEEDED

        # The succeeded job is gone from the journal, but its events and statistics remain
        async def gone() -> bool:
            try:
                await n.jobs.get_job(ok.id)
            except JobNotFound:
                return True
            return False

        await async_wait_for(gone, what="the succeeded job to be deleted")
        events = [e for e in await n.jobs.events.read_after(0) if e.job_id == ok.id]
        assert [e.type for e in events] == [EventType.ADDED, EventType.STARTED, EventType.FINISHED]
        assert (await n.jobs.statistics()).queues["forget"].finished == 1


# --- which queue -----------------------------------------------------------------------------------------


async def test_jobs_go_to_the_highest_ranking_then_most_specific_queue(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        {"name": "images", "topics": ["img/**"]},
        {"name": "resize", "topics": ["img/resize/*"]},
        {"name": "urgent", "topics": ["img/**"], "ranking": 10, "type": "ordered"},
        {"name": "thumbs", "topics": ["img/thumb/*", "thumb/**"], "ranking": 20},
    )
    async with Node(config) as n:
        queues = {
            topic: (await n.jobs.add_job(topic)).queue
            for topic in ("img/resize/big", "img/crop", "img/thumb/x", "thumb/a/b", "video/cut")
        }
        listed = [info.config.name for info in await n.jobs.list_queues()]

    assert queues == {
        "img/resize/big": "urgent",
        "img/crop": "urgent",
        "img/thumb/x": "thumbs",
        "thumb/a/b": "thumbs",
        "video/cut": "main",
    }
    assert listed == ["main", "images", "resize", "thumbs", "urgent"]


async def test_event_listener_gets_committed_events_in_sequence_order(tmp_path: Path) -> None:
    # The Python listener API: called on the loop after each commit
    seen: list[tuple[int, EventType, str]] = []
    async with Node(NodeConfig.for_tests(tmp_path)) as n:
        remove = n.jobs.add_event_listener(
            lambda events: seen.extend((e.seq, e.type, e.job_id) for e in events)
        )
        n.consumers.register(["listen/*"], lambda job, context: None)
        jobs = [await n.jobs.add_job("listen/x") for _ in range(3)]
        for job in jobs:
            await finished(n, job.id)

        async def all_finished() -> bool:
            return sum(1 for _, kind, _ in seen if kind is EventType.FINISHED) == 3

        await async_wait_for(all_finished, what="3 FINISHED events")
        remove()
        await n.jobs.add_job("unheard/x")
        stored = await n.jobs.events.read_after(0)

    assert [s for s, _, _ in seen] == sorted({s for s, _, _ in seen})
    assert seen == [(e.seq, e.type, e.job_id) for e in stored if e.topic == "listen/x"]
    for job in jobs:
        assert [kind for kind, job_id in ((k, j) for _, k, j in seen) if job_id == job.id] == [
            EventType.ADDED,
            EventType.STARTED,
            EventType.FINISHED,
        ]
