"""QueueService on real node processes: list, suspend (persisted), resume, clear, set and delete queues."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from jobmesh.v1 import jobs_pb2, queues_pb2

from tests.support.job_calls import add_job, find_all, get_job, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import duration

S = jobs_pb2
Q = queues_pb2
BAD_DURATION = Duration(seconds=1, nanos=-5)  # mixed signs: not a valid Duration
FILE_QUEUES = json.dumps(
    [{"name": "file-q", "topics": ["fq/**"], "type": "ordered", "retry_delay_s": 0.05, "retries": 3}]
)
CONSUMERS = ["fq/**=consumers:succeed", "ctl/**=consumers:succeed", "mv/**=consumers:succeed"]


def queues_by_name(node: NodeProcess) -> dict[str, queues_pb2.QueueInfo]:
    return {q.config.name: q for q in node.queues.ListQueues(Q.ListQueuesRequest()).queues}


def control_job_done(node: NodeProcess) -> None:
    """Run a job through the (unsuspended) main queue: the node is up and dispatching."""
    wait_for_state(node.stub, add_job(node.stub, "ctl/x"), S.JOB_STATE_SUCCEEDED)


def states(node: NodeProcess, ids: list[str]) -> list[int]:
    return [get_job(node.stub, job_id).state for job_id in ids]


def test_list_queues_shows_the_main_queue_then_configured_ones_with_their_settings(
    nodes: NodeFactory,
) -> None:
    node = nodes.start("lister", settings={"queues": FILE_QUEUES, "jobs.retries": 2, "jobs.max_parallel": 4})

    listed = node.queues.ListQueues(Q.ListQueuesRequest()).queues

    assert [q.config.name for q in listed] == ["main", "file-q"]
    main, file_q = listed
    assert (main.source, main.config.retries, main.parallelism, main.suspended) == (
        Q.QUEUE_SOURCE_DEFAULT,
        2,
        4,
        False,
    )
    assert (main.config.retry_delay.ToTimedelta(), main.config.keep_jobs) == (timedelta(seconds=0.05), True)
    assert file_q.source == Q.QUEUE_SOURCE_CONFIG
    assert list(file_q.config.topics) == ["fq/**"]
    assert (file_q.config.type, file_q.parallelism, file_q.config.retries) == (Q.QUEUE_TYPE_ORDERED, 1, 3)


def test_suspended_queue_stays_suspended_across_restart_and_crash_until_resumed(nodes: NodeFactory) -> None:
    # Given a suspended queue holding jobs
    node = nodes.start("suspender", CONSUMERS, {"queues": FILE_QUEUES})
    info = node.queues.SuspendQueue(Q.SuspendQueueRequest(name="file-q")).queue
    assert info.suspended
    held = [add_job(node.stub, "fq/a", n=i) for i in range(3)]
    control_job_done(node)
    assert states(node, held) == [S.JOB_STATE_QUEUED] * 3
    assert (queues_by_name(node)["file-q"].suspended, queues_by_name(node)["file-q"].queued) == (True, 3)

    # When the node restarts gracefully, and later crashes and starts again
    for stop in (node.terminate, node.kill):
        stop()
        node.start()
        # Then the queue is still suspended and its jobs still wait
        control_job_done(node)
        assert queues_by_name(node)["file-q"].suspended
        assert states(node, held) == [S.JOB_STATE_QUEUED] * 3

    # And it runs them once resumed
    resumed = node.queues.ResumeQueue(Q.ResumeQueueRequest(name="file-q")).queue
    assert not resumed.suspended
    for job_id in held:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    node.restart()
    assert not queues_by_name(node)["file-q"].suspended


def test_suspend_lets_running_jobs_finish_and_clear_drops_the_queued_ones(
    nodes: NodeFactory, tmp_path: object
) -> None:
    node = nodes.start("clearer", ["blk/**=consumers:block_until_released", *CONSUMERS])
    started, release = f"{tmp_path}/started", f"{tmp_path}/release"
    running = add_job(node.stub, "blk/a", started_file=started, release_file=release)
    wait_for_state(node.stub, running, S.JOB_STATE_ACTIVE)

    # When the main queue is suspended while a job runs, then more are added and the queue cleared
    assert node.queues.SuspendQueue(Q.SuspendQueueRequest(name="main")).queue.suspended
    waiting = [add_job(node.stub, "ctl/y", n=i) for i in range(4)]
    dropped = node.queues.ClearQueue(Q.ClearQueueRequest(name="main")).dropped

    # Then the queued jobs are DROPPED, the running one is untouched and finishes when released
    assert dropped == 4
    for job_id in waiting:
        job = get_job(node.stub, job_id)
        assert (job.state, job.result_message) == (S.JOB_STATE_DROPPED, "removed: queue cleared")
    assert get_job(node.stub, running).state == S.JOB_STATE_ACTIVE
    open(release, "w").close()
    wait_for_state(node.stub, running, S.JOB_STATE_SUCCEEDED)
    # And the suspended queue starts nothing new until resumed
    later = add_job(node.stub, "ctl/z")
    assert node.queues.ClearQueue(Q.ClearQueueRequest(name="main")).dropped == 1
    assert get_job(node.stub, later).state == S.JOB_STATE_DROPPED
    node.queues.ResumeQueue(Q.ResumeQueueRequest(name="main"))
    control_job_done(node)


def test_set_queue_moves_queued_jobs_to_it_and_delete_queue_moves_them_back(nodes: NodeFactory) -> None:
    # Given jobs waiting in the (suspended) main queue
    node = nodes.start("mover", CONSUMERS, {"queues": FILE_QUEUES})
    node.queues.SuspendQueue(Q.SuspendQueueRequest(name="main"))
    waiting = [add_job(node.stub, "mv/a", n=i) for i in range(2)]
    assert {get_job(node.stub, j).queue for j in waiting} == {"main"}

    # When a queue for their topic is set over the API
    config = Q.QueueConfig(
        name="movers",
        topics=["mv/**"],
        type=Q.QUEUE_TYPE_TOPIC_ROUND_ROBIN,
        max_parallel=2,
        retries=1,
        retry_delay=duration(0.05),
        keep_jobs=True,
        ranking=1,
    )
    info = node.queues.SetQueue(Q.SetQueueRequest(config=config)).queue

    # Then it exists with its settings, and the jobs moved to it and ran there
    assert (info.source, info.parallelism, info.suspended) == (Q.QUEUE_SOURCE_API, 2, False)
    expected = Q.QueueConfig()
    expected.CopyFrom(config)
    expected.retry_backoff = 1.0  # the defaults of unset fields
    expected.retry_delay_max.FromSeconds(3600)
    expected.timeout.FromSeconds(0)
    expected.sync_isolation = Q.SYNC_ISOLATION_THREAD
    assert info.config == expected
    for job_id in waiting:
        assert wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED).queue == "movers"

    # When a job waits in it (suspended) and the queue is deleted
    node.queues.SuspendQueue(Q.SuspendQueueRequest(name="movers"))
    parked = add_job(node.stub, "mv/b")
    assert get_job(node.stub, parked).queue == "movers"
    node.queues.DeleteQueue(Q.DeleteQueueRequest(name="movers"))

    # Then the job moved to the queue that matches now, and the queue is gone
    assert get_job(node.stub, parked).queue == "main"
    assert "movers" not in queues_by_name(node)
    node.queues.ResumeQueue(Q.ResumeQueueRequest(name="main"))
    wait_for_state(node.stub, parked, S.JOB_STATE_SUCCEEDED)


def test_queues_set_over_the_api_survive_a_restart_and_override_file_queues(nodes: NodeFactory) -> None:
    node = nodes.start("persister", CONSUMERS, {"queues": FILE_QUEUES})
    api = Q.QueueConfig(
        name="api-q",
        topics=["api/*"],
        max_parallel=3,
        retries=-1,
        retry_delay=duration(1.5),
        keep_jobs=True,
    )
    override = Q.QueueConfig(name="file-q", topics=["fq/**", "more/**"], retries=7, retry_delay=duration(0.5))
    node.queues.SetQueue(Q.SetQueueRequest(config=api))
    node.queues.SetQueue(Q.SetQueueRequest(config=override))

    node.restart()

    listed = queues_by_name(node)
    assert (listed["api-q"].source, listed["api-q"].config.retries) == (Q.QUEUE_SOURCE_API, -1)
    assert listed["api-q"].config.retry_delay.ToTimedelta() == timedelta(seconds=1.5)
    assert (listed["file-q"].source, list(listed["file-q"].config.topics)) == (
        Q.QUEUE_SOURCE_API,
        ["fq/**", "more/**"],
    )
    assert listed["file-q"].config.type == Q.QUEUE_TYPE_UNORDERED
    add_job(node.stub, "more/x")
    assert find_all(node.stub, S.FindJobsRequest(topic="more/x"))[0].queue == "file-q"

    # Deleting the override brings back the file's queue
    node.queues.DeleteQueue(Q.DeleteQueueRequest(name="file-q"))
    restored = queues_by_name(node)["file-q"]
    assert (restored.source, restored.config.type, restored.config.retries) == (
        Q.QUEUE_SOURCE_CONFIG,
        Q.QUEUE_TYPE_ORDERED,
        3,
    )
    node.restart()
    assert queues_by_name(node)["file-q"].source == Q.QUEUE_SOURCE_CONFIG
    assert find_all(node.stub, S.FindJobsRequest(topic="more/x"))[0].queue == "main"


def test_queue_rpcs_refuse_bad_input_and_the_node_keeps_serving(nodes: NodeFactory) -> None:
    node = nodes.start("queue-errors", CONSUMERS, {"queues": FILE_QUEUES})
    invalid, missing, precondition = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    q = node.queues
    cases = [
        (lambda: q.SetQueue(Q.SetQueueRequest()), invalid, "config is missing"),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="a b", topics=["x"]))),
            invalid,
            "names use",
        ),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="", topics=["x"]))),
            invalid,
            "names use",
        ),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="q"))),
            invalid,
            "needs topic patterns",
        ),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a//b"]))),
            invalid,
            "a//b",
        ),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], type=9))),  # type: ignore[arg-type]
            invalid,
            "type 9",
        ),
        (
            lambda: q.SetQueue(
                Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], max_parallel=-3))
            ),
            invalid,
            "max_parallel",
        ),
        (
            lambda: q.SetQueue(Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], retries=-2))),
            invalid,
            "retries",
        ),
        (
            lambda: q.SetQueue(
                Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], retry_backoff=0.5))
            ),
            invalid,
            "retry_backoff",
        ),
        (
            lambda: q.SetQueue(
                Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], retry_delay=BAD_DURATION))
            ),
            invalid,
            "config.retry_delay (seconds 1, nanos -5) is not a valid google.protobuf.Duration",
        ),
        (
            lambda: q.SetQueue(
                Q.SetQueueRequest(config=Q.QueueConfig(name="q", topics=["a"], timeout=duration(-1)))
            ),
            invalid,
            "timeout_s is -1.0; it must be >= 0",
        ),
        (lambda: q.DeleteQueue(Q.DeleteQueueRequest(name="nope")), missing, "no queue named 'nope'"),
        (lambda: q.DeleteQueue(Q.DeleteQueueRequest(name="main")), precondition, "not set over the API"),
        (lambda: q.DeleteQueue(Q.DeleteQueueRequest(name="file-q")), precondition, "not set over the API"),
        (lambda: q.SuspendQueue(Q.SuspendQueueRequest(name="nope")), missing, "no queue named 'nope'"),
        (lambda: q.SuspendQueue(Q.SuspendQueueRequest(name="")), invalid, "name is empty"),
        (lambda: q.ResumeQueue(Q.ResumeQueueRequest(name="nope")), missing, "no queue named 'nope'"),
        (lambda: q.ClearQueue(Q.ClearQueueRequest(name="nope")), missing, "no queue named 'nope'"),
        (lambda: q.ClearQueue(Q.ClearQueueRequest(name="")), invalid, "name is empty"),
    ]
    for call, code, fragment in cases:
        error = rpc_error(call)
        assert (error.code(), fragment in (error.details() or "")) == (code, True), (
            fragment,
            error.details(),
        )

    assert [info.config.name for info in q.ListQueues(Q.ListQueuesRequest()).queues] == ["main", "file-q"]
    control_job_done(node)


def test_set_queue_with_only_a_name_and_topics_gets_the_file_defaults(nodes: NodeFactory) -> None:
    # Unset optional fields must not mean 0/false (which would, e.g., delete succeeded jobs)
    node = nodes.start("defaults")
    config = Q.QueueConfig(name="minimal", topics=["minimal/**"])
    info = node.queues.SetQueue(Q.SetQueueRequest(config=config)).queue
    c = info.config
    assert (c.max_parallel, c.retries, c.retry_delay.seconds, c.retry_backoff, c.retry_delay_max.seconds) == (
        15,
        10,
        2,
        1,
        3600,
    )
    assert (c.timeout.ToTimedelta(), c.keep_jobs) == (timedelta(0), True)
    # And an explicit zero is kept: no retries, no delay
    config = Q.QueueConfig(name="zeros", topics=["zeros/**"], retries=0, retry_delay=duration(0))
    c = node.queues.SetQueue(Q.SetQueueRequest(config=config)).queue.config
    assert (c.retries, c.retry_delay.ToTimedelta()) == (0, timedelta(0))
