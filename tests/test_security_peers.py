"""An authenticated peer may speak only for itself: with real node processes, a member of the
cluster (a valid node certificate) that lies about jobs or members of other instances changes
nothing — no re-run, no forged result, no dropped job, no forged member or capacity, no death it
cannot refute."""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from jobmesh.peer.v1 import membership_pb2, membership_pb2_grpc, transfer_pb2, transfer_pb2_grpc
from jobmesh.v1 import jobs_pb2

from node import JobState
from node.discovery.membership import MemberRecord, PeerState
from node.security import pki
from node.security.cluster import ClusterFiles, TlsMaterial
from node.transfer.chunks import crc32
from node.transport import Transport
from tests.support.job_calls import get_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.offload import TOPIC, start_cluster
from tests.support.protos import new_job
from tests.support.topology import view
from tests.support.waiting import wait_for
from tests.test_security import a_member, instance_ids, job_count, record

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

ACTIVE, SUCCEEDED = jobs_pb2.JOB_STATE_ACTIVE, jobs_pb2.JOB_STATE_SUCCEEDED
MALLORY = "mallory"


def exchange(channel: grpc.Channel, frame: transfer_pb2.ExchangeRequest) -> list[int]:
    """Send one transfer frame; the acknowledged seqs."""

    def frames() -> Iterator[transfer_pb2.ExchangeRequest]:
        yield frame

    stub = transfer_pb2_grpc.TransferServiceStub(channel)
    return [ack.last_seq for ack in stub.Exchange(frames(), timeout=10)]


def journal_row(node: NodeProcess, job_id: str) -> tuple[int, int, str, str]:
    """(state, epoch, origin, result message) of a job in `node`'s journal."""
    rows = node.query_journal("SELECT state, epoch, origin, result_message FROM jobs WHERE id = ?", (job_id,))
    assert len(rows) == 1, rows
    return rows[0]


def starts(node: NodeProcess, job_id: str) -> int:
    """How often the job was started on `node` (STARTED events)."""
    return len(node.query_journal("SELECT 1 FROM job_events WHERE job_id = ? AND type = 2", (job_id,)))


def test_a_peer_cannot_rerun_report_or_remove_jobs_of_another_origin(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin whose jobs run on w1: one finished, one still running
    origin, (w1,) = start_cluster(nodes, "consumers:block_until_released", workers=1)
    released = tmp_path / "released"
    running_release = tmp_path / "running-released"
    released.touch()
    request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC, release_file=str(released))])
    (finished,) = origin.stub.AddJobs(request).job_ids
    wait_for_state(origin.stub, finished, SUCCEEDED)
    request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC, release_file=str(running_release))])
    (running,) = origin.stub.AddJobs(request).job_ids
    wait_for_state(origin.stub, running, ACTIVE)
    wait_for(lambda: journal_row(w1, running)[0] == ACTIVE, 10, "the job to run on w1")
    finished_before = journal_row(w1, finished)
    epoch = journal_row(w1, running)[1]
    now_us = int(time.time() * 1e6)

    # When an authenticated peer re-sends the finished job under a higher epoch, drops the running
    # one at its target, and reports it SUCCEEDED to its origin
    mallory = a_member(nodes, MALLORY)
    to_w1 = mallory.create_sync_channel(w1.address)
    to_origin = mallory.create_sync_channel(origin.address)
    try:
        rerun = transfer_pb2.OffloadedJob(
            job_id=finished,
            epoch=finished_before[1] + 100,
            topic=TOPIC,
            created_us=now_us,
            payload_crc32=crc32(b""),
        )
        drop = transfer_pb2.JobControl(job_id=running, epoch=epoch, remove=True)
        assert exchange(to_w1, transfer_pb2.ExchangeRequest(sender_id=MALLORY, last_seq=1, jobs=[rerun])) == [
            1
        ]
        assert exchange(
            to_w1, transfer_pb2.ExchangeRequest(sender_id=MALLORY, last_seq=2, controls=[drop])
        ) == [2]
        forged = b"forged output"
        report = transfer_pb2.JobReport(
            job_id=running,
            epoch=epoch,
            report_seq=10**9,
            state=SUCCEEDED,
            started_us=now_us,
            finished_us=now_us,
            result_message="forged",
            output_payload=forged,
            output_crc32=crc32(forged),
        )
        assert exchange(
            to_origin, transfer_pb2.ExchangeRequest(sender_id=MALLORY, last_seq=3, reports=[report])
        ) == [3]
        # Speaking in the origin's or the target's name is refused outright
        as_origin = transfer_pb2.ExchangeRequest(sender_id=origin.instance_id, last_seq=4, controls=[drop])
        with pytest.raises(grpc.RpcError) as refused:
            exchange(to_w1, as_origin)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        to_w1.close()
        to_origin.close()

    # Then nothing changed: the finished job is not run again, the running one still runs,
    # the origin has no forged result, and the genuine result is accepted
    assert journal_row(w1, finished) == finished_before
    assert starts(w1, finished) == 1
    assert journal_row(w1, running)[0] == ACTIVE
    assert get_job(origin.stub, running).state == ACTIVE
    running_release.touch()
    job = wait_for_state(origin.stub, running, SUCCEEDED)
    assert job.result_message != "forged"
    assert get_job(origin.stub, running, include_payloads=True).output_payload != forged
    assert origin.count_jobs(JobState.SUCCEEDED) == 2
    assert starts(w1, running) == 1


def capacity(node: NodeProcess, instance_id: str) -> str:
    """The capacity property `node` sees for `instance_id` ("" if not in its view)."""
    for instance in view(node).instances:
        if instance.id == instance_id:
            return instance.properties.get("jobmesh.capacity", "")
    return ""


def test_a_peer_cannot_forge_members_capacities_or_unrefutable_deaths(nodes: NodeFactory) -> None:
    # Given an origin and a worker in one view
    origin, (w1,) = start_cluster(nodes, "consumers:succeed", workers=1)
    genuine = capacity(origin, w1.instance_id)
    w1_info = next(i for i in view(origin).instances if i.id == w1.instance_id)
    w1_start = int(w1_info.start_time.ToMicroseconds())
    now_us = int(time.time() * 1e6)

    # When an authenticated peer tells the origin of a fake member and of w1 with a huge capacity
    # and new topics, and that w1 left at an incarnation just below the limit
    forged_props = {"jobmesh.capacity": "100000", "jobmesh.topics": "offload/**"}
    fake = MemberRecord(
        record("fake-peer", now_us, "127.0.0.1:9", 5, PeerState.ALIVE).info, 5, PeerState.ALIVE, forged_props
    )
    forged_w1 = MemberRecord(
        record(w1.instance_id, w1_start, w1.address, 2**62, PeerState.ALIVE).info,
        2**62,
        PeerState.ALIVE,
        forged_props,
    )
    mallory = record(MALLORY, now_us, "127.0.0.1:1", now_us, PeerState.ALIVE)
    left = record(w1.instance_id, w1_start, w1.address, 2**63 - 2, PeerState.LEFT)
    channel = a_member(nodes, MALLORY).create_sync_channel(origin.address)
    to_w1 = a_member(nodes, MALLORY).create_sync_channel(w1.address)
    try:
        membership = membership_pb2_grpc.MembershipServiceStub(channel)
        sync = membership_pb2.SyncRequest(
            sender=mallory.to_proto(), members=[fake.to_proto(), forged_w1.to_proto()]
        )
        membership.Sync(sync, timeout=5)
        gossip = membership_pb2.GossipRequest(sender=mallory.to_proto(), records=[left.to_proto()])
        membership.Gossip(gossip, timeout=5)
        # and tells w1 itself that it left, at that incarnation
        membership_pb2_grpc.MembershipServiceStub(to_w1).Gossip(gossip, timeout=5)
    finally:
        channel.close()
        to_w1.close()

    # Then the fake member never enters a view, w1 keeps its own capacity and is back in the view
    # (it refuted one incarnation above its own), and new jobs still go to w1 and succeed
    wait_for(lambda: w1.instance_id in instance_ids(origin), 10, "w1 to refute and be in the view again")
    assert "fake-peer" not in instance_ids(origin) | instance_ids(w1)
    assert capacity(origin, w1.instance_id) == genuine
    assert "100000" not in str(view(origin))
    incarnations = [i.incarnation for n in (origin, w1) for i in view(n).instances if i.id == w1.instance_id]
    assert len(incarnations) == 2
    assert max(incarnations) < 2**62, incarnations
    ids = list(origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC) for _ in range(5)])).job_ids)
    for job_id in ids:
        job = wait_for_state(origin.stub, job_id, SUCCEEDED)
        assert job.target_instance == w1.instance_id
    # w1's incarnation stayed far from the limit: it can still publish new properties
    done = origin.cli(
        "topics", "disable", "offload/other", "--node", origin.address, "--instance", w1.instance_id
    )
    assert done.returncode == 0, done.stderr
    assert w1.running
    assert origin.running


@contextlib.contextmanager
def liar(
    nodes: NodeFactory, instance_id: str, answer_as: Callable[[str], MemberRecord] | None = None
) -> Iterator[str]:
    """A MembershipService with a member's certificate; its address. It answers every call "your
    instance id is mine, and I started earlier" (ALREADY_EXISTS, what a node's earlier duplicate
    answers), or, given `answer_as` (called with the server's address), in that record's name."""
    cluster = ClusterFiles(nodes.cluster)
    key_pem, cert = cluster.issue_key_and_cert(
        pki.INSTANCE_URI_PREFIX + instance_id, (), datetime.timedelta(hours=1)
    )
    ca = cluster.ca_cert.read_bytes()
    answers: list[MemberRecord] = []

    def claim(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.ALREADY_EXISTS, "your instance id is already used by me")
        raise AssertionError("abort raises")

    def sync_as(request: bytes, context: grpc.ServicerContext) -> bytes:
        me = answers[0].to_proto()
        return membership_pb2.SyncResponse(responder=me, members=[me]).SerializeToString()

    def ping_as(request: bytes, context: grpc.ServicerContext) -> bytes:
        return membership_pb2.PingResponse(responder=answers[0].to_proto()).SerializeToString()

    names = ("Ping", "IndirectPing", "Sync", "Gossip")
    if answer_as is None:
        methods = {m: grpc.unary_unary_rpc_method_handler(claim) for m in names}
    else:
        methods = {
            "Ping": grpc.unary_unary_rpc_method_handler(ping_as),
            "Sync": grpc.unary_unary_rpc_method_handler(sync_as),
        }
    executor = ThreadPoolExecutor(max_workers=2)
    server = grpc.server(executor)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("jobmesh.peer.v1.MembershipService", methods)]
    )
    credentials = grpc.ssl_server_credentials(
        [(key_pem, pki.cert_pem(cert) + ca)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    if answer_as is not None:
        answers.append(answer_as(f"127.0.0.1:{port}"))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


def test_a_peer_cannot_make_a_node_stop_by_claiming_its_instance_id(nodes: NodeFactory) -> None:
    # Given a node, and a member whose server answers every call "your instance id is mine"
    victim = nodes.start("victim")
    now_us = int(time.time() * 1e6)
    with liar(nodes, MALLORY) as address:
        # When the member joins in its own name at that address (the node probes it there), and
        # says the node's own id lives there too, in a run that started earlier
        mallory = record(MALLORY, now_us, address, now_us, PeerState.ALIVE)
        impostor = record(victim.instance_id, 1, address, 1, PeerState.ALIVE)
        channel = a_member(nodes, MALLORY).create_sync_channel(victim.address)
        try:
            sync = membership_pb2.SyncRequest(sender=mallory.to_proto(), members=[impostor.to_proto()])
            membership_pb2_grpc.MembershipServiceStub(channel).Sync(sync, timeout=5)
        finally:
            channel.close()
        # Then the node checks the claim against the certificate, ignores it (logged once), and runs on
        wait_for(
            lambda: "says this node's instance id is its own" in victim.log_text(),
            10,
            "the claim to be checked",
        )
        wait_for(lambda: MALLORY not in instance_ids(victim), 10, "the liar to be dead in the victim's view")
    assert victim.running
    assert victim.instance_id in instance_ids(victim)
    assert victim.log_text().count("says this node's instance id is its own") == 1
    assert "refuses to join" not in victim.log_text()


def peer_calls(channel: grpc.Channel, victim: NodeProcess) -> dict[str, Callable[[], object]]:
    """One lie per peer RPC, over `channel`: as the victim itself, its overflowing LEFT, a fake
    member with a huge capacity, and a job injected from an origin that does not exist."""
    membership = membership_pb2_grpc.MembershipServiceStub(channel)
    now_us = int(time.time() * 1e6)
    impostor = record(victim.instance_id, 1, "127.0.0.1:1", 1, PeerState.ALIVE)
    left = record(victim.instance_id, 1, victim.address, 2**63 - 2, PeerState.LEFT)
    properties = {"jobmesh.capacity": "100000", "jobmesh.topics": "**"}
    fake = MemberRecord(
        record("fake-peer", now_us, "127.0.0.1:9", 5, PeerState.ALIVE).info, 5, PeerState.ALIVE, properties
    )
    job = transfer_pb2.OffloadedJob(
        job_id="0190f0f0-0000-7000-8000-000000000001", epoch=1, topic="injected/x", created_us=now_us
    )
    ping = membership_pb2.PingRequest(sender=impostor.to_proto(), target_id=victim.instance_id)
    gossip = membership_pb2.GossipRequest(sender=fake.to_proto(), records=[left.to_proto()])
    sync = membership_pb2.SyncRequest(sender=fake.to_proto(), members=[fake.to_proto()])
    frame = transfer_pb2.ExchangeRequest(sender_id="fake-peer", last_seq=1, jobs=[job])
    return {
        "Ping as the node itself": lambda: membership.Ping(ping, timeout=5),
        "Gossip that it left": lambda: membership.Gossip(gossip, timeout=5),
        "Sync with a fake member": lambda: membership.Sync(sync, timeout=5),
        "Exchange injecting a job": lambda: exchange(channel, frame),
    }


def test_strangers_and_other_clusters_cannot_send_any_peer_message(nodes: NodeFactory) -> None:
    # Given a node, a stranger (plaintext, or TLS without a certificate) and a node of another
    # cluster (its own certificate, presented to this cluster's CA)
    victim = nodes.start("victim")
    other = nodes.start("other", own_cluster=True)
    ca = ClusterFiles(victim.data_dir).ca_cert.read_bytes()
    foreign = ClusterFiles(other.data_dir).material()
    callers = {
        "plaintext": Transport(),
        "TLS without a certificate": Transport(tls=TlsMaterial(ca=ca)),
        "a node of another cluster": Transport(tls=TlsMaterial(ca, foreign.key, foreign.chain)),
    }
    for what, transport in callers.items():
        channel = transport.create_sync_channel(victim.address)
        try:
            for call, attempt in peer_calls(channel, victim).items():
                # When it sends each lie, Then the handshake refuses it
                with pytest.raises(grpc.RpcError) as refused:
                    attempt()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (what, call, refused.value)
        finally:
            channel.close()
    # And nothing changed
    assert victim.running
    assert instance_ids(victim) == {victim.instance_id}
    assert job_count(victim) == 0


def test_a_peers_server_cannot_answer_in_the_name_of_another_instance(nodes: NodeFactory) -> None:
    # Given a node, and a member whose server answers as a member that does not exist, with a
    # huge capacity for every topic
    victim = nodes.start("victim")
    now_us = int(time.time() * 1e6)
    properties = {"jobmesh.capacity": "100000", "jobmesh.topics": "**"}

    def fake(address: str) -> MemberRecord:
        info = record("fake-peer", now_us, address, now_us, PeerState.ALIVE).info
        return MemberRecord(info, now_us, PeerState.ALIVE, properties)

    with liar(nodes, MALLORY, answer_as=fake) as address:
        # When the member tells the node of that fake member at its server's address (the node
        # then asks the fake member itself, there)
        mallory = record(MALLORY, now_us, "127.0.0.1:1", now_us, PeerState.ALIVE)
        channel = a_member(nodes, MALLORY).create_sync_channel(victim.address)
        try:
            sync = membership_pb2.SyncRequest(sender=mallory.to_proto(), members=[fake(address).to_proto()])
            membership_pb2_grpc.MembershipServiceStub(channel).Sync(sync, timeout=5)
        finally:
            channel.close()
        # Then the answer is checked against the server's certificate, and the fake never enters
        wait_for(lambda: "answers as instance fake-peer" in victim.log_text(), 10, "the answer to be checked")
        assert "fake-peer" not in instance_ids(victim)
    assert victim.running


def test_epochs_and_sequence_numbers_above_the_limit_are_refused_and_never_stored(nodes: NodeFactory) -> None:
    # Given a node and a member speaking in its own name
    victim = nodes.start("victim")
    now_us = int(time.time() * 1e6)
    job = transfer_pb2.OffloadedJob(
        job_id="0190f0f0-0000-7000-8000-000000000002", epoch=1, topic="own/x", created_us=now_us
    )
    overflowing = {
        "epoch": transfer_pb2.ExchangeRequest(
            sender_id=MALLORY,
            last_seq=1,
            jobs=[
                transfer_pb2.OffloadedJob(
                    job_id=job.job_id, epoch=2**63 - 1, topic="own/x", created_us=now_us
                )
            ],
        ),
        "last_seq": transfer_pb2.ExchangeRequest(sender_id=MALLORY, last_seq=2**63 - 1, jobs=[job]),
        "report_seq": transfer_pb2.ExchangeRequest(
            sender_id=MALLORY,
            last_seq=1,
            reports=[
                transfer_pb2.JobReport(job_id=job.job_id, epoch=1, report_seq=2**63 - 1, state=SUCCEEDED)
            ],
        ),
    }
    channel = a_member(nodes, MALLORY).create_sync_channel(victim.address)
    try:
        for field, frame in overflowing.items():
            # When a frame carries a number at 2^63-1, Then it is refused, naming the field
            with pytest.raises(grpc.RpcError) as refused:
                exchange(channel, frame)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refused.value)
            assert field in (refused.value.details() or ""), (field, refused.value.details())
    finally:
        channel.close()
    # And nothing of them is stored
    assert job_count(victim) == 0
    assert victim.running


def test_a_members_certificate_grants_reading_not_the_clients_rights(nodes: NodeFactory) -> None:
    from jobmesh.v1 import jobs_pb2_grpc, queues_pb2, queues_pb2_grpc

    victim = nodes.start("victim")
    job_id = victim.stub.AddJob(jobs_pb2.AddJobRequest(job=new_job("kept/x"))).job.id
    channel = a_member(nodes, "mallory").create_sync_channel(victim.address)
    try:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)  # reading is what peers do
        attempts: list[Callable[[], object]] = [
            lambda: jobs.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=job_id), timeout=5),
            lambda: jobs.PurgeJobs(jobs_pb2.PurgeJobsRequest(), timeout=5),
            lambda: jobs.AddJob(jobs_pb2.AddJobRequest(job=new_job("injected/x")), timeout=5),
            lambda: queues_pb2_grpc.QueueServiceStub(channel).SuspendQueue(
                queues_pb2.SuspendQueueRequest(name="main"), timeout=5
            ),
        ]
        for attempt in attempts:
            with pytest.raises(grpc.RpcError) as refused:
                attempt()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks it" in (refused.value.details() or "")
    finally:
        channel.close()
    assert job_count(victim) == 1
    assert get_job(victim.stub, job_id).state == jobs_pb2.JOB_STATE_QUEUED
