"""The offloader: one sender stream per peer, receiving frames, assignment, reassignment when a
target dies, reconciliation both ways, and capacity publishing. Targets are chosen by
`PeerPlacement` (placement.py); the outbox (outbox.py) is written inside the journal's
transactions through its hook; frames travel over a `TransferLink` (link.py); reconciliation
and the target's lease on each origin are reconcile.py and lease.py.

Event-loop contract: create, start and stop it on the node's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from jobmesh.peer.v1 import transfer_pb2

from node.config import OffloadConfig
from node.discovery.topology import Topology
from node.discovery.view import TopologyView
from node.errors import PeerUnavailable
from node.instance import now_us
from node.jobs.manager import JobManager
from node.transfer.apply import Arrival, arrivals_for
from node.transfer.assign import RoundSize
from node.transfer.chunks import ChunkAssembler
from node.transfer.frames import ChunkCursor
from node.transfer.lease import Lease
from node.transfer.link import GrpcTransferLink, TransferLink, TransferStream
from node.transfer.placement import CAPACITY_PROPERTY, PeerPlacement
from node.transfer.reconcile import Reconciler
from node.transfer.store import TransferStore
from node.transport import Transport
from node.waits import wait_event

log = logging.getLogger(__name__)

FRAME_MAX_ITEMS = 1000
FRAME_MAX_BYTES = 4 * 1024 * 1024
"""Frames stay about this size: larger payloads travel in chunks (see chunks.py)."""
IDLE_POLL_S = 2.0
"""Senders look at the outbox this often without a wake-up: a safety net only, as every commit
that enqueues rows and every topology change wakes them (an idle node's wake-ups cost CPU)."""
RECONNECT_DELAY_S = 0.2
ASSIGN_POLL_S = 5.0
"""Assignment rounds run this often without a cue: a safety net, as new jobs get their target
when added and topology, consumer and report changes each start a round at once."""


class FrameCounts:
    """Transfer frames and their encoded bytes, per peer instance id, since start (metrics)."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def add(self, peer: str, frame: transfer_pb2.ExchangeRequest) -> None:
        """Count one frame (its size is computed once, per frame, never per job)."""
        self.frames[peer] = self.frames.get(peer, 0) + 1
        self.bytes[peer] = self.bytes.get(peer, 0) + frame.ByteSize()


class Offloader:
    """Offloads this node's jobs and receives jobs and reports from its peers."""

    def __init__(
        self,
        manager: JobManager,
        topology: Topology,
        placement: PeerPlacement,
        store: TransferStore,
        config: OffloadConfig | None = None,
        link: TransferLink | None = None,
    ) -> None:
        self.manager = manager
        self.link: TransferLink = link or GrpcTransferLink(
            Transport(), manager.max_payload_bytes + FRAME_MAX_BYTES
        )
        """How frames reach peers (gRPC unless a test joins nodes in memory, see link.py)."""
        self.topology = topology
        self.placement = placement
        self.store = store
        self.config = config or OffloadConfig()
        self.local_id = manager.instance_id
        self._addresses: dict[str, str] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._assign_needed = asyncio.Event()
        self._gone_since: dict[str, float] = {}
        self._started_at = time.monotonic()
        self.sent = FrameCounts()
        """Frames sent to each peer."""
        self.received = FrameCounts()
        """Frames received from each peer."""
        self.lease = Lease(self.local_id, self.config.confirm_window_s, manager.wake_runners)
        """Which origins' jobs this node may start now (the JobManager's `hold` asks it)."""
        self.reconciler = Reconciler(
            store, self.link, self.lease, self._addresses.get, self._contact, placement.finished
        )
        self._confirm_now = asyncio.Event()
        self._running = False
        self._unsubscribe: list[Callable[[], object]] = []
        # Only commits that enqueued outbox rows wake the senders: waking on every commit would
        # cost an outbox read per commit on a node that offloads nothing.
        store.outbox.add_listener(self._wake)

    # --- lifecycle ---

    async def start(self) -> None:
        """Start senders, assignment and capacity publishing (after the topology started)."""
        self._running = True
        self.placement.outstanding = await self.store.outstanding()
        self._unsubscribe.append(self.topology.subscribe(lambda _event: self._on_topology()).cancel)
        self._unsubscribe.append(self.topology.add_membership_listener(self._on_membership))
        self.manager.consumers.add_listener(self._on_topology)
        self._refresh_view()
        self.lease.load(await self.store.queued_origins())
        self._confirm_now.set()  # after a restart every origin's queued jobs wait for its answer
        loops = (self._dispatch(), self._assign_loop(), self._capacity_loop(), self._reaper())
        for coro in (*loops, self._reconcile_loop(), self._confirm_loop()):
            self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def stop(self) -> None:
        """Stop all streams; undelivered items stay in the outbox."""
        self._running = False
        for undo in self._unsubscribe:
            with contextlib.suppress(Exception):
                undo()
        tasks = [*self._tasks, *self._senders.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.link.close()

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

    def _on_membership(self) -> None:
        # Placement acts on the member table as it is (PeerPlacement.refresh): new members and
        # properties are placed on at once, not after the settle delay of the next event.
        if not self._running:
            return
        before, after = self.placement.view, self._refresh_view()
        if after is None:
            return
        if before is None or not after.same_members(before) or not after.same_properties(before):
            self._assign_needed.set()

    def _refresh_view(self) -> TopologyView | None:
        view = self.placement.refresh()
        if view is not None:
            for instance in view.instances:
                if instance.endpoints and not instance.is_local:
                    self._addresses[instance.id] = instance.address
        return view

    def _choose_remote(self, topic: str, queue: str) -> str | None:
        """A remote target for a job this node does not run (called on the writer thread)."""
        return self.placement.choose(
            topic,
            self.manager.queues.get(queue),
            suspended=self.manager.queue_suspended(queue),
            local_free_slots=None,
        )

    # --- receiving ---

    def _arrival(self, topic: str) -> Arrival:
        queue = self.manager.queues.for_topic(topic).name
        local = self.manager.consumers.find(topic) is not None and self.manager.consumption.allows(topic)
        return Arrival(queue, self.local_id if local else None)

    def assembler(self) -> ChunkAssembler:
        """A reassembler of chunked payloads for one incoming transfer stream."""
        return ChunkAssembler(self.manager.max_payload_bytes)

    async def receive(
        self, frame: transfer_pb2.ExchangeRequest, assembler: ChunkAssembler | None = None
    ) -> None:
        """Apply a frame from a peer (persisted when this returns); `assembler` is the stream's."""
        arrivals = arrivals_for(frame.jobs, self._arrival)
        applied = await self.store.apply(frame, arrivals, now_us(), assembler)
        self.received.add(frame.sender_id, frame)
        self._contact(frame.sender_id)
        if frame.jobs:
            self.lease.arrived(frame.sender_id)
            if self.lease.holds(frame.sender_id):
                self._confirm_now.set()  # ask its origin now: the new jobs wait for the answer
        for target, count in applied.ended.items():
            self.placement.finished(target, count)
        if applied.jobs_added:
            self.manager.wake_runners()
            if any(arrival.target is None for arrival in arrivals.values()):
                await self.hand_back()
        if applied.ended:
            self._assign_needed.set()  # handed-back jobs wait for a new target
        for job_id in applied.stop_running:
            self.manager.request_stop(job_id)

    async def reconcile(self, request: transfer_pb2.ReconcileRequest) -> transfer_pb2.ReconcileResponse:
        """Answer a peer's Reconcile (InvalidArgument if malformed; see answers.py)."""
        response = await self.store.answer(request)
        if request.role == transfer_pb2.RECONCILE_ROLE_TARGET:
            self._contact(request.sender_id)  # a target that asks is not gone
        return response

    def _contact(self, peer: str) -> None:
        """`peer` reached this node or answered it: its reassignment clock starts again (the
        target's lease, lease.py, relies on it: no reassignment within the grace of a contact)."""
        self._gone_since.pop(peer, None)

    async def hand_back(self) -> None:
        """Give back the jobs of other origins this node cannot take (see Assigner.hand_back)."""
        await self.store.hand_back(now_us())

    # --- sending ---

    async def _dispatch(self) -> None:
        while self._running:
            kick = self._kick
            for peer in await self.store.peers():
                task = self._senders.get(peer)
                if task is None or task.done():
                    self._senders[peer] = asyncio.get_running_loop().create_task(self._send_to(peer))
            await self._idle(kick)

    async def _idle(self, kick: asyncio.Event) -> None:
        """Wait for a wake-up at most IDLE_POLL_S. `kick` must be taken before the outbox read it
        follows: a commit that lands during that read then still wakes this wait (`_wake` sets
        the event it replaces), so no enqueued row waits for the safety poll."""
        await wait_event(kick, IDLE_POLL_S)

    async def _send_to(self, peer: str) -> None:
        while self._running:
            self._refresh_view()
            address = self._addresses.get(peer)
            if address is None:
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            stream: TransferStream | None = None
            try:
                stream = await self.link.open(address)
                after = 0
                cursor: ChunkCursor | None = None  # a partial payload is started again on a new stream
                while self._running:
                    kick = self._kick
                    frame = await self.store.next_frame(
                        peer,
                        after,
                        FRAME_MAX_ITEMS,
                        FRAME_MAX_BYTES,
                        chunk_bytes=self.config.chunk_bytes,
                        resume=cursor,
                    )
                    if frame is None:
                        await self._idle(kick)
                        continue
                    sent_at = time.monotonic()
                    after = await stream.exchange(frame)
                    self.lease.heard(peer, sent_at)  # a round trip this node started
                    self.sent.add(peer, frame)
                    await self.store.drop(peer, after)
                    cursor = ChunkCursor.after(frame)
            except PeerUnavailable as e:
                log.debug("transfer to %s (%s) broke: %s", peer, address, e)
            finally:
                if stream is not None:
                    await stream.close()
            await asyncio.sleep(RECONNECT_DELAY_S)

    # --- assignment ---

    async def _assign_loop(self) -> None:
        rounds = RoundSize()
        while self._running:
            await wait_event(self._assign_needed, ASSIGN_POLL_S)
            self._assign_needed.clear()
            self._refresh_view()
            try:
                # Most cues (each report frame, each capacity change) come when nothing waits
                # unassigned: one index probe on a reader then spares the writer two transactions.
                if not await self.store.has_unassigned():
                    rounds.ended(0)
                    continue
            except Exception:
                log.exception("looking for unassigned jobs failed")
            if self.placement.local_outstanding:
                try:
                    self.placement.local_outstanding = await self.store.outstanding_here()
                except Exception:
                    log.exception("counting this node's own unfinished jobs failed")
            try:
                # Jobs of other origins left unassigned here (their consumer went away, e.g. a
                # remote worker's result re-queued one after it disconnected) go back to them.
                await self.hand_back()
                moved = await self.store.assign(self._choose_remote, now_us(), batch=rounds.next)
                if moved:
                    self._wake()
                if rounds.ended(moved):
                    self._assign_needed.set()  # a full round: more may wait, go on at once
            except Exception:
                log.exception("assigning unassigned jobs failed")

    async def _reaper(self) -> None:
        """Reassign the unfinished jobs of targets gone from the view, after a grace period."""
        rounds = 0
        while True:
            await asyncio.sleep(self.config.reassign_grace_s / 4)
            rounds += 1
            if rounds % 8 == 0:  # the in-memory counts drift (stopped, removed, deduplicated jobs)
                self.placement.outstanding = await self.store.outstanding()
            self._refresh_view()
            view = self.placement.view
            if view is None:
                continue
            live = {i.id for i in view.instances}
            now = time.monotonic()
            for target in [t for t, n in self.placement.outstanding.items() if n > 0]:
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
                self.placement.outstanding[target] = 0
                try:
                    moved = await self.store.assign(self._choose_remote, now_us(), from_peer=target)
                except Exception:
                    log.exception("reassigning the jobs of %s failed", target)
                    continue
                log.warning(
                    "target %s is gone: reassigned %d unfinished jobs under a new epoch", target, moved
                )
                self.manager.wake_runners()
                self._wake()

    async def _reconcile_loop(self) -> None:
        """As origin: ask the live targets about their quiet jobs (reconcile.py)."""
        after_s = self.config.reconcile_after_s
        while True:
            await asyncio.sleep(after_s / 2)
            view = self.placement.view
            if view is None:
                continue
            live = {i.id for i in view.instances if not i.is_local}
            targets = [t for t, n in self.placement.outstanding.items() if n > 0 and t in live]
            try:
                await self.reconciler.ask_targets(targets, self._choose_remote, after_s)
            except Exception:
                log.exception("reconciling with the targets failed")

    async def _confirm_loop(self) -> None:
        """As target: confirm the leases that lapsed or near their end (reconcile.py)."""
        while True:
            await wait_event(self._confirm_now, self.lease.window_s / 4)
            self._confirm_now.clear()
            try:
                await self.reconciler.confirm_origins()
            except Exception:
                log.exception("confirming the leases on origins failed")

    async def _capacity_loop(self) -> None:
        """Publish free slots while this node consumes anything, at most once per interval."""
        published: int | None = None
        properties = self.topology.properties
        while True:
            if self.manager.consumers.patterns:
                free = self.manager.free_slots
                if free != published:
                    properties.set(CAPACITY_PROPERTY, str(free))
                    published = free
            elif published is not None:
                properties.remove(CAPACITY_PROPERTY)
                published = None
            await asyncio.sleep(self.config.capacity_interval_s)
