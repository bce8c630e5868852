"""Target selection at an origin that consumes the topic itself: a queue that prefers the creating
instance keeps its jobs local; one that does not spreads them, load-aware, over the origin and its
peers.
"""

from __future__ import annotations

from collections import Counter

from jobmesh.v1 import jobs_pb2, queues_pb2

from tests.support.job_calls import find_all
from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.protos import new_job
from tests.support.topology import create, start_all, view, wait_views
from tests.support.waiting import wait_for

SPREAD = "offload/spread"
KEEP = "offload/keep"
CONSUMER = "offload/**=consumers:succeed"


def _set_queue(node: NodeProcess, name: str, topic: str, prefer: bool) -> None:
    config = queues_pb2.QueueConfig(name=name, topics=[topic], prefer_run_on_creation_instance=prefer)
    node.queues.SetQueue(queues_pb2.SetQueueRequest(config=config))


def _run(origin: NodeProcess, topic: str, count: int) -> Counter[str]:
    ids = set(
        origin.stub.AddJobs(jobs_pb2.AddJobsRequest(jobs=[new_job(topic) for _ in range(count)])).job_ids
    )

    def done() -> list[jobs_pb2.Job] | None:
        request = jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_ALL, topic=topic, page_size=1000)
        jobs = [j for j in find_all(origin.stub, request) if j.id in ids]
        ok = len(jobs) == count and all(j.state == jobs_pb2.JOB_STATE_SUCCEEDED for j in jobs)
        return jobs if ok else None

    jobs = wait_for(done, 20.0, f"{count} jobs of {topic} to succeed at the origin")
    return Counter(j.target_instance for j in jobs)


def test_a_queue_that_prefers_the_creating_instance_runs_locally_and_one_that_does_not_spreads(
    nodes: NodeFactory,
) -> None:
    origin = create(nodes, "origin", consumers=[CONSUMER]).start()
    peer = create(nodes, "w1", seeds=[origin], consumers=[CONSUMER])
    start_all(peer)
    wait_views([origin, peer], {"origin", "w1"})
    for node in (origin, peer):  # the same queues everywhere: equal capacity
        _set_queue(node, "spread", f"{SPREAD}/**", prefer=False)
        _set_queue(node, "keep", f"{KEEP}/**", prefer=True)

    def capacities() -> bool:
        found = {i.id: i.properties.get("jobmesh.capacity") for i in view(origin).instances}
        return found.get(peer.instance_id) == found.get(origin.instance_id) == "45"

    wait_for(capacities, 10.0, "the origin to see the peer's topics and capacity")

    kept = _run(origin, f"{KEEP}/a", 40)
    assert kept == {origin.instance_id: 40}, kept

    spread = _run(origin, f"{SPREAD}/a", 40)
    assert set(spread) == {origin.instance_id, peer.instance_id}, spread
    assert min(spread.values()) >= 15, f"equal load spreads evenly: {spread}"

    # The main queue prefers the creating instance by default: as on a single node
    main = _run(origin, "offload/main", 20)
    assert main == {origin.instance_id: 20}, main
