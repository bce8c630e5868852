"""Joining a cluster with a token, and certificate renewal, with real node processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobmesh.v1 import jobs_pb2, topology_pb2, topology_pb2_grpc

from node.security import pki
from node.security.cluster import ClusterFiles
from node.security.join import JoinToken
from tests.support.job_calls import add_job, wait_for_state
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def join_token(node: NodeProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "node", "cluster", "token", "create", "--data-dir", str(node.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def joiner(nodes: NodeFactory, name: str, seed: NodeProcess, token: str, **settings: object) -> NodeProcess:
    """A node with an empty data dir that joins `seed`'s cluster with `token`."""
    return nodes.create(
        name,
        consumers=["joined/**=consumers:succeed"],
        settings={"discovery.seeds": seed.address, **settings},
        extra_args=["--join", token],
        own_cluster=True,
    )


def view_ids(node: NodeProcess) -> set[str]:
    reply = topology_pb2_grpc.TopologyServiceStub(node.channel).GetTopology(topology_pb2.GetTopologyRequest())
    return {i.id for i in reply.view.instances}


def refused(node: NodeProcess) -> str:
    """Start a node whose join must fail; its log."""
    node.spawn()
    node.expected_exit = 1
    assert node.wait_exit() == 1, node.log_text()
    return node.log_text()


def test_a_node_joins_with_a_token_and_works_in_the_cluster(nodes: NodeFactory) -> None:
    a = nodes.start("a")
    b = joiner(nodes, "b", a, join_token(a, "--ttl", "1h")).start()
    wait_for(lambda: b.instance_id in view_ids(a), 15, "b in a's view")
    files = ClusterFiles(b.data_dir)
    assert not files.admits()  # the CA key stayed on a
    assert files.read_ca() == ClusterFiles(a.data_dir).read_ca()
    cert = files.read_node_cert()
    assert cert is not None
    assert pki.identity_of(cert).instance_id == b.instance_id
    assert oct(files.node_key.stat().st_mode & 0o777) == "0o600"
    job_id = add_job(a.stub, "joined/x")  # only b consumes it: offloaded over mutual TLS
    assert wait_for_state(a.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED).state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_used_up_expired_wrong_and_foreign_tokens_are_refused(nodes: NodeFactory) -> None:
    a = nodes.start("a")
    once = join_token(a, "--uses", "1")
    joiner(nodes, "first", a, once).start()
    assert "is used up" in refused(joiner(nodes, "second", a, once))

    expired = join_token(a, "--ttl", "1s")
    time.sleep(1.1)  # the token's whole lifetime
    assert "has expired" in refused(joiner(nodes, "late", a, expired))

    parts = join_token(a).split(".")
    parts[3] = "A" * len(parts[3])  # another secret: the bootstrap key no longer matches either
    log = refused(joiner(nodes, "wrong", a, ".".join(parts)))
    assert "cannot join" in log

    other = nodes.start("other", own_cluster=True)
    log = refused(joiner(nodes, "foreign", a, join_token(other)))
    assert "belongs to another cluster" in log
    assert "malformed" in refused(joiner(nodes, "garbled", a, "jmj1.nonsense"))
    assert len(view_ids(a)) == 2  # a and first, nobody else


def test_certificates_renew_before_they_expire_with_jobs_flowing(nodes: NodeFactory) -> None:
    short = {"security.cert_lifetime_s": 4, "security.renew_fraction": 0.5}
    a = nodes.start("a", settings=short)
    b = joiner(nodes, "b", a, join_token(a), **short).start()
    first = {n.data_dir: ClusterFiles(n.data_dir).read_node_cert() for n in (a, b)}
    deadline = time.monotonic() + 10  # two and a half lifetimes
    done = 0
    while time.monotonic() < deadline:
        job_id = add_job(a.stub, "joined/x")
        wait_for_state(a.stub, job_id, jobs_pb2.JOB_STATE_SUCCEEDED)
        done += 1
    for node in (a, b):
        cert = ClusterFiles(node.data_dir).read_node_cert()
        assert cert is not None
        assert cert.serial_number != first[node.data_dir].serial_number  # type: ignore[union-attr]
        assert pki.expires_at(cert).timestamp() > time.time(), "the current certificate is valid"
        assert "renewed this node's certificate" in node.log_text()
    assert b.instance_id in view_ids(a)
    assert done > 5
    token = JoinToken.parse(join_token(a))
    assert token.ca_fingerprint == pki.fingerprint(ClusterFiles(a.data_dir).read_ca())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cluster_init_and_status(nodes: NodeFactory, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    made = cli("cluster", "init", "--data-dir", str(fresh))
    assert made.returncode == 0, made.stderr
    files = ClusterFiles(fresh)
    for secret in (files.ca_key, files.admin_token, files.client_key):
        assert oct(secret.stat().st_mode & 0o777) == "0o600", secret
    fingerprint = pki.fingerprint(files.read_ca())
    assert fingerprint in made.stdout
    assert cli("cluster", "init", "--data-dir", str(fresh)).returncode == 1  # never over an existing CA
    status = cli("cluster", "status", "--data-dir", str(fresh)).stdout
    assert fingerprint in status
    assert "none yet" in status

    a = nodes.start("a")
    b = joiner(nodes, "b", a, join_token(a)).start()
    wait_for(lambda: b.instance_id in view_ids(a), 15, "b in a's view")
    shown = cli("cluster", "status", "--data-dir", str(b.data_dir)).stdout
    assert "admits others  no" in shown
    assert f"instance {b.instance_id}" in shown

    def admitting() -> str:
        lines = cli("cluster", "status", "--data-dir", str(b.data_dir)).stdout.splitlines()
        return next((line for line in lines if line.startswith("admitting ")), "")

    line = wait_for(
        lambda: admitting() if str(a.info["name"]) in admitting() else None, 15, "a listed as admitting"
    )
    assert str(b.info["name"]) not in line
