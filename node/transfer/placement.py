"""Placement among peers: the origin picks a target for each job from the live instances that
consume its topic (node.jobs.placement.Placement, injected into the JobManager).

Own cluster first; an ordered queue keeps one target so order holds; otherwise the least loaded
(outstanding jobs against advertised capacity), this node included when it takes the topic.

Event-loop contract: `refresh` and `consumers_changed` run on the loop; `choose` runs on the
loop or on the journal's writer thread, and reads only the view snapshot `refresh` took.
"""

from __future__ import annotations

import contextlib

from node.discovery.topology import Topology
from node.discovery.view import TopologyView
from node.instance import now_us
from node.model.queues import QueueConfig, QueueType
from node.transfer.store import TransferStore

CAPACITY_PROPERTY = "jobmesh.capacity"
"""Instance property: free job slots on the instance (published at most once per interval)."""


def _load(outstanding: int, capacity: str | None) -> float:
    slots = max(1, int(capacity)) if capacity and capacity.isdigit() else 1
    return outstanding / slots


class PeerPlacement:
    """Load-aware choice of a target among live peers (and this node)."""

    def __init__(self, local_id: str, topology: Topology, store: TransferStore) -> None:
        self.local_id = local_id
        self.topology = topology
        self.store = store
        self.view: TopologyView | None = None
        """The newest view snapshot (None until the topology started)."""
        self.outstanding: dict[str, int] = {}
        """Unfinished jobs per remote target (counted as they are chosen; re-counted from the journal)."""
        self.local_outstanding = 0
        """Unfinished jobs `choose` gave this node itself (re-counted at each assignment round, up to
        `store.LOCAL_COUNT_CAP`)."""

    def refresh(self) -> TopologyView | None:
        """Take a new snapshot of the members as they are now, not as last settled: a new worker
        gets jobs, a dead one none, without waiting for the settle delay of the topology events
        (keeps the old snapshot while the topology is not running)."""
        with contextlib.suppress(RuntimeError):
            self.view = self.topology.latest
        return self.view

    def choose(
        self, topic: str, queue: QueueConfig | None, *, suspended: bool, local_free_slots: int | None
    ) -> str | None:
        """A live instance to run a job of `topic` (see node.jobs.placement.Placement.choose)."""
        local = self.local_id if local_free_slots is not None else None
        view = self.view
        if suspended or view is None:
            return local  # a suspended queue's jobs stay put: none is sent away while it is suspended
        found = [i for i in view.consumers_of(topic) if not i.is_local]
        if not found:
            return local
        same = [i for i in found if i.cluster == view.local.cluster]
        if not same and local is not None:
            return local  # own cluster first
        found = same or found
        if queue is not None and queue.type is QueueType.ORDERED:
            return min(i.id for i in found)  # one target keeps the order
        loads = [
            (
                _load(self.outstanding.get(i.id, 0), i.properties.get(CAPACITY_PROPERTY)),
                self.outstanding.get(i.id, 0),
                i.id,
            )
            for i in found
        ]
        if local is not None:
            loads.append(
                (_load(self.local_outstanding, str(local_free_slots)), self.local_outstanding, local)
            )
        best = min(loads)[2]
        if best == local:
            self.local_outstanding += 1
        else:
            self.outstanding[best] = self.outstanding.get(best, 0) + 1
        return best

    def finished(self, target: str, count: int) -> None:
        """`count` jobs offloaded to `target` ended."""
        self.outstanding[target] = max(0, self.outstanding.get(target, 0) - count)

    async def consumers_changed(self) -> None:
        """Hand back the queued jobs of other origins no consumer here takes any more, so their
        origins place them elsewhere (e.g. after a remote worker's stream broke)."""
        await self.store.hand_back(now_us())
