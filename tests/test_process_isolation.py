"""Queues whose sync consumers run in worker processes (`sync_isolation = "process"`).

In-process Nodes (real SQLite) whose queue spawns real worker processes; the consumers live in
tests/consumers.py, so a worker process imports them by name. A consumer that sleeps for ever
is killed at its timeout (Celery's hard time limit), the retry runs in a fresh process, and no
worker process outlives the node.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2

from node import JobResult, JobState, Node, NodeConfig
from node.errors import ConfigError, InvalidArgument
from node.model.events import EventType, JobEvent
from node.model.queues import QueueConfig, SyncIsolation
from node.services.queues import config_from_proto, config_to_proto
from tests import consumers
from tests.support.in_process import finished, job_in_state
from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory
from tests.support.protos import new_job
from tests.support.waiting import async_wait_for, wait_for

S = jobs_pb2
TIMEOUT_S = 1.0
GRACE_S = 2.0  # the test preset's server.shutdown_grace_s


def isolated(tmp_path: Path, **settings: object) -> NodeConfig:
    queue: dict[str, object] = {
        "name": "iso",
        "topics": ["iso/**"],
        "timeout_s": TIMEOUT_S,
        "retries": 1,
        "retry_delay_s": 0.01,
        "max_parallel": 2,
        "sync_isolation": "process",
    } | settings
    return NodeConfig.for_tests(tmp_path).with_overrides({"queues": json.dumps([queue])})


def runs(path: Path) -> list[tuple[int, float]]:
    """(pid, start time) of each attempt `in_process_or_hang` noted."""
    if not path.exists():
        return []
    return [(int(pid), float(at)) for pid, at in (line.split() for line in path.read_text().splitlines())]


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Failures:
    """The messages of the job's FAILED events, as committed."""

    def __init__(self, n: Node) -> None:
        self.messages: list[str] = []
        n.jobs.add_event_listener(self._on_events)

    def _on_events(self, events: list[JobEvent]) -> None:
        self.messages += [e.message for e in events if e.type is EventType.FAILED]


async def test_a_hung_consumer_is_killed_at_its_timeout_and_the_retry_runs_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    runs_file = tmp_path / "runs"
    async with Node(isolated(tmp_path)) as n:
        failures = Failures(n)
        n.consumers.register(["iso/hang"], consumers.in_process_or_hang)
        # Given a job whose first attempt sleeps for ever in its worker process
        job = await n.jobs.add_job("iso/hang", {"runs_file": str(runs_file)}, payload=b"input")

        # Then the attempt is killed at its timeout and counted failed, and the retry succeeds
        done = await finished(n, job.id)
        assert (done.state, done.retry_count) == (JobState.SUCCEEDED, 1), done.result_message
        assert failures.messages == [f"timed out after {TIMEOUT_S:g}s (worker process killed)"]
        (first_pid, first_start), (second_pid, second_start) = runs(runs_file)
        assert second_pid != first_pid, "the retry ran in the killed process"
        assert not alive(first_pid), "the timed-out worker process still runs"
        assert first_pid != os.getpid()
        assert second_start - first_start >= TIMEOUT_S
        # And what the consumer reported in its process reached the job
        full = await n.jobs.get_job(job.id, include_payloads=True, include_log=True)
        assert full.output_payload == b"pid:input"
        assert full.properties["pid"] == second_pid
        assert (full.progress_total, full.progress_done) == (2, 2)
        assert [line.message for line in full.log or ()] == [f"in process {second_pid}"]
    # And no worker process outlives the node
    assert multiprocessing.active_children() == []
    assert not alive(second_pid)


async def test_a_job_that_hangs_every_time_ends_as_its_retries_say(tmp_path: Path) -> None:
    runs_file = tmp_path / "runs"
    async with Node(isolated(tmp_path, timeout_s=0.5)) as n:
        n.consumers.register(["iso/hang"], consumers.in_process_or_hang)
        job = await n.jobs.add_job("iso/hang", {"runs_file": str(runs_file), "hang_attempts": 99})
        done = await finished(n, job.id)
    assert (done.state, done.retry_count) == (JobState.GIVEN_UP, 2)
    assert done.result_message == "timed out after 0.5s (worker process killed)"
    pids = [pid for pid, _ in runs(runs_file)]
    assert len(set(pids)) == 2
    assert not any(alive(pid) for pid in pids)
    assert multiprocessing.active_children() == []


async def test_what_a_consumer_raises_in_its_process_ends_the_job_as_in_a_thread(tmp_path: Path) -> None:
    async with Node(isolated(tmp_path)) as n:
        n.consumers.register(["iso/raise"], consumers.raise_in_process)
        job = await n.jobs.add_job("iso/raise")
        done = await finished(n, job.id)
    assert done.state is JobState.ERROR
    assert done.result_message.startswith("raised in process ")
    assert done.result_message != f"raised in process {os.getpid()}"


async def test_a_worker_process_that_dies_fails_the_attempt_and_the_retry_gets_a_new_one(
    tmp_path: Path,
) -> None:
    async with Node(isolated(tmp_path)) as n:
        n.consumers.register(["iso/exit"], consumers.exit_in_process)
        job = await n.jobs.add_job("iso/exit")
        done = await finished(n, job.id)
    assert (done.state, done.retry_count) == (JobState.GIVEN_UP, 2)
    assert done.result_message == "the worker process died (exit code 3) while running the job"
    assert multiprocessing.active_children() == []


async def test_a_consumer_a_process_cannot_import_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    async with Node(isolated(tmp_path)) as n:
        n.consumers.register(["iso/lambda"], lambda job, context: JobResult.succeeded())
        job = await n.jobs.add_job("iso/lambda")
        done = await finished(n, job.id)
    assert done.state is JobState.ERROR
    assert "cannot run in a worker process" in done.result_message


async def test_a_stop_reaches_the_consumer_in_its_process(tmp_path: Path) -> None:
    started = tmp_path / "started"
    async with Node(isolated(tmp_path, timeout_s=0)) as n:
        n.consumers.register(["iso/stop"], consumers.stop_aware_in_process)
        job = await n.jobs.add_job("iso/stop", {"started_file": str(started)})
        await async_wait_for(started.exists, what="the consumer to start in its process")
        await n.jobs.stop_job(job.id)
        done = await finished(n, job.id)
    assert (done.state, done.result_message) == (JobState.STOPPED, "stopped in a worker process")


async def test_the_node_stops_within_its_grace_with_a_hung_process_and_leaves_none(tmp_path: Path) -> None:
    runs_file = tmp_path / "runs"
    config = isolated(tmp_path, timeout_s=0)
    n = Node(config)
    await n.start()
    try:
        n.consumers.register(["iso/hang"], consumers.in_process_or_hang)
        job = await n.jobs.add_job("iso/hang", {"runs_file": str(runs_file), "hang_attempts": 99})
        await job_in_state(n, job.id, JobState.ACTIVE)
        await async_wait_for(lambda: bool(runs(runs_file)), what="the job to start in its process")
    finally:
        began = time.monotonic()
        await n.close(grace_s=0.3)
    # Then the stop took the grace and little more, and the hung process is gone
    assert time.monotonic() - began < 0.3 + 3.0
    ((pid, _),) = runs(runs_file)
    assert not alive(pid)
    assert multiprocessing.active_children() == []
    # And the job was re-queued for the next start
    async with Node(config) as again:  # (no consumer here: a claim of it releases it again)
        await job_in_state(again, job.id, JobState.QUEUED)


async def test_a_queue_switched_to_processes_and_back_moves_its_consumers_and_ends_its_processes(
    tmp_path: Path,
) -> None:
    runs_file = tmp_path / "runs"

    async def run_one() -> int:
        job = await n.jobs.add_job("moving/job", {"runs_file": str(runs_file), "hang_attempts": 0})
        assert (await finished(n, job.id)).state is JobState.SUCCEEDED
        return runs(runs_file)[-1][0]

    def queue(isolation: str) -> QueueConfig:
        return QueueConfig.create(name="moving", topics=["moving/**"], sync_isolation=isolation)

    async with Node(NodeConfig.for_tests(tmp_path)) as n:
        n.consumers.register(["moving/**"], consumers.in_process_or_hang)
        await n.jobs.set_queue(queue("thread"))
        assert await run_one() == os.getpid()
        # When the queue is set to isolate its sync consumers, they run in a worker process
        await n.jobs.set_queue(queue("process"))
        worker_pid = await run_one()
        assert worker_pid != os.getpid()
        assert await run_one() == worker_pid, "an idle worker process is reused"
        # When it is set back, they run in threads again and the idle process ends
        await n.jobs.set_queue(queue("thread"))
        assert await run_one() == os.getpid()
        await async_wait_for(lambda: not alive(worker_pid), what="the retired worker process to end")


async def test_an_idle_worker_process_that_died_is_replaced_without_costing_a_job(tmp_path: Path) -> None:
    runs_file = tmp_path / "runs"
    async with Node(isolated(tmp_path, retries=0)) as n:
        n.consumers.register(["iso/ok"], consumers.in_process_or_hang)

        async def run_one() -> int:
            job = await n.jobs.add_job("iso/ok", {"runs_file": str(runs_file), "hang_attempts": 0})
            assert (await finished(n, job.id)).state is JobState.SUCCEEDED
            return runs(runs_file)[-1][0]

        first = await run_one()
        # When the idle worker process dies (the OOM killer, an operator's kill -9)
        os.kill(first, signal.SIGKILL)
        await async_wait_for(lambda: not alive(first), what="the idle worker process to die")
        # Then the next job runs in a new one and succeeds
        assert await run_one() != first


def test_sync_isolation_is_validated_and_travels_over_the_queue_api(tmp_path: Path) -> None:
    main = NodeConfig.for_tests(tmp_path).with_overrides({"jobs.sync_isolation": "process"}).main_queue()
    assert main.sync_isolation is SyncIsolation.PROCESS
    with pytest.raises(ConfigError, match=r"jobs\.sync_isolation: 'fork' is not a valid SyncIsolation"):
        NodeConfig.for_tests(tmp_path).with_overrides({"jobs.sync_isolation": "fork"})
    config = QueueConfig.create(name="iso", topics=["iso/**"], sync_isolation="process")
    assert config.sync_isolation is SyncIsolation.PROCESS
    assert config_from_proto(config_to_proto(config)) == config
    assert QueueConfig.create(name="t", topics=["t"]).sync_isolation is SyncIsolation.THREAD
    with pytest.raises(ConfigError, match="sync_isolation is 'fork'; use 'thread' or 'process'"):
        QueueConfig.create(name="iso", topics=["iso/**"], sync_isolation="fork")
    proto = config_to_proto(config)
    proto.sync_isolation = 7  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match=r"config\.sync_isolation 7 is not a known SyncIsolation"):
        config_from_proto(proto)


# --- in a node process ----------------------------------------------------------------------------


def test_a_node_process_kills_a_hung_worker_at_the_timeout_and_stops_cleanly_with_one_busy(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    queues = [
        {
            "name": "iso",
            "topics": ["iso/**"],
            "timeout_s": 0.5,
            "retries": 0,
            "sync_isolation": "process",
        }
    ]
    node = nodes.start("iso", ["iso/**=consumers:in_process_or_hang"], {"queues": json.dumps(queues)})
    # Given a job that hangs in its worker process past its timeout
    timed = tmp_path / "timed"
    job_id = add_job(node.stub, "iso/timed", runs_file=str(timed), hang_attempts=99)
    # Then its process is killed and the job ends as its (lack of) retries says
    done = wait_for_state(node.stub, job_id, S.JOB_STATE_GIVEN_UP)
    assert done.result_message == "timed out after 0.5s (worker process killed)"
    ((pid, _),) = runs(timed)
    assert not alive(pid)

    # Given another hanging in a worker process with no timeout at all
    untimed = tmp_path / "untimed"
    job = new_job("iso/untimed", runs_file=str(untimed), hang_attempts=99)
    job.timeout.FromSeconds(0)
    node.stub.AddJob(S.AddJobRequest(job=job))
    wait_for(lambda: bool(runs(untimed)), what="the job to start in its worker process")
    ((busy_pid, _),) = runs(untimed)
    # When the node is told to stop
    began = time.monotonic()
    assert node.terminate() == 0
    # Then it exits within its grace, its worker process with it, and logs no traceback
    assert time.monotonic() - began < GRACE_S + 2.0
    assert not alive(busy_pid)
    assert "Traceback" not in node.log_text()
