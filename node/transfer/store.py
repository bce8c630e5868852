"""The transfer side of the journal, as the offloader uses it: one object over the outbox
(`outbox`), frame building (`frames`), applying received frames (`apply`) and assignment
(`assign`). Each method is one journal read or one write operation.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence

from jobmesh.peer.v1 import transfer_pb2

from node.config import CHUNK_BYTES
from node.errors import PayloadDamaged
from node.instance import now_us
from node.jobs.validation import JobLimits, check_reconcile
from node.journal.controls import finish_job
from node.journal.jobs import JobStore
from node.journal.journal import Journal
from node.journal.records import QUEUED, UNFINISHED, select_job
from node.model.job import JobState
from node.transfer import answers
from node.transfer.apply import Applied, Arrival, FrameApplier, check_frame
from node.transfer.assign import ASSIGN_BATCH, Assigner, Chooser
from node.transfer.chunks import ChunkAssembler
from node.transfer.frames import ChunkCursor, FrameLimits, build_frame
from node.transfer.outbox import Outbox

LOCAL_COUNT_CAP = 10_000
"""The most `outstanding_here` counts (see there)."""


class TransferStore:
    """Outbox, frames, received frames and assignment, for one node's journal.

    Creating it registers its outbox as the journal's hook (see node/journal/hooks.py): create
    it on the loop, before anything writes jobs (before the queue runners start).
    """

    def __init__(
        self, journal: Journal, jobs: JobStore, local_id: str, limits: JobLimits | None = None
    ) -> None:
        self.journal = journal
        self.limits = limits or JobLimits()
        """What received jobs and reports may carry (this node's `jobs.*` limits)."""
        self.jobs = jobs
        self.local_id = local_id
        self.outbox = Outbox(journal, local_id)
        self.outbox.register()
        self._applier = FrameApplier(jobs, self.outbox)
        self._assigner = Assigner(self.outbox, journal.recorder)

    async def peers(self) -> list[str]:
        """Instance ids this node has undelivered outbox items for."""
        return await self.outbox.peers()

    async def pending(self) -> int:
        """Undelivered outbox items, all peers."""
        return await self.outbox.pending()

    async def drop(self, peer: str, upto_seq: int) -> None:
        """Forget the items for `peer` the peer acknowledged."""
        await self.outbox.drop(peer, upto_seq)

    async def next_frame(
        self,
        peer: str,
        after_seq: int,
        max_items: int,
        max_bytes: int,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        resume: ChunkCursor | None = None,
    ) -> transfer_pb2.ExchangeRequest | None:
        """The next frame for `peer` after outbox seq `after_seq`, or None if nothing waits; `resume`
        is the cursor after the chunks sent before on this stream (see frames.py)."""
        limits, integrity = FrameLimits(max_items, max_bytes, chunk_bytes), self.journal.integrity
        while True:
            try:
                return await self.journal.read(
                    lambda conn: build_frame(conn, self.local_id, peer, after_seq, limits, integrity, resume)
                )
            except PayloadDamaged as e:
                # Its input is damaged here: the job is dropped (a retry cannot mend the bytes),
                # so it is not sent, and the next frame is built without it.
                await self.journal.write(functools.partial(self._drop_damaged, damage=e))

    def _drop_damaged(self, conn: sqlite3.Connection, damage: PayloadDamaged) -> None:
        job = select_job(conn, damage.job_id)
        if job is not None and not job.state.is_finished:
            finish_job(conn, self.journal.recorder, job, JobState.DROPPED, str(damage), now_us())
            # A copy sent before the damage, under this epoch, is removed from the target too.
            self.outbox.job_cancelled(conn, job.id, removed=True)

    async def apply(
        self,
        frame: transfer_pb2.ExchangeRequest,
        arrivals: Mapping[str, Arrival],
        now_us: int,
        assembler: ChunkAssembler | None = None,
    ) -> Applied:
        """Apply a received frame in one transaction; duplicates and stale epochs are ignored.
        Chunks and chunked items need the stream's `assembler` (see chunks.py)."""
        check_frame(frame, assembler, self.limits)
        return await self.journal.write(lambda conn: self._applier.apply(conn, frame, arrivals, now_us))

    async def hand_back(self, now_us: int) -> int:
        """Give jobs of other origins this node cannot take back to them (see Assigner.hand_back)."""
        return await self.journal.write(lambda conn: self._assigner.hand_back(conn, now_us))

    async def assign(
        self, choose: Chooser, now_us: int, *, from_peer: str | None = None, batch: int = ASSIGN_BATCH
    ) -> int:
        """Give jobs targets (see Assigner.assign); `choose(topic, queue)` runs in the writer."""
        return await self.journal.write(
            lambda conn: self._assigner.assign(conn, choose, now_us, from_peer, batch)
        )

    async def outstanding(self) -> dict[str, int]:
        """Unfinished jobs of this origin per remote target.

        Walks the distinct targets of `jobs_remote` one index search each, skipping this node's
        own: the cost follows the jobs placed on peers, not the local backlog (a GROUP BY over
        the unfinished jobs visited every one of them)."""
        return await self.journal.read(self._count_remote)

    def _count_remote(self, conn: sqlite3.Connection) -> dict[str, int]:
        counts: dict[str, int] = {}
        after = ""
        while True:
            row = conn.execute(
                f"SELECT target FROM jobs INDEXED BY jobs_remote WHERE state IN {UNFINISHED} "
                "AND target > ? ORDER BY target LIMIT 1",
                (after,),
            ).fetchone()
            if row is None:
                return counts
            after = row["target"]
            if after == self.local_id:
                continue
            n = conn.execute(
                f"SELECT count(*) AS n FROM jobs INDEXED BY jobs_remote WHERE target = ? "
                f"AND state IN {UNFINISHED} AND origin = ?",
                (after, self.local_id),
            ).fetchone()["n"]
            if n:
                counts[after] = int(n)

    async def has_unassigned(self) -> bool:
        """Whether any job waits here without a target, this node's own or another origin's
        (what an assignment round moves or hands back): one step into jobs_unassigned."""
        return await self.journal.read(
            lambda conn: (
                conn.execute(
                    f"SELECT 1 FROM jobs INDEXED BY jobs_unassigned WHERE state = {QUEUED} "
                    "AND target IS NULL LIMIT 1"
                ).fetchone()
                is not None
            )
        )

    async def outstanding_here(self) -> int:
        """Unfinished jobs of this origin it runs itself, counted up to LOCAL_COUNT_CAP.

        Placement only compares loads, and past the cap this node is loaded whatever the exact
        figure; the cap keeps the count, made at every assignment round, from visiting a
        local backlog of a million jobs each time."""
        return await self.journal.read(self._count_here)

    def _count_here(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM (SELECT 1 FROM jobs INDEXED BY jobs_remote WHERE target = ? "
            f"AND state IN {UNFINISHED} AND origin = ? LIMIT ?)",
            (self.local_id, self.local_id, LOCAL_COUNT_CAP),
        ).fetchone()
        return int(row["n"])

    # --- reconciliation (answers.py) ---

    async def answer(self, request: transfer_pb2.ReconcileRequest) -> transfer_pb2.ReconcileResponse:
        """Answer a peer's Reconcile (InvalidArgument if it is malformed)."""
        check_reconcile(request)
        if request.role == transfer_pb2.RECONCILE_ROLE_ORIGIN:
            return await self.journal.write(lambda c: answers.answer_as_target(c, self.outbox, request))
        return await self.journal.read(lambda c: answers.answer_as_origin(c, self.local_id, request))

    async def offloaded_to(self, target: str) -> list[sqlite3.Row]:
        """This origin's unfinished, delivered jobs at `target` (see answers.offloaded_to)."""
        return await self.journal.read(lambda c: answers.offloaded_to(c, self.local_id, target))

    async def reassign_unknown(
        self, target: str, jobs: Sequence[tuple[str, int]], choose: Chooser, now_us: int
    ) -> int:
        """Reassign the jobs `target` does not know (see answers.reassign_unknown)."""
        return await self.journal.write(
            lambda c: answers.reassign_unknown(c, self._assigner, target, jobs, choose, now_us)
        )

    async def queued_origins(self) -> set[str]:
        """The other origins with jobs queued for this node."""
        return await self.journal.read(lambda c: answers.queued_origins(c, self.local_id))

    async def queued_from(self, origin: str) -> list[sqlite3.Row]:
        """The jobs of `origin` queued for this node."""
        return await self.journal.read(lambda c: answers.queued_from(c, self.local_id, origin))

    async def drop_fenced(
        self, origin: str, replies: Sequence[transfer_pb2.ReconcileAnswer], now_us: int
    ) -> int:
        """End unrun the queued jobs `origin` says are not this node's (see answers.drop_fenced)."""
        return await self.journal.write(
            lambda c: answers.drop_fenced(c, self.journal.recorder, origin, replies, now_us)
        )
