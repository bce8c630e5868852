"""SWIM-style membership over gRPC: probes, suspicion, refutation, gossip, sync, leave.

Every `probe_interval_s` the node probes one live member (round robin over a shuffled order)
with a Ping. No answer within `probe_timeout_s`: it asks `indirect_probes` other members to
probe it (IndirectPing); still nothing: the member becomes SUSPECT. A suspect that does not
refute (publish ALIVE with a higher incarnation) within `suspicion_timeout_s` is declared DEAD,
and the declaration is pushed to every live member at once. A busy or briefly paused node
therefore survives: any message from it, or any probe it answers, carries its refutation.

News (joins, suspicions, deaths, new properties) is piggybacked on every message and pushed
to `gossip_fanout` random members every `gossip_interval_s`. Every `sync_interval_s` the node
exchanges its whole table with one random member (anti-entropy), retries seeds that are not
in its view, and retries one dead member (so partitions heal). Joining is a Sync with any
peer: a seed, or one found by mDNS. A graceful shutdown pushes LEFT to every member.

Two live nodes with one instance id (a copied data dir): whoever hears from the other
compares start times; the later one is answered ALREADY_EXISTS (or fails itself) and stops
(duplicates.py).

Threading: everything here runs on the node's event loop; `on_change` is called there, after
every change to the members, their states or their properties.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from node.discovery.config import DiscoveryConfig
from node.discovery.duplicates import DuplicateIds
from node.discovery.gossip import BroadcastQueue
from node.discovery.health import MAX_SCORE, LocalHealth
from node.discovery.membership import Member, MemberRecord, PeerState, PeerTable, Verdict
from node.discovery.messages import (
    Ack,
    Gossip,
    GossipAck,
    IndirectAck,
    IndirectPing,
    Ping,
    Sync,
    SyncReply,
)
from node.discovery.peers import PeerTransport
from node.discovery.suspicion import MIN_STALL_S, Suspicion, Suspicions
from node.errors import DuplicateInstance, PeerUnavailable, Unavailable
from node.instance import now_us

log = logging.getLogger(__name__)

MAX_PIGGYBACK = 8
"""Records piggybacked on one message (least-sent first)."""
SYNC_TIMEOUT_FACTOR = 4
"""A Sync moves whole tables: it gets this many probe timeouts."""


class MembershipProtocol(Suspicions, DuplicateIds):
    """One node's membership: its peer table and the tasks that keep it true.

    Create it on the node's event loop; `start()`, `leave()` and `stop()` it there.
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        local: MemberRecord,
        transport: PeerTransport,
        on_change: Callable[[], None] = lambda: None,
        seeds: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.table = PeerTable(local)
        self._news = asyncio.Event()
        self.broadcasts = BroadcastQueue(config.retransmit_mult, self._news.set)
        self._transport = transport
        self._on_change = on_change
        self._seeds: dict[str, str | None] = dict.fromkeys(seeds)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rounds: list[asyncio.Task[Any]] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._verifying: dict[str, MemberRecord] = {}
        self._contacting: set[str] = set()
        self._checked_duplicates: set[tuple[str, int]] = set()
        self._confirmed_at: dict[str, float] = {}
        self._refutation_pushed_at = float("-inf")
        self.health = LocalHealth()
        """This node's own health: stretches its probe timings while it struggles (health.py)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: asyncio.Future[DuplicateInstance] | None = None
        self.running = False

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def local(self) -> MemberRecord:
        """This node's current record."""
        return self.table.local

    async def start(self) -> None:
        """Start probing, gossiping and syncing; contact the seeds."""
        self._loop = asyncio.get_running_loop()
        self._failure = self._loop.create_future()
        self.running = True
        self._rounds = [
            self._spawn(self._every(self._probe_interval, self._probe_round), "probe"),
            self._spawn(self._every(self.config.gossip_interval_s, self._gossip_round), "gossip"),
            self._spawn(self._every(self.config.sync_interval_s, self._sync_round, jitter=True), "sync"),
        ]
        for seed in self._seeds:
            self.contact(seed)

    async def leave(self) -> None:
        """Tell every live member this node leaves (LEFT), waiting at most `leave_timeout_s`.

        Probing and gossip stop; until `stop()`, incoming calls are answered with the LEFT record.
        """
        if not self.running or self.failed:
            return
        for task in self._rounds:
            task.cancel()
        left = self.table.leave_local()
        members = self.table.live()
        log.info("leaving the topology (telling %d members)", len(members))
        if members and self.config.leave_timeout_s > 0:
            message = Gossip(left, (left,))
            timeout = self.config.leave_timeout_s
            await asyncio.gather(
                *(self._transport.gossip(m.address, message, timeout) for m in members),
                return_exceptions=True,
            )

    async def stop(self) -> None:
        """Stop every task and timer and release the transport."""
        self.running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A cancelled task keeps its CancelledError, whose traceback holds this object through
        # the task's frames: drop our references so no cycle keeps channels alive after stop.
        self._rounds = []
        for member_id in list(self._suspicions):
            self._cancel_suspicion(member_id)
        await self._transport.close()
        if self._failure is not None and not self._failure.done():
            self._failure.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"membership-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("membership task %s failed", task.get_name(), exc_info=task.exception())

    async def _every(
        self,
        interval_s: float | Callable[[], float],
        action: Callable[[], Coroutine[Any, Any, None]],
        jitter: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            started = loop.time()
            try:
                await action()
            except Exception:
                log.exception("membership round %s failed", getattr(action, "__name__", action))
            interval = interval_s() if callable(interval_s) else interval_s
            delay = interval * (random.uniform(0.8, 1.2) if jitter else 1.0)
            await asyncio.sleep(max(0.0, delay - (loop.time() - started)))

    # --- incoming messages (called by the servicer) ---------------------------------------

    def _admit(self, sender: MemberRecord) -> None:
        """Refuse messages while stopped, and settle a clash of instance ids with the sender."""
        if not self.running or self.failed:
            raise Unavailable("this node is not part of the topology (starting, leaving or stopped)")
        self._settle_clash(sender)

    async def handle_ping(self, message: Ping) -> Ack:
        """Answer a direct probe."""
        self._admit(message.sender)
        self._merge(message.sender, heard=True)
        self._merge_all(message.gossip, source=message.sender.id)
        return Ack(self.table.local, self._piggyback(message.sender))

    async def handle_indirect_ping(self, message: IndirectPing) -> IndirectAck:
        """Probe `target` on behalf of the sender and report whether it answered."""
        self._admit(message.sender)
        self._merge(message.sender, heard=True)
        self._merge_all(message.gossip, source=message.sender.id)
        target = self.table.get(message.target_id)
        ping = Ping(self.table.local, message.target_id, self._about(target.record) if target else ())
        try:
            ack = await self._transport.ping(message.target_address, ping, message.timeout_s)
        except (PeerUnavailable, DuplicateInstance):
            return IndirectAck(False, None, self.table.local, self._piggyback(message.sender))
        self._merge_all(ack.gossip, source=ack.responder.id)
        reachable = ack.responder.id == message.target_id
        if reachable:
            self._merge(ack.responder, heard=True)
        return IndirectAck(
            reachable, ack.responder if reachable else None, self.table.local, self._piggyback(message.sender)
        )

    async def handle_sync(self, message: Sync) -> SyncReply:
        """Merge the sender's table, then answer with ours (which now includes its news)."""
        self._admit(message.sender)
        self._merge(message.sender, heard=True)
        self._merge_all(message.members, from_sync=True, source=message.sender.id)
        return SyncReply(self.table.local, tuple(self.table.records()))

    async def handle_gossip(self, message: Gossip) -> GossipAck:
        """Merge pushed news."""
        self._admit(message.sender)
        self._merge(message.sender, heard=message.sender.state.in_view)
        self._merge_all(message.records, source=message.sender.id)
        return GossipAck(self.table.local)

    # --- outgoing: joining -------------------------------------------------------------------

    def contact(self, address: str, expected_id: str | None = None) -> None:
        """Join (Sync with) the peer at `address` unless it is already live in the view.

        Called for seeds and for peers mDNS found; safe to call repeatedly.
        """
        if not self.running or address in self._contacting:
            return
        if expected_id is not None:
            member = self.table.get(expected_id)
            if member is not None and member.record.state.in_view:
                return
        self._contacting.add(address)
        self._spawn(self._contact(address), f"contact-{address}")

    async def _contact(self, address: str) -> None:
        try:
            await self._sync_with(address)
        finally:
            self._contacting.discard(address)

    async def _sync_with(self, address: str) -> str | None:
        """Push-pull with `address`; returns the id of the member that answered."""
        message = Sync(self.table.local, tuple(self.table.records()))
        try:
            reply = await self._transport.sync(
                address, message, self.health.scale(self.config.probe_timeout_s) * SYNC_TIMEOUT_FACTOR
            )
        except PeerUnavailable as e:
            log.debug("sync with %s failed: %s", address, e)
            return None
        except DuplicateInstance as e:
            self._fail(e)
            return None
        local = self.table.local
        if reply.responder.id == local.id and reply.responder.info.start_time_us == local.info.start_time_us:
            if address in self._seeds:
                self._seeds[address] = local.id  # a seed list that names this node itself
            return local.id
        self._merge(reply.responder, heard=True, address=address)
        self._merge_all(reply.members, from_sync=True, source=reply.responder.id)
        if address in self._seeds:
            self._seeds[address] = reply.responder.id
        return reply.responder.id

    # --- outgoing: the protocol rounds ---------------------------------------------------------

    async def _probe_round(self) -> None:
        member = self.table.next_probe_target()
        if member is not None:
            await self._probe(member)

    async def _probe(self, member: Member) -> None:
        record, address = member.record, member.address
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self.health.scale(self.config.probe_timeout_s)
        try:
            ack = await self._transport.ping(
                address, Ping(self.table.local, record.id, self._piggyback(record)), timeout
            )
        except PeerUnavailable:
            pass
        except DuplicateInstance as e:
            self._fail(e)
            return
        else:
            self._merge_all(ack.gossip, source=ack.responder.id)
            if ack.responder.id == record.id:
                self._merge(ack.responder, heard=True, address=address)
                self._health(-1)
                return
            # Another node answers at that address now: learn it; the probed member did not answer.
            self._merge(ack.responder, heard=True, address=address)
        helpers = [m for m in self.table.live() if m.record.id != record.id]
        helpers = random.sample(helpers, min(self.config.indirect_probes, len(helpers)))
        answers = await asyncio.gather(*(self._indirect_probe(h, record, address, timeout) for h in helpers))
        # Lifeguard: a peer some helper reached, or helpers that did not answer at all, point at
        # this node's own trouble; with no helper to ask, any failed probe does.
        self._health(sum(answer is not False for answer in answers) if helpers else 1)
        if any(answers):
            return
        if loop.time() - started > 3 * timeout + MIN_STALL_S:
            return  # this node was stalled (paused, overloaded): its silence proves nothing about the peer
        current = self.table.get(record.id)
        if current is None or not current.record.state.in_view:
            return
        if current.record.info.start_time_us != record.info.start_time_us:
            return
        if current.record.state is PeerState.ALIVE:
            log.info("member %s (%s) did not answer a probe: suspect", record.info.name, record.id)
        else:  # suspected already: this node's own failed probe confirms it (dynamic suspicion)
            log.debug("member %s (%s) did not answer a probe either", record.info.name, record.id)
        self._merge(current.record.with_state(PeerState.SUSPECT, suspected_by=self.table.local.id))

    async def _indirect_probe(
        self, helper: Member, target: MemberRecord, address: str, probe_timeout_s: float
    ) -> bool | None:
        """True if `helper` reached the target, False if it could not, None if it did not answer."""
        message = IndirectPing(
            self.table.local, target.id, address, probe_timeout_s, self._piggyback(helper.record)
        )
        try:
            answer = await self._transport.indirect_ping(helper.address, message, 2 * probe_timeout_s)
        except (PeerUnavailable, DuplicateInstance):
            return None
        self._merge(answer.responder, heard=True)
        self._merge_all(answer.gossip, source=answer.responder.id)
        if answer.reachable and answer.target is not None and answer.target.id == target.id:
            self._merge(answer.target, heard=True, source=answer.responder.id)
            return True
        return False

    def _probe_interval(self) -> float:
        return self.health.scale(self.config.probe_interval_s)

    def _health(self, delta: int) -> None:
        before = self.health.score
        self.health.apply(delta)
        self.table.counters.local_health = self.health.score
        if self.health.score != before and (self.health.score == MAX_SCORE - 1 or self.health.score == 0):
            log.info(
                "local health %d of %d: probe timings x%d",
                self.health.score,
                MAX_SCORE - 1,
                self.health.score + 1,
            )

    async def _gossip_round(self) -> None:
        if not len(self.broadcasts):  # sleep until there is news: an idle cluster sends nothing
            self._news.clear()
            await self._news.wait()
        members = self.table.live()
        peers = random.sample(members, min(self.config.gossip_fanout, len(members)))
        sends = []
        timeout = self.health.scale(self.config.probe_timeout_s)  # all calls stretch alike: peers.py
        for peer in peers:
            records = self._piggyback(peer.record)
            if records:
                sends.append(
                    self._transport.gossip(peer.address, Gossip(self.table.local, tuple(records)), timeout)
                )
        await asyncio.gather(*sends, return_exceptions=True)

    async def _sync_round(self) -> None:
        loop = asyncio.get_running_loop()
        self._expire_tombstones(loop.time())
        targets: list[str] = []
        live = self.table.live()
        if live:
            targets.append(random.choice(live).address)
        for seed, member_id in self._seeds.items():
            member = self.table.get(member_id) if member_id else None
            if member_id != self.table.local.id and (member is None or not member.record.state.in_view):
                targets.append(seed)
        dead = [m for m in self.table if m.record.state is PeerState.DEAD]
        if dead:  # a partition looks like deaths; retrying one dead member per round heals it
            targets.append(random.choice(dead).address)
        await asyncio.gather(*(self._sync_with(address) for address in dict.fromkeys(targets)))

    def _expire_tombstones(self, now: float) -> None:
        for member in self.table:
            state = member.record.state
            if not state.in_view and now - member.changed_at > self.config.dead_retention_s:
                self.table.forget(member.record.id)
                self._spawn(self._transport.forget(member.address), "forget")

    # --- merging news ----------------------------------------------------------------------------

    def _merge_all(
        self, records: Iterable[MemberRecord], from_sync: bool = False, source: str | None = None
    ) -> None:
        for record in records:
            self._merge(record, from_sync=from_sync, source=source)

    def _merge(
        self,
        record: MemberRecord,
        from_sync: bool = False,
        heard: bool = False,
        address: str | None = None,
        source: str | None = None,
    ) -> None:
        """Apply one record according to the table's verdict; `source`: who told this node
        (None: the record's own member, or this node's own conclusion)."""
        verdict, record = self.table.judge(record, from_sync, source)
        if verdict is Verdict.APPLY:
            self._apply(record)
        elif verdict is Verdict.REFUTE:
            self._refute(record)
        elif verdict is Verdict.VERIFY:
            self._verify(record)
        elif verdict is Verdict.OWN_ID:
            self._own_id(record, hearsay=source is not None and source != record.id)
        elif verdict is Verdict.CONFIRM:
            self._confirm(record)
        elif verdict is Verdict.SUSPECTED_AGAIN:
            self._suspected_again(record)
        if heard and record.id != self.table.local.id:
            member = self.table.get(record.id)
            if member is not None and member.record.info.start_time_us == record.info.start_time_us:
                self.table.heard_from(record.id, address, now_us())

    def _apply(self, record: MemberRecord) -> None:
        loop = asyncio.get_running_loop()
        previous = self.table.apply(record, now_us(), loop.time())
        if previous is not None or record.state.in_view:
            self.broadcasts.add(record)  # pass news on (old tombstones from a sync are not news)
        if record.state is PeerState.SUSPECT:
            if (
                previous is None
                or previous.state is not PeerState.SUSPECT
                or previous.incarnation != record.incarnation
            ):
                self._start_suspicion(record)
        else:
            self._cancel_suspicion(record.id)
        was_live = previous is not None and previous.state.in_view
        if record.state.in_view and not was_live:
            log.info("member %s (%s) at %s joined", record.info.name, record.id, record.info.address)
        elif was_live and not record.state.in_view:
            log.info("member %s (%s) is %s", record.info.name, record.id, record.state.value)
        self._on_change()

    # --- piggybacking ------------------------------------------------------------------------

    def _about(self, peer: MemberRecord) -> tuple[MemberRecord, ...]:
        """What this node believes about `peer` if that is worse than what `peer` claims.

        Sent to the peer itself so that it can refute a suspicion or a death.
        """
        member = self.table.get(peer.id)
        if member is None or member.record.state is PeerState.ALIVE:
            return ()
        record = member.record
        if record.info.start_time_us == peer.info.start_time_us and record.outranks(peer):
            return (record,)
        return ()

    def _piggyback(self, peer: MemberRecord) -> tuple[MemberRecord, ...]:
        members = len(self.table) + 1
        return self._about(peer) + tuple(self.broadcasts.take(MAX_PIGGYBACK, members))

    # --- local changes ---------------------------------------------------------------------------

    def set_local_properties(self, properties: dict[str, str]) -> None:
        """Publish new instance properties (a new incarnation); no-op if unchanged."""
        local = self.table.local
        if dict(local.properties) == properties or local.state is PeerState.LEFT:
            return
        self.broadcasts.add(self.table.bump_local(properties=properties))
        self._on_change()

    def probe_soon(self, member_id: str) -> None:
        """Probe a member now (mDNS says it went away)."""
        member = self.table.get(member_id)
        if member is not None and member.record.state is PeerState.ALIVE and self.running:
            self._spawn(self._probe(member), f"probe-{member_id}")
