"""WatchJobs: resumable job events from the journal, history then live, with filters and retention gaps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import jobs_pb2

from node import Node, NodeConfig
from node.journal.events import READ_BATCH
from tests.support.fixtures import shared_node
from tests.support.job_calls import add_job, add_running_job, get_job, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for
from tests.support.watching import watch

S = jobs_pb2
E = jobs_pb2  # event types live in the same module
LIFECYCLE = [S.JOB_EVENT_TYPE_ADDED, S.JOB_EVENT_TYPE_STARTED, S.JOB_EVENT_TYPE_FINISHED]


node = shared_node(
    "watched",
    [
        "watch/**=consumers:succeed",
        "resume/**=consumers:report_progress",
        "fails/**=consumers:fail_then_succeed",
        "stopme/**=consumers:block_until_released",
    ],
)


def journal_events(node: NodeProcess, topic_glob: str, after_seq: int = 0) -> list[tuple[int, int, str]]:
    """(seq, type, job_id) of the journal's events whose topic matches a GLOB, in seq order."""
    rows = node.query_journal(
        "SELECT seq, type, job_id FROM job_events WHERE topic GLOB ? AND seq > ? ORDER BY seq",
        (topic_glob, after_seq),
    )
    return [(int(s), int(t), str(j)) for s, t, j in rows]


def as_tuples(events: list[jobs_pb2.JobEvent]) -> list[tuple[int, int, str]]:
    return [(e.seq, e.type, e.job_id) for e in events]


def types_of(events: list[jobs_pb2.JobEvent], job_id: str) -> list[int]:
    return [e.type for e in events if e.job_id == job_id]


def current_head(node: NodeProcess) -> int:
    with watch(node.channel, after_seq=-1, job_ids=["none"]) as w:
        return int(w.next_response().head_seq)


def test_watch_sends_history_after_the_given_seq_then_live_events(node: NodeProcess) -> None:
    # Given a job that finished before anyone watched
    before = current_head(node)
    earlier = add_job(node.stub, "watch/history")
    wait_for_state(node.stub, earlier, S.JOB_STATE_SUCCEEDED)

    # When a client watches from the seq it knew, then a new job runs
    with watch(node.channel, after_seq=before, topics=["watch/history", "watch/live"]) as w:
        w.until(lambda events: len(events) >= 3, what="the history")
        later = add_job(node.stub, "watch/live")
        events = w.until(lambda events: types_of(events, later)[-1:] == [S.JOB_EVENT_TYPE_FINISHED])

    # Then it gets the earlier job's whole lifecycle from the journal, then the new one's live
    assert types_of(events, earlier) == LIFECYCLE
    assert types_of(events, later) == LIFECYCLE
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "strictly increasing, nothing twice"
    assert all(s > before for s in seqs)
    assert as_tuples(events) == journal_events(node, "watch/[hl]i*", before)
    finished = next(e for e in events if e.job_id == later and e.type == S.JOB_EVENT_TYPE_FINISHED)
    assert finished.state == S.JOB_STATE_SUCCEEDED
    assert finished.message == "done: watch/live"
    assert finished.target_instance == node.instance_id
    assert finished.topic == "watch/live"
    assert finished.queue == "main"
    assert finished.HasField("time")


def test_resuming_after_a_disconnect_misses_nothing_and_repeats_nothing(
    node: NodeProcess, tmp_path: Path
) -> None:
    # Given a watcher that follows jobs while they are added and processed (one of them held
    # ACTIVE, so work is in flight while it is away)
    release = tmp_path / "release"
    topics = ["resume/a", "resume/b", "resume/c"]

    def add_batch(first: int, count: int) -> list[str]:
        jobs = [new_job(topics[i % 3], steps=2, n=i) for i in range(first, first + count)]
        return list(node.stub.AddJobs(S.AddJobsRequest(jobs=jobs)).job_ids)

    first = watch(node.channel, after_seq=0, topics=["resume/**"])
    held = add_job(node.stub, "resume/held", steps=3, pause_after=1, release_file=str(release))
    adder = threading.Thread(target=lambda: ids.extend(add_batch(0, 30)))
    ids: list[str] = []
    adder.start()

    # When it disconnects in the middle of the stream
    seen = list(first.until(lambda events: len(events) >= 40, what="40 events"))
    first.close()
    assert get_job(node.stub, held).state == S.JOB_STATE_ACTIVE
    adder.join()
    resume_at = seen[-1].seq
    # And jobs keep changing while it is away
    ids += add_batch(30, 20)
    wait_for(lambda: len(journal_events(node, "resume/*", resume_at)) > 50, what="events while disconnected")

    # And it reconnects with the last seq it processed, while more jobs come and the held one finishes
    second = watch(node.channel, after_seq=resume_at, topics=["resume/**"])
    ids += add_batch(50, 10)
    release.touch()
    for job_id in [held, *ids]:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    expected = journal_events(node, "resume/*")
    rest = second.until(
        lambda events: bool(events) and events[-1].seq >= expected[-1][0], what="the last event"
    )
    second.close()

    # Then the two streams together are exactly the journal's events, in order, each once
    union = as_tuples(seen) + as_tuples(rest)
    assert [seq for seq, _, _ in union] == sorted({seq for seq, _, _ in union}), "no duplicate, in order"
    assert union == expected
    # And the events carry every step: lifecycle and progress of each job
    for job_id in ids:
        kinds = [kind for _, kind, j in union if j == job_id]
        # init_progress, then a log line and a step for each of the 2 steps: 5 PROGRESS events
        progress = [S.JOB_EVENT_TYPE_PROGRESS] * 5
        assert kinds == [
            S.JOB_EVENT_TYPE_ADDED,
            S.JOB_EVENT_TYPE_STARTED,
            *progress,
            S.JOB_EVENT_TYPE_FINISHED,
        ]


def test_after_seq_minus_one_sends_only_live_events(node: NodeProcess) -> None:
    # Given a finished job in the journal
    old = add_job(node.stub, "watch/old")
    wait_for_state(node.stub, old, S.JOB_STATE_SUCCEEDED)

    # When a client watches live only
    with watch(node.channel, after_seq=-1) as w:
        # Then its first message is empty and names the head it starts from
        opening = w.next_response()
        assert list(opening.events) == []
        assert opening.gap_until_seq == 0
        head = opening.head_seq
        assert head >= max(seq for seq, _, _ in journal_events(node, "watch/old"))
        # And a job added now is seen, and nothing older
        new = add_job(node.stub, "watch/new")
        events = w.until(lambda events: types_of(events, new)[-1:] == [S.JOB_EVENT_TYPE_FINISHED])

    assert all(e.seq > head for e in events)
    assert old not in {e.job_id for e in events}
    assert types_of(events, new) == LIFECYCLE


def test_filters_by_topic_pattern_job_id_and_event_type(node: NodeProcess, tmp_path: Path) -> None:
    before = current_head(node)
    ids = {topic: add_job(node.stub, topic) for topic in ("watch/f/a", "watch/f/b/deep", "watch/g/a")}
    flaky = add_job(node.stub, "fails/f/y", failures=1, attempts_file=str(tmp_path / "attempts"))
    for job_id in [*ids.values(), flaky]:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    head = current_head(node)

    def collect(**filters: object) -> list[jobs_pb2.JobEvent]:
        with watch(node.channel, after_seq=before, **filters) as w:  # type: ignore[arg-type]
            events = list(w.next_response().events)
            # Everything up to `head` is history: it comes in the first messages
            while not w.responses[-1].head_seq >= head:
                events += w.next_response().events
            return [e for e in events if e.seq <= head]

    children = collect(topics=["watch/f/*"])
    assert {e.job_id for e in children} == {ids["watch/f/a"]}
    descendants = collect(topics=["watch/f/**", "fails/**"])
    assert {e.job_id for e in descendants} == {ids["watch/f/a"], ids["watch/f/b/deep"], flaky}
    exact = collect(topics=["watch/g/a"])
    assert {e.job_id for e in exact} == {ids["watch/g/a"]}
    by_id = collect(job_ids=[ids["watch/g/a"], flaky])
    assert {e.job_id for e in by_id} == {ids["watch/g/a"], flaky}
    assert types_of(by_id, flaky) == [
        S.JOB_EVENT_TYPE_ADDED,
        S.JOB_EVENT_TYPE_STARTED,
        S.JOB_EVENT_TYPE_FAILED,
        S.JOB_EVENT_TYPE_STARTED,
        S.JOB_EVENT_TYPE_FINISHED,
    ]
    failed = collect(types=[S.JOB_EVENT_TYPE_FAILED])
    assert [(e.job_id, e.state, e.retry_count) for e in failed] == [(flaky, S.JOB_STATE_QUEUED, 1)]
    combined = collect(topics=["watch/**"], types=[S.JOB_EVENT_TYPE_FINISHED, S.JOB_EVENT_TYPE_ADDED])
    assert {(e.job_id, e.type) for e in combined} == {
        (job_id, kind)
        for topic, job_id in ids.items()
        if topic.startswith("watch/")
        for kind in (S.JOB_EVENT_TYPE_ADDED, S.JOB_EVENT_TYPE_FINISHED)
    }


def test_head_seq_is_a_safe_resume_point_for_a_filtered_watcher(node: NodeProcess) -> None:
    # Given a watcher whose filter matches nothing yet
    with watch(node.channel, after_seq=-1, topics=["watch/rare"]) as w:
        resume_at = w.next_response().head_seq
    # When other jobs run, and then a matching one, while it is away
    for job_id in [add_job(node.stub, "watch/common") for _ in range(3)]:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    rare = add_job(node.stub, "watch/rare")
    wait_for_state(node.stub, rare, S.JOB_STATE_SUCCEEDED)

    # Then resuming from the head_seq it was given brings the matching job's whole lifecycle
    with watch(node.channel, after_seq=resume_at, topics=["watch/rare"]) as w:
        events = w.until(lambda events: len(events) >= 3)
    assert types_of(events, rare) == LIFECYCLE


def test_a_message_never_claims_events_it_did_not_send(node: NodeProcess) -> None:
    # Given more history than one message carries (jobs nobody consumes: one ADDED event each)
    before = current_head(node)
    jobs = [new_job("pile/x", n=i) for i in range(1100)]
    ids = list(node.stub.AddJobs(S.AddJobsRequest(jobs=jobs)).job_ids)

    # When a client takes one message and goes away
    with watch(node.channel, after_seq=before, topics=["pile/*"]) as w:
        first = w.next_response()
    assert 0 < len(first.events) < len(ids)

    # Then the head_seq it got is the last event it was sent, and resuming there brings the rest
    assert first.head_seq == first.events[-1].seq
    with watch(node.channel, after_seq=first.head_seq, topics=["pile/*"]) as w:
        rest = w.until(lambda events: len(events) >= len(ids) - len(first.events))
    assert [e.job_id for e in [*first.events, *rest]] == ids


def test_stopped_and_removed_jobs_have_their_events(node: NodeProcess, tmp_path: Path) -> None:
    before = current_head(node)
    active, _ = add_running_job(node.stub, "stopme/a", tmp_path)
    node.stub.StopJob(S.StopJobRequest(job_id=active))
    wait_for_state(node.stub, active, S.JOB_STATE_STOPPED)
    node.stub.RemoveJob(S.RemoveJobRequest(job_id=active))  # deletes the history entry

    with watch(node.channel, after_seq=before, job_ids=[active]) as w:
        events = w.until(lambda events: len(events) >= 4)
    assert [(e.type, e.state) for e in events] == [
        (S.JOB_EVENT_TYPE_ADDED, S.JOB_STATE_QUEUED),
        (S.JOB_EVENT_TYPE_STARTED, S.JOB_STATE_ACTIVE),
        (S.JOB_EVENT_TYPE_STOPPED, S.JOB_STATE_STOPPED),
        (S.JOB_EVENT_TYPE_REMOVED, S.JOB_STATE_STOPPED),
    ]


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (S.WatchJobsRequest(after_seq=-2), "after_seq -2"),
        (S.WatchJobsRequest(topics=["a//b"]), "a//b"),
        (S.WatchJobsRequest(types=[99]), "types[0] is 99"),  # type: ignore[list-item]
    ],
    ids=["after-seq", "topic-pattern", "event-type"],
)
def test_invalid_watch_request_is_refused(
    node: NodeProcess, request_: jobs_pb2.WatchJobsRequest, fragment: str
) -> None:
    error = rpc_error(lambda: next(iter(node.stub.WatchJobs(request_, timeout=5))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.details() or "")


# --- retention -------------------------------------------------------------------------------------


def test_watch_from_before_the_retained_events_reports_the_gap(nodes: NodeFactory) -> None:
    # Given a node that keeps only its newest 10 events, after 5 jobs made 15
    node = nodes.start("short-memory", ["gap/**=consumers:succeed"], {"events.max_count": 10})
    ids = [add_job(node.stub, "gap/x") for _ in range(5)]
    for job_id in ids:
        wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    wait_for(lambda: node.query_journal("SELECT count(*) FROM job_events")[0][0] == 10, what="the purge")
    ((oldest, newest),) = node.query_journal("SELECT min(seq), max(seq) FROM job_events")
    assert (oldest, newest) == (6, 15)

    # When a client resumes from a seq whose successors were purged
    with watch(node.channel, after_seq=2) as w:
        events = w.until(lambda events: len(events) >= 10)
        first = w.responses[0]
    # Then the first message says where the retained events start, and they all follow
    assert first.gap_until_seq == 6
    assert [e.seq for e in events] == list(range(6, 16))

    # And a client that missed nothing gets no gap
    with watch(node.channel, after_seq=5) as w:
        events = w.until(lambda events: len(events) >= 10)
        assert w.responses[0].gap_until_seq == 0
    assert events[0].seq == 6


def test_watch_reports_a_gap_when_every_event_it_asked_for_was_purged(nodes: NodeFactory) -> None:
    # Given a node that keeps events only briefly, whose events have all expired
    node = nodes.start("no-memory", ["gap/**=consumers:succeed"], {"events.max_age_s": 0.2})
    job_id = add_job(node.stub, "gap/x")
    wait_for_state(node.stub, job_id, S.JOB_STATE_SUCCEEDED)
    wait_for(lambda: node.query_journal("SELECT count(*) FROM job_events")[0][0] == 0, what="the purge")

    # When a client asks for everything after seq 1
    with watch(node.channel, after_seq=1) as w:
        opening = w.next_response()
        # Then it learns that events 2 and 3 are lost: the next available one is 4
        assert (list(opening.events), opening.gap_until_seq, opening.head_seq) == ([], 4, 3)
        # And live events follow
        later = add_job(node.stub, "gap/y")
        events = w.until(lambda events: len(events) >= 3)
    assert [(e.seq, e.job_id) for e in events] == [(4, later), (5, later), (6, later)]


def test_graceful_shutdown_ends_open_watch_streams_promptly(nodes: NodeFactory) -> None:
    # Given a node with a client watching it
    node = nodes.start("watched-then-stopped", ["gap/**=consumers:succeed"])
    watcher = watch(node.channel, after_seq=0)
    watcher.next_response()

    # When the node is stopped gracefully
    started = time.monotonic()
    assert node.terminate() == 0

    # Then it exits cleanly and soon, and the stream ends with a status the client can act on
    assert time.monotonic() - started < 0.9, "a watch stream held up the shutdown"
    assert watcher.error_code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    watcher.close()


async def test_a_reader_that_falls_behind_retention_is_told_about_the_gap(tmp_path: Path) -> None:
    # Given 1500 events (jobs nobody consumes) and a watcher that took the first batch of them
    async with Node(NodeConfig.for_tests(tmp_path)) as n:
        await n.jobs.add_proto_jobs([S.NewJob(topic="slow/x") for _ in range(1500)])
        stream = n.jobs.watch(0)
        first = await anext(stream)
        assert (first.events[0].seq, first.last_seq, first.gap_until_seq) == (1, READ_BATCH, 0)

        # When retention purges events the watcher has not read yet
        await n.jobs.events.purge(None, max_count=200)

        # Then its next batch starts after the hole and says where
        second = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    assert second.gap_until_seq == 1301
    assert [e.seq for e in second.events] == list(range(1301, 1501))
