"""The offloader: target selection, one sender stream per peer, reassignment when a target dies.

Event-loop contract: create, start and stop it on the node's loop; `choose` may be called from
the journal's writer thread (it reads only a snapshot taken on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from jobmesh.v1 import transfer_pb2, transfer_pb2_grpc

from node.config import OffloadConfig
from node.discovery.topology import Topology
from node.discovery.view import TopologyView
from node.instance import now_us
from node.jobs.manager import JobManager
from node.model.queues import QueueType
from node.transfer.chunks import ChunkAssembler
from node.transfer.store import ChunkCursor, Placement, TransferStore, placements_for
from node.transport import Transport

log = logging.getLogger(__name__)

CAPACITY_PROPERTY = "jobmesh.capacity"
"""Instance property: free job slots on the instance (published at most once per interval)."""
FRAME_MAX_ITEMS = 1000
FRAME_MAX_BYTES = 4 * 1024 * 1024
"""Frames stay about this size: larger payloads travel in chunks (see chunks.py)."""
IDLE_POLL_S = 0.2
RECONNECT_DELAY_S = 0.2


class Offloader:
    """Offloads this node's jobs and receives jobs and reports from its peers."""

    def __init__(
        self,
        manager: JobManager,
        topology: Topology,
        config: OffloadConfig | None = None,
        channels: Transport | None = None,
    ) -> None:
        self.manager = manager
        self._channels = channels or Transport()
        self.topology = topology
        self.config = config or OffloadConfig()
        self.local_id = manager.instance_id
        self.store = TransferStore(manager.store.journal, manager.store, self.local_id)
        self._outstanding: dict[str, int] = {}
        self._local_outstanding = 0
        """Unfinished jobs `choose` gave this node itself (re-counted from the journal each second)."""
        self._addresses: dict[str, str] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._assign_needed = asyncio.Event()
        self._gone_since: dict[str, float] = {}
        self._started_at = time.monotonic()
        self._running = False
        self._unsubscribe: list[Callable[[], object]] = []
        self._view: TopologyView | None = None
        self._outbox_writes_seen = 0

    # --- lifecycle ---

    async def start(self) -> None:
        """Start senders, assignment and capacity publishing (after the topology started)."""
        self._running = True
        self._outstanding = await self.store.outstanding()
        recorder = self.manager.store.journal.recorder
        recorder.has_foreign_jobs = recorder.has_foreign_jobs or await self.store.has_unfinished_foreign_jobs(
            self.local_id
        )
        recorder.local_instance = self.local_id
        self.manager.remote_chooser = self.choose
        # A consumer that went away (e.g. a remote worker's stream broke) leaves queued jobs of
        # other origins unassigned here: hand them back so their origins place them elsewhere.
        self.manager.after_consumers_changed = self.hand_back
        self._unsubscribe.append(self.manager.journal_commits(self._on_commit))
        self._unsubscribe.append(self.topology.subscribe(lambda _event: self._on_topology()).cancel)
        self.manager.consumers.add_listener(self._on_topology)
        self._refresh_view()
        for coro in (self._dispatch(), self._assign_loop(), self._capacity_loop(), self._reaper()):
            self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def stop(self) -> None:
        """Stop all streams; undelivered items stay in the outbox."""
        self._running = False
        self.manager.remote_chooser = None
        for undo in self._unsubscribe:
            with contextlib.suppress(Exception):
                undo()
        tasks = [*self._tasks, *self._senders.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_commit(self) -> None:
        # Only commits that added outbox rows have something to send: waking on every commit
        # would cost an outbox read per commit on a node that offloads nothing.
        writes = self.manager.store.journal.recorder.outbox_writes
        if writes != self._outbox_writes_seen:
            self._outbox_writes_seen = writes
            self._wake()

    def _wake(self) -> None:
        kick, self._kick = self._kick, asyncio.Event()
        kick.set()

    def _on_topology(self, *_args: object) -> None:
        if self._running:
            self._refresh_view()
            self._assign_needed.set()
            self._wake()

    async def consumption_changed(self) -> None:
        """After a change of this node's consumers or settings: hand back what it no longer takes,
        and look for targets for unassigned jobs now."""
        await self.hand_back()
        self._on_topology()

    def _refresh_view(self) -> None:
        with contextlib.suppress(RuntimeError):
            view = self.topology.view
            self._view = view
            for instance in view.instances:
                if instance.endpoints and not instance.is_local:
                    self._addresses[instance.id] = instance.address

    # --- target selection ---

    def choose(self, topic: str, queue: str, include_local: bool = False) -> str | None:
        """A live instance to run a job of `topic`, load-aware: a remote consumer, or this node when
        `include_local` (it consumes the topic) and it is the least loaded; None if there is none."""
        local = self.local_id if include_local else None
        if self.manager.queue_suspended(queue):
            return local  # a suspended queue's jobs stay put: none is sent away while it is suspended
        view = self._view
        if view is None:
            return local
        found = [i for i in view.consumers_of(topic) if not i.is_local]
        if not found:
            return local
        own = view.local.cluster
        same = [i for i in found if i.cluster == own]
        if not same and local is not None:
            return local  # own cluster first
        found = same or found
        config = self.manager.queues.get(queue)
        if config is not None and config.type is QueueType.ORDERED:
            return min(i.id for i in found)  # one target keeps the order

        def load(outstanding: int, capacity: str | None) -> float:
            slots = max(1, int(capacity)) if capacity and capacity.isdigit() else 1
            return outstanding / slots

        loads = [
            (
                load(self._outstanding.get(i.id, 0), i.properties.get(CAPACITY_PROPERTY)),
                self._outstanding.get(i.id, 0),
                i.id,
            )
            for i in found
        ]
        if local is not None:
            outstanding = self._local_outstanding
            loads.append((load(outstanding, str(self._local_free_slots())), outstanding, local))
        _load, _count, best = min(loads)
        if best == local:
            self._local_outstanding += 1
        else:
            self._outstanding[best] = self._outstanding.get(best, 0) + 1
        return best

    def _local_free_slots(self) -> int:
        """Free job slots on this node, as `_capacity_loop` publishes them."""
        return max(0, sum(q.parallelism for q in self.manager.queues.all()) - self.manager.active_count)

    # --- receiving ---

    def _place(self, topic: str) -> Placement:
        queue = self.manager.queues.for_topic(topic).name
        local = self.manager.consumers.find(topic) is not None and self.manager.consumption.allows(topic)
        target = self.local_id if local else None
        return Placement(queue, target)

    def assembler(self) -> ChunkAssembler:
        """A reassembler of chunked payloads for one incoming transfer stream."""
        return ChunkAssembler(self.manager.max_payload_bytes)

    async def receive(
        self, frame: transfer_pb2.TransferFrame, assembler: ChunkAssembler | None = None
    ) -> None:
        """Apply a frame from a peer (persisted when this returns); `assembler` is the stream's."""
        applied = await self.store.apply(frame, placements_for(frame.jobs, self._place), now_us(), assembler)
        for target, count in applied.ended.items():
            self._outstanding[target] = max(0, self._outstanding.get(target, 0) - count)
        if applied.jobs_added:
            self.manager.wake_runners()
            if any(self._place(j.topic).target is None for j in frame.jobs):
                await self.hand_back()
        if applied.ended:
            self._assign_needed.set()  # handed-back jobs wait for a new target
        for job_id in applied.stop_running:
            self.manager.request_stop(job_id)

    async def hand_back(self) -> None:
        """Give back the jobs of other origins this node cannot take (see TransferStore.hand_back)."""
        if await self.store.hand_back(now_us()):
            self._wake()

    # --- sending ---

    async def _dispatch(self) -> None:
        while True:
            for peer in await self.store.peers():
                task = self._senders.get(peer)
                if task is None or task.done():
                    self._senders[peer] = asyncio.get_running_loop().create_task(self._send_to(peer))
            await self._idle()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), IDLE_POLL_S)

    async def _send_to(self, peer: str) -> None:
        limit = self.manager.max_payload_bytes + FRAME_MAX_BYTES
        while self._running:
            self._refresh_view()
            address = self._addresses.get(peer)
            if address is None:
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            channel = self._channels.create_channel(address, limit)
            try:
                call = transfer_pb2_grpc.TransferServiceStub(channel).Exchange()
                after = 0
                cursor: ChunkCursor | None = None  # a partial payload is started again on a new stream
                while self._running:
                    frame = await self.store.next_frame(
                        peer,
                        after,
                        FRAME_MAX_ITEMS,
                        FRAME_MAX_BYTES,
                        chunk_bytes=self.config.chunk_bytes,
                        resume=cursor,
                    )
                    if frame is None:
                        await self._idle()
                        continue
                    await call.write(frame)
                    ack = await call.read()
                    if not isinstance(ack, transfer_pb2.TransferAck):
                        raise ConnectionError("the peer closed the transfer stream")
                    await self.store.drop(peer, ack.last_seq)
                    after = ack.last_seq
                    cursor = ChunkCursor.after(frame)
            except (grpc.aio.AioRpcError, ConnectionError, asyncio.InvalidStateError) as e:
                log.debug("transfer to %s (%s) broke: %s", peer, address, e)
            finally:
                await channel.close()
            await asyncio.sleep(RECONNECT_DELAY_S)

    # --- assignment ---

    async def _assign_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._assign_needed.wait(), 1.0)
            self._assign_needed.clear()
            self._refresh_view()
            if self._local_outstanding:
                try:
                    self._local_outstanding = await self.store.outstanding_here()
                except Exception:
                    log.exception("counting this node's own unfinished jobs failed")
            try:
                # Jobs of other origins left unassigned here (their consumer went away, e.g. a
                # remote worker's result re-queued one after it disconnected) go back to them.
                await self.hand_back()
                if await self.store.assign(self.choose, now_us()):
                    self._wake()
            except Exception:
                log.exception("assigning unassigned jobs failed")

    async def _reaper(self) -> None:
        """Reassign the unfinished jobs of targets gone from the view, after a grace period."""
        rounds = 0
        while True:
            await asyncio.sleep(self.config.reassign_grace_s / 4)
            rounds += 1
            if rounds % 8 == 0:  # the in-memory counts drift (stopped, removed, deduplicated jobs)
                self._outstanding = await self.store.outstanding()
            self._refresh_view()
            view = self._view
            if view is None:
                continue
            live = {i.id for i in view.instances}
            now = time.monotonic()
            for target in [t for t, n in self._outstanding.items() if n > 0]:
                if target in live:
                    self._gone_since.pop(target, None)
                    continue
                since = self._gone_since.setdefault(target, now)
                if (
                    now - since < self.config.reassign_grace_s
                    or now - self._started_at < self.config.startup_grace_s
                ):
                    continue
                self._gone_since.pop(target, None)
                self._outstanding[target] = 0
                try:
                    moved = await self.store.assign(self.choose, now_us(), from_peer=target)
                except Exception:
                    log.exception("reassigning the jobs of %s failed", target)
                    continue
                log.warning(
                    "target %s is gone: reassigned %d unfinished jobs under a new epoch", target, moved
                )
                self.manager.wake_runners()
                self._wake()

    async def _capacity_loop(self) -> None:
        """Publish free slots while this node consumes anything, at most once per interval."""
        published: int | None = None
        properties = self.topology.properties
        while True:
            if self.manager.consumers.patterns:
                queues = self.manager.queues.all()
                free = max(0, sum(q.parallelism for q in queues) - self.manager.active_count)
                if free != published:
                    properties.set(CAPACITY_PROPERTY, str(free))
                    published = free
            elif published is not None:
                properties.remove(CAPACITY_PROPERTY)
                published = None
            await asyncio.sleep(self.config.capacity_interval_s)
