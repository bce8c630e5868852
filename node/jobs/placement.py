"""Placement: which instance runs a new job, when other instances could (offloading).

The `JobManager` receives a `Placement` when it is built. `LocalPlacement` (no offloading)
keeps every job here; node.transfer.placement.PeerPlacement chooses among live peers.

Event-loop contract: both methods are called on the node's loop; `choose` may also be called
on the journal's writer thread (reassignment), so it must only read snapshots and never block.
"""

from __future__ import annotations

from typing import Protocol

from node.model.queues import QueueConfig


class Placement(Protocol):
    """Chooses a target for jobs this node does not keep for itself."""

    def choose(
        self, topic: str, queue: QueueConfig | None, *, suspended: bool, local_free_slots: int | None
    ) -> str | None:
        """A live instance to run a job of `topic` in `queue`, or None if there is none.

        `local_free_slots` is None when this node does not take the topic, else its free job
        slots: the node itself is then a candidate. A suspended queue's jobs stay here.
        """
        ...

    async def consumers_changed(self) -> None:
        """This node's consumers changed and its jobs whose consumer is gone were unassigned."""


class LocalPlacement:
    """No offloading: a job runs here when this node takes its topic, or waits unassigned."""

    def __init__(self, local_id: str) -> None:
        self.local_id = local_id

    def choose(
        self, topic: str, queue: QueueConfig | None, *, suspended: bool, local_free_slots: int | None
    ) -> str | None:
        """This node if it takes the topic, else None."""
        return self.local_id if local_free_slots is not None else None

    async def consumers_changed(self) -> None:
        """Nothing to do."""
