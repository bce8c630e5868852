"""Reconciliation rounds (TransferService.Reconcile), both ways; the journal side is answers.py.

Origin -> target ("no lost report"): every `offload.reconcile_after_s / 2` an origin asks each
live target about the jobs it offloaded there that have been quiet (no report applied, no change)
for `offload.reconcile_after_s`. The target re-sends the report of each job whose state differs
from what the origin has (it travels the transfer stream like any report, fenced by its epoch:
a finished job ends once), and says which it does not know at that epoch: those the origin
reassigns under a new epoch, with a warning.

Target -> origin ("no wasted fenced work"): when a target's lease on an origin lapses or nears
its end (lease.py), it asks the origin which of that origin's jobs queued here are still its own
at their epoch, drops the others unrun, and renews the lease from when it asked.

Event-loop contract: create and run on the node's loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from jobmesh.peer.v1 import transfer_pb2

from node.errors import JobmeshError
from node.instance import now_us
from node.jobs.validation import RECONCILE_MAX_JOBS, check_reconcile_answers
from node.transfer.assign import Chooser
from node.transfer.lease import Lease
from node.transfer.link import RECONCILE_TIMEOUT_S, TransferLink
from node.transfer.store import TransferStore

log = logging.getLogger(__name__)

MAX_ASKED_PER_ROUND = 10 * RECONCILE_MAX_JOBS
"""Quiet jobs one origin round asks one target about at most (the rest in later rounds)."""


@dataclass
class ReconcileCounts:
    """What reconciliation did since start (metrics)."""

    reports_resent: int = 0
    """Origin: jobs whose target re-sent their report when asked (it was lost, or still on its way)."""
    reassigned_unknown: int = 0
    """Origin: jobs reassigned because their target did not know them."""
    dropped_fenced: int = 0
    """Target: queued jobs of other origins ended unrun (their origin had reassigned, stopped or
    removed them: STOPPED for a stop, else DROPPED)."""
    confirmations: int = 0
    """Target: lease confirmations an origin answered."""


class _QuietJobs:
    """Which of a target's jobs have not changed for a while (in memory: after a restart every
    job starts quiet-less, and is asked about one period later)."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, tuple[tuple[int, int, int, int], float]]] = {}

    def select(
        self, target: str, rows: Sequence[sqlite3.Row], now: float, after_s: float
    ) -> list[sqlite3.Row]:
        """The rows unchanged for `after_s` (their clocks restart: asked again one period later)."""
        before = self._seen.get(target, {})
        seen: dict[str, tuple[tuple[int, int, int, int], float]] = {}
        quiet: list[sqlite3.Row] = []
        for row in rows:
            signature = (row["epoch"], row["state"], row["retry_count"], row["report_seq"])
            kept = before.get(row["id"])
            since = kept[1] if kept is not None and kept[0] == signature else now
            if now - since >= after_s and len(quiet) < MAX_ASKED_PER_ROUND:
                quiet.append(row)
                since = now
            seen[row["id"]] = (signature, since)
        self._seen[target] = seen
        return quiet

    def forget(self, live: Iterable[str]) -> None:
        """Drop the targets not in `live`."""
        keep = set(live)
        for target in [t for t in self._seen if t not in keep]:
            del self._seen[target]


class Reconciler:
    """Runs the reconciliation rounds of one node, as origin and as target."""

    def __init__(
        self,
        store: TransferStore,
        link: TransferLink,
        lease: Lease,
        address_of: Callable[[str], str | None],
        contact: Callable[[str], None],
        moved: Callable[[str, int], None],
    ) -> None:
        self.store = store
        self.link = link
        self.lease = lease
        self.local_id = store.local_id
        self._address_of = address_of
        self._contact = contact
        """Called with a peer's id after it answered (the origin's reassignment clock restarts)."""
        self._moved = moved
        """Called with a target and how many of its jobs were reassigned (placement's counts)."""
        self._quiet = _QuietJobs()
        self._failing: set[str] = set()
        """Peers whose last Reconcile failed (their failures are logged once, until one works)."""
        self.counts = ReconcileCounts()

    def _questions(
        self, role: transfer_pb2.ReconcileRole.ValueType, rows: Sequence[sqlite3.Row]
    ) -> Iterator[transfer_pb2.ReconcileRequest]:
        """The Reconcile requests asking about `rows` (id, epoch, state, retry_count), at most
        RECONCILE_MAX_JOBS each, in order."""
        for start in range(0, len(rows), RECONCILE_MAX_JOBS):
            request = transfer_pb2.ReconcileRequest(sender_id=self.local_id, role=role)
            for row in rows[start : start + RECONCILE_MAX_JOBS]:
                request.jobs.add(
                    job_id=row["id"], epoch=row["epoch"], state=row["state"], retry_count=row["retry_count"]
                )
            yield request

    async def _ask(
        self, peer: str, request: transfer_pb2.ReconcileRequest
    ) -> transfer_pb2.ReconcileResponse | None:
        """The peer's checked answers, or None (unreachable, or answers that do not fit)."""
        address = self._address_of(peer)
        if address is None:
            log.debug("cannot reconcile with %s yet: no address for it in the view", peer)
            return None
        try:
            async with asyncio.timeout(RECONCILE_TIMEOUT_S):  # not wait_for: see docs/architecture.md
                response = await self.link.reconcile(address, request)
            check_reconcile_answers(request, response)
        except (JobmeshError, TimeoutError) as e:
            # Once at INFO per outage: a target asks an unreachable origin every quarter window.
            level = logging.DEBUG if peer in self._failing else logging.INFO
            log.log(level, "reconciliation with %s (%s) failed: %s", peer, address, e)
            self._failing.add(peer)
            return None
        if peer in self._failing:
            self._failing.discard(peer)
            log.info("reconciliation with %s (%s) works again", peer, address)
        self._contact(peer)
        return response

    # --- as origin ---

    async def ask_targets(self, targets: Iterable[str], choose: Chooser, after_s: float) -> None:
        """One origin round: ask each of `targets` about its quiet jobs."""
        targets = list(targets)
        self._quiet.forget(targets)
        for target in targets:
            rows = await self.store.offloaded_to(target)
            quiet = self._quiet.select(target, rows, time.monotonic(), after_s)
            for request in self._questions(transfer_pb2.RECONCILE_ROLE_ORIGIN, quiet):
                response = await self._ask(target, request)
                if response is None:
                    break  # asked again next round
                await self._apply_target_answers(target, request, response, choose)

    async def _apply_target_answers(
        self,
        target: str,
        request: transfer_pb2.ReconcileRequest,
        response: transfer_pb2.ReconcileResponse,
        choose: Chooser,
    ) -> None:
        unknown: list[tuple[str, int]] = []
        for asked, answer in zip(request.jobs, response.answers, strict=True):
            if answer.status == transfer_pb2.RECONCILE_STATUS_UNKNOWN:
                unknown.append((answer.job_id, answer.epoch))
            elif (answer.state, answer.retry_count) != (asked.state, asked.retry_count):
                self.counts.reports_resent += 1
        if unknown:
            moved = await self.store.reassign_unknown(target, unknown, choose, now_us())
            self.counts.reassigned_unknown += moved
            if moved:
                self._moved(target, moved)
                log.warning(
                    "target %s does not know %d job(s) it was given (e.g. %s): reassigned under a new epoch",
                    target,
                    moved,
                    unknown[0][0],
                )

    # --- as target ---

    async def confirm_origins(self) -> None:
        """One target round: ask each origin whose lease lapsed or nears its end about its jobs
        queued here (a hold that lifts wakes the runners: `Lease.on_release`)."""
        # All at once: an origin that does not answer (until the call's timeout) holds up no other.
        await asyncio.gather(*(self._confirm_origin(o) for o in self.lease.to_confirm()))

    async def _confirm_origin(self, origin: str) -> None:
        rows = await self.store.queued_from(origin)
        if not rows:
            self.lease.nothing_queued(origin)  # a job that arrives from it brings it back
            return
        await self._confirm(origin, rows)

    async def _confirm(self, origin: str, rows: Sequence[sqlite3.Row]) -> None:
        asked_at = time.monotonic()  # the lease runs from the question, not from the answer
        for request in self._questions(transfer_pb2.RECONCILE_ROLE_TARGET, rows):
            response = await self._ask(origin, request)
            if response is None:
                return  # still held (if it lapsed); asked again next round
            dropped = await self.store.drop_fenced(origin, response.answers, now_us())
            if dropped:
                self.counts.dropped_fenced += dropped
                log.warning(
                    "ended %d queued job(s) of %s unrun: it had reassigned, stopped or removed them "
                    "while this node was out of contact",
                    dropped,
                    origin,
                )
        self.counts.confirmations += 1
        self.lease.confirmed(origin, asked_at)
