"""An offloading cluster of real node processes: an origin without a consumer and its workers.

Shared by the offloading tests and `benchmarks/bench_offload.py`.
"""

from __future__ import annotations

from .launcher import NodeFactory, NodeProcess
from .topology import create, start_all, view, wait_views
from .waiting import wait_for

TOPIC = "offload/work"
"""The topic the workers consume (`offload/**`)."""


def wait_consumes(origin: NodeProcess, workers: list[NodeProcess]) -> None:
    """Wait until the origin sees every worker's topics and capacity."""
    ids = {w.instance_id for w in workers}

    def ready() -> bool:
        seen = {
            i.id
            for i in view(origin).instances
            if "offload/**" in i.properties.get("jobmesh.topics", "") and "jobmesh.capacity" in i.properties
        }
        return ids <= seen

    wait_for(ready, 10.0, "the origin to see the workers' topics and capacity")


def start_cluster(
    nodes: NodeFactory, consumer: str, workers: int = 2
) -> tuple[NodeProcess, list[NodeProcess]]:
    """An origin and `workers` nodes (`w1`, ...) consuming `offload/**` with `consumer`, all in view."""
    origin = create(nodes, "origin").start()
    procs = [
        create(nodes, f"w{i}", seeds=[origin], consumers=[f"offload/**={consumer}"])
        for i in range(1, workers + 1)
    ]
    start_all(*procs)
    wait_views([origin, *procs], {"origin", *(f"w{i}" for i in range(1, workers + 1))})
    wait_consumes(origin, procs)
    return origin, procs
