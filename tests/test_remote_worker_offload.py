"""A remote worker on another namespace host gets the jobs its node is offloaded (issue 6 + 5).

subnet 1: origin (h1)  ──br1── router ──br2──  subnet 2: worker node + Python worker (h2)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jobmesh.v1 import jobs_pb2

from tests.support.job_calls import find_all
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.netlab import Host, Lab
from tests.support.protos import new_job
from tests.support.topology import view, wait_views
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
PORT = 7710
TOPIC = "demo/upper"


def _node(host: Host, nodes: NodeFactory, name: str, seed: str | None) -> NodeProcess:
    args = ["--name", name, "--host", "0.0.0.0", "--port", str(PORT)]
    if seed:
        args += ["--seed", seed]
    return nodes.create(
        name,
        settings={"discovery.advertise_addresses": host.address},
        extra_args=args,
        netns=host.netns.path,
        dial_host=host.mgmt_address,
    )


def test_a_worker_in_another_namespace_host_receives_jobs_offloaded_to_its_node(
    lab: Lab, nodes: NodeFactory, tmp_path: Path
) -> None:
    # Given an origin with no consumer, and on another host a node whose only consumer is a
    # remote worker process (the Python example) running in that host's namespace
    h1, h2 = lab.add_host("h1", 1), lab.add_host("h2", 2)
    origin = _node(h1, nodes, "origin", None)
    edge = _node(h2, nodes, "edge", f"{h1.address}:{PORT}")
    origin.start()
    edge.start()
    wait_views([origin, edge], {"origin", "edge"}, timeout=15)
    # The worker's credentials, made on the edge node's data dir: a client bundle and a work token
    bundle = tmp_path / "bundle"
    made = edge.cli(
        "cluster", "client", "--data-dir", str(edge.data_dir), "--name", "far", "--out", str(bundle)
    )
    assert made.returncode == 0, made.stderr
    created = edge.cli(
        "token", "create", "--data-dir", str(edge.data_dir), "--scope", "work", "--topics", "demo/**"
    )
    assert created.returncode == 0, created.stderr
    work_token = created.stdout.splitlines()[0]
    worker_log = (tmp_path / "worker.log").open("wb")
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'generated'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = subprocess.Popen(
        [
            "nsenter",
            f"--net={h2.netns.path}",
            "--",
            sys.executable,
            str(ROOT / "examples/python/worker.py"),
            "--node",
            f"127.0.0.1:{PORT}",
            "--topic",
            "demo/**",
            "--name",
            "far-worker",
            "--bundle",
            str(bundle),
            "--token",
            work_token,
        ],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        # Once the edge node advertises the worker's topics to the topology
        wait_for(
            lambda: any(
                i.name == "edge" and "demo/**" in i.properties.get("jobmesh.topics", "")
                for i in view(origin).instances
            ),
            15.0,
            "the origin to see that edge consumes demo/** through its remote worker",
        )
        # When jobs are added at the origin
        request = jobs_pb2.AddJobsRequest(jobs=[new_job(TOPIC, steps=1, step_ms=10) for _ in range(6)])
        ids = set(origin.stub.AddJobs(request).job_ids)

        # Then the far worker ran them all, and the origin shows them SUCCEEDED on edge
        def done() -> list[jobs_pb2.Job]:
            jobs = [j for j in find_all(origin.stub, jobs_pb2.FindJobsRequest(topic=TOPIC)) if j.id in ids]
            return (
                jobs if len(jobs) == 6 and all(j.state == jobs_pb2.JOB_STATE_SUCCEEDED for j in jobs) else []
            )

        wait_for(lambda: bool(done()), 30.0, "every job to succeed at the origin")
        edge_id = next(i.id for i in view(origin).instances if i.name == "edge")
        assert {j.target_instance for j in done()} == {edge_id}
        assert {j.result_message for j in done()} == {"processed by far-worker"}
    finally:
        worker.terminate()
        worker.wait(10)
        worker_log.close()
