"""Trust with real node processes: mutual TLS refuses strangers and other clusters in the
handshake, tokens carry scopes checked on every call, `--insecure` keeps plaintext working."""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobmesh.peer.v1 import membership_pb2, membership_pb2_grpc, transfer_pb2, transfer_pb2_grpc
from jobmesh.v1 import (
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    topology_pb2,
    topology_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

from node.discovery.identity import InstanceInfo
from node.discovery.membership import MemberRecord, PeerState
from node.security import pki
from node.security.cluster import ClusterFiles, TlsMaterial
from node.transport import Transport
from tests.support.job_calls import add_job, rpc_error, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def jobmesh(*args: str) -> str:
    """Run the CLI; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def token(node: NodeProcess, *args: str) -> str:
    """A new bearer token made on `node`'s data dir."""
    return jobmesh("token", "create", "--data-dir", str(node.data_dir), *args).splitlines()[0]


@contextlib.contextmanager
def stub_with(node: NodeProcess, transport: Transport) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    """A JobService stub over a channel of `transport`, closed afterwards."""
    channel = transport.create_sync_channel(node.address)
    try:
        yield jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        channel.close()


def instance_ids(node: NodeProcess) -> set[str]:
    view = topology_pb2_grpc.TopologyServiceStub(node.channel).GetTopology(topology_pb2.GetTopologyRequest())
    return {i.id for i in view.view.instances}


def job_count(node: NodeProcess) -> int:
    return len(node.stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=100)).jobs)


def test_a_stranger_without_a_certificate_is_refused_in_the_handshake(nodes: NodeFactory) -> None:
    node = nodes.start("a")
    ca = ClusterFiles(node.data_dir).ca_cert.read_bytes()
    strangers = {
        "plaintext": Transport(),
        "TLS without a certificate": Transport(tls=TlsMaterial(ca=ca)),
        "TLS with a token but no certificate": Transport(
            tls=TlsMaterial(ca=ca), token=token(node, "--scope", "admin")
        ),
    }
    for what, transport in strangers.items():
        with stub_with(node, transport) as stub:
            error = rpc_error(lambda: add_job(stub, "strangers/x"))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (what, error)
    assert job_count(node) == 0


def test_a_node_of_another_cluster_never_enters_the_view(nodes: NodeFactory) -> None:
    a = nodes.start("a")
    b = nodes.start("b", settings={"discovery.seeds": a.address}, own_cluster=True)
    c = nodes.start("c", settings={"discovery.seeds": a.address})  # a's cluster: the control
    wait_for(lambda: c.instance_id in instance_ids(a), 15, "c in a's view")
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in b.log_text(), 15, "b's handshake with a to fail")
    assert b.instance_id not in instance_ids(a)
    assert a.instance_id not in instance_ids(b)
    # b keeps retrying its seed (every sync interval, 0.5 s in the test preset): the reason is
    # logged once for that peer, not once per attempt.
    time.sleep(2.0)
    refusals = [line for line in b.log_text().splitlines() if "CERTIFICATE_VERIFY_FAILED" in line]
    assert len(refusals) == 1, refusals
    assert f"the peer at {a.address} stays out of the view" in refusals[0]
    # b's own credentials do not open a either.
    with stub_with(a, b.client_transport()) as stub:
        assert rpc_error(lambda: add_job(stub, "other/x")).code() == grpc.StatusCode.UNAVAILABLE
    assert job_count(a) == 0


def test_each_scope_may_do_only_what_it_grants(nodes: NodeFactory) -> None:
    node = nodes.start("a")
    reader = node.client_transport(token=token(node, "--scope", "read", "--name", "reader"))
    with stub_with(node, reader) as stub:
        stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1))
        error = rpc_error(lambda: add_job(stub, "images/a"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'submit'" in error.details()
        queues = queues_pb2_grpc.QueueServiceStub(reader.create_sync_channel(node.address))
        error = rpc_error(lambda: queues.SetQueue(queues_pb2.SetQueueRequest()))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope 'admin'" in error.details()

    submitter = node.client_transport(token=token(node, "--scope", "submit", "--topics", "images/**"))
    with stub_with(node, submitter) as stub:
        job_id = add_job(stub, "images/a")
        stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))  # submit implies read
        error = rpc_error(lambda: add_job(stub, "video/x"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "video/x" in error.details()
        error = rpc_error(
            lambda: stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=[new_job("images/b"), new_job("video/y")]))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        error = rpc_error(lambda: stub.RemoveJob(jobs_pb2.RemoveJobRequest(job_id=job_id)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert job_count(node) == 1  # only images/a

    worker = node.client_transport(token=token(node, "--scope", "work", "--topics", "images/**"))
    channel = worker.create_sync_channel(node.address)
    try:
        registration = workers_pb2.WorkRequest(register=workers_pb2.WorkerRegistration(topics=["**"]))
        stream = workers_pb2_grpc.WorkerServiceStub(channel).Work(iter([registration]))
        with pytest.raises(grpc.RpcError) as refused:
            list(stream)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'**'" in refused.value.details()
        error = rpc_error(lambda: jobs_pb2_grpc.JobServiceStub(channel).FindJobs(jobs_pb2.FindJobsRequest()))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()


def test_missing_bad_expired_and_revoked_tokens_are_unauthenticated(nodes: NodeFactory) -> None:
    node = nodes.start("a")
    files = ClusterFiles(node.data_dir)
    expired = token(node, "--scope", "read", "--ttl", "1s")
    revoked = token(node, "--scope", "read", "--name", "leaked")
    revoked_id = jobmesh("token", "list", "--data-dir", str(node.data_dir)).splitlines()[-1].split()[0]
    client_cert = TlsMaterial(
        files.ca_cert.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    with stub_with(node, Transport(tls=client_cert, token=revoked)) as stub:
        stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1))  # valid until revoked
        jobmesh("token", "revoke", "--data-dir", str(node.data_dir), revoked_id)
        error = rpc_error(lambda: stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in error.details()
    time.sleep(1.1)  # the token's whole lifetime
    cases = {"no token": None, "garbage": "jm1.e30.AAAA", "expired": expired}
    for what, value in cases.items():
        with stub_with(node, Transport(tls=client_cert, token=value)) as stub:
            error = rpc_error(lambda: stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1)))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, what
    # Health stays open to any holder of a cluster certificate.
    channel = Transport(tls=client_cert).create_sync_channel(node.address)
    try:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_insecure_still_works_and_says_so(nodes: NodeFactory) -> None:
    a = nodes.start("a", consumers=["plain/**=consumers:succeed"], extra_args=["--insecure"])
    b = nodes.start("b", settings={"discovery.seeds": a.address}, extra_args=["--insecure"])
    job_id = add_job(b.stub, "plain/x")
    wait_for_state(b.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
    assert "INSECURE" in a.log_text()
    view = topology_pb2_grpc.TopologyServiceStub(a.channel).GetTopology(topology_pb2.GetTopologyRequest())
    assert all(i.properties.get("jobmesh.insecure") == "true" for i in view.view.instances)
    assert not (Path(a.data_dir) / "cluster").exists()


def test_a_revocation_reaches_another_node_within_a_second(nodes: NodeFactory) -> None:
    a = nodes.start("a")
    b = nodes.start("b", settings={"discovery.seeds": a.address})
    wait_for(
        lambda: b.instance_id in instance_ids(a) and a.instance_id in instance_ids(b), 15, "a and b meet"
    )
    leaked = token(a, "--scope", "read", "--name", "leaked")  # made on a, valid on b too
    token_id = jobmesh("token", "list", "--data-dir", str(a.data_dir)).splitlines()[-1].split()[0]
    with stub_with(b, b.client_transport(token=leaked)) as stub:
        stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1))
        jobmesh("token", "revoke", "--data-dir", str(a.data_dir), token_id)
        revoked_at = time.monotonic()  # the command has returned: revoked on a

        def refused_on_b() -> bool:
            try:
                stub.FindJobs(jobs_pb2.FindJobsRequest(page_size=1), timeout=2)
            except grpc.RpcError as e:
                return bool(e.code() == grpc.StatusCode.UNAUTHENTICATED)
            return False

        wait_for(refused_on_b, 5, "b to refuse the revoked token")
        took = time.monotonic() - revoked_at
    assert took < 1.0, f"the revocation took {took:.2f}s to reach b"
    assert token_id in ClusterFiles(b.data_dir).dir.joinpath("revoked.json").read_text()  # b keeps it


def test_a_client_on_another_machine_uses_a_bundle_and_a_profile(nodes: NodeFactory, tmp_path: Path) -> None:
    node = nodes.start("a", consumers=["remote/**=consumers:succeed"])
    bundle = tmp_path / "bundle"
    jobmesh("cluster", "client", "--data-dir", str(node.data_dir), "--name", "laptop", "--out", str(bundle))
    assert oct((bundle / "client.key").stat().st_mode & 0o777) == "0o600"
    submit = token(node, "--scope", "submit", "--topics", "remote/**")
    profile = tmp_path / "config.toml"
    profile.write_text(
        f'ca = "{bundle}/ca.pem"\ncert = "{bundle}/client.pem"\nkey = "{bundle}/client.key"\ntoken = "{submit}"\n'
    )
    # No data dir of a node here: everything comes from the profile.
    environ = {"JOBMESH_PROFILE": str(profile), "JOBMESH_DATA_DIR": str(tmp_path / "none"), "PATH": ""}
    run = [sys.executable, "-m", "node", "add", "remote/x", "--wait", "--node", node.address]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False, env=environ)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(
        [*run[:4], "other/x", *run[5:]], capture_output=True, text=True, timeout=60, check=False, env=environ
    )
    assert refused.returncode != 0
    assert "other/x" in refused.stderr


def a_member(nodes: NodeFactory, instance_id: str) -> Transport:
    """Credentials of an authenticated member of the factory's cluster: a node certificate."""
    cluster = ClusterFiles(nodes.cluster)
    uri = pki.INSTANCE_URI_PREFIX + instance_id
    key_pem, cert = cluster.issue_key_and_cert(uri, (), datetime.timedelta(hours=1))
    ca = cluster.ca_cert.read_bytes()
    return Transport(tls=TlsMaterial(ca, key_pem, pki.cert_pem(cert) + ca))


def record(instance_id: str, start_us: int, address: str, incarnation: int, state: PeerState) -> MemberRecord:
    return MemberRecord(InstanceInfo(instance_id, instance_id[:8], start_us, (address,)), incarnation, state)


def test_a_member_may_not_lie_about_another_instance_or_overflow_an_incarnation(nodes: NodeFactory) -> None:
    victim = nodes.start("victim")
    channel = a_member(nodes, "mallory").create_sync_channel(victim.address)
    membership = membership_pb2_grpc.MembershipServiceStub(channel)
    now_us = int(time.time() * 1e6)
    mallory = record("mallory", now_us, "127.0.0.1:1", 1, PeerState.ALIVE)
    try:
        # "You are me, and I started earlier": the duplicate-id check must not fire.
        impostor = record(victim.instance_id, 1, "127.0.0.1:1", 1, PeerState.ALIVE)
        ping = membership_pb2.PingRequest(sender=impostor.to_proto(), target_id=victim.instance_id)
        error = rpc_error(lambda: membership.Ping(ping, timeout=5))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert "may speak only for itself" in error.details()
        # Its own voice, but an incarnation nobody can refute.
        lie = record(victim.instance_id, 1, victim.address, 2**64 - 1, PeerState.LEFT)
        gossip = membership_pb2.GossipRequest(sender=mallory.to_proto(), records=[lie.to_proto()])
        error = rpc_error(lambda: membership.Gossip(gossip, timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "incarnation" in error.details()
        # A transfer frame in another origin's name.
        frames = iter([transfer_pb2.ExchangeRequest(sender_id=victim.instance_id)])
        with pytest.raises(grpc.RpcError) as refused:
            list(transfer_pb2_grpc.TransferServiceStub(channel).Exchange(frames, timeout=5))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
    assert victim.running
    assert victim.instance_id in instance_ids(victim)  # its own view still reads, with itself in it
    assert job_count(victim) == 0


def test_two_clusters_on_one_lan_stay_apart(nodes: NodeFactory) -> None:
    mdns = {"discovery.mdns": "true"}
    a = nodes.start("a", settings=mdns)
    b = nodes.start("b", settings=mdns)
    other = nodes.start("other", settings=mdns, own_cluster=True)
    wait_for(
        lambda: b.instance_id in instance_ids(a) and a.instance_id in instance_ids(b), 15, "a and b meet"
    )
    wait_for(lambda: "another cluster" in other.log_text(), 15, "the other cluster to ignore a and b")
    assert "another cluster" in a.log_text()
    assert other.instance_id not in instance_ids(a) | instance_ids(b)
    assert instance_ids(other) == {other.instance_id}
    # Ignored by mDNS, never dialled: no failed handshakes between the clusters.
    assert "CERTIFICATE_VERIFY_FAILED" not in other.log_text() + a.log_text() + b.log_text()
