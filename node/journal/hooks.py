"""The journal's one extension point: a hook that rides along with job changes (offloading).

The journal knows nothing of peers or outboxes; a layer above it (node.transfer.outbox) registers
one `JournalHook` with `Journal.register_hook`, and the job stores call it in the transaction
of each change, so what the hook writes commits or rolls back with the change itself.

Threading contract (like memberlist's delegates): every method is called on the journal's writer
thread, inside the open transaction, with the writer's connection. A hook must be quick, must
not block, await or open other connections, and reaches the event loop only through
`loop.call_soon_threadsafe`. An exception it raises rolls back the operation that called it.
Register it before anything writes jobs (before the queue runners start): a change made
without the hook is never shown to it later.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from node.journal.records import NewJobRecord


class JournalHook(Protocol):
    """What offloading adds to job changes (see the module docstring for the threading contract)."""

    def jobs_added(self, conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> None:
        """Jobs were inserted (dedup hits excluded); their rows exist."""

    def job_cancelled(self, conn: sqlite3.Connection, job_id: str, *, removed: bool) -> None:
        """A user stopped (or, with `removed`, removed) the unfinished job `job_id`."""

    def events_recorded(self, conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
        """The transaction's job events, seq `first_seq`..`last_seq`, were just written (before COMMIT)."""

    def keeps_finished(self, conn: sqlite3.Connection, job_seq: int) -> bool:
        """True if the job at row `job_seq`, just SUCCEEDED in a queue that keeps no history, must stay."""
        ...

    def committed(self) -> None:
        """The transaction is durable (called after COMMIT, still on the writer thread)."""


class NoHook:
    """The hook of a journal nobody extends: nothing is added to any change."""

    def jobs_added(self, conn: sqlite3.Connection, records: Sequence[NewJobRecord]) -> None:
        """Nothing to add."""

    def job_cancelled(self, conn: sqlite3.Connection, job_id: str, *, removed: bool) -> None:
        """Nothing to add."""

    def events_recorded(self, conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
        """Nothing to add."""

    def keeps_finished(self, conn: sqlite3.Connection, job_seq: int) -> bool:
        """No job needs to stay."""
        return False

    def committed(self) -> None:
        """Nothing to do."""
