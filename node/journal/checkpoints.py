"""WAL checkpoints off the writer's path: a thread with its own connection.

SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages, on the
writer's thread: that commit copies the WAL into the database file and fsyncs it, so every
caller of that group commit waits for it (a third of a one-job commit's cost, measured, and the
spikes in AddJob's p99). The writer's connection turns it off (`wal_autocheckpoint = 0`) and
this thread runs a PASSIVE checkpoint, which never blocks the writer or a reader, after commits,
at most every `interval_s`. An idle journal costs no wake-ups: the thread sleeps until the
writer reports a commit (`committed()`).

The WAL restarts from its beginning only at a write that finds every frame of it copied. Under
steady load a commit always lands between this thread's checkpoint and the next write, so the
WAL never restarted: it grew by every commit (335 MB after 5,000 one-job commits, measured), and
each commit cost more as the WAL index grew (a one-job commit: 21 us with a WAL that restarts,
a median of 137 us over 20,000 commits without). So once a checkpoint finds the WAL at
`RESTART_FRAMES` or more, the writer finishes the job on its own connection after its next
commit (`committed(conn)`): a PASSIVE checkpoint of the few frames committed since this thread's
pass (1-3 ms), after which its next write restarts the WAL, and `journal_size_limit` trims a WAL
that a burst grew.

Only the writer can finish it. A checkpoint on this thread's connection that copies every frame
proves nothing while a write transaction is open: that transaction began on the older snapshot,
so its write does not restart the WAL, and its commit adds frames again (a thread-only version
let the WAL grow to 2.6 GB under bulk AddJobs, measured). The writer's part is mostly the
checkpoint's fdatasyncs (1-18 ms each on the benchmark VM, by strace), not the copying: catching
up on this thread first left it at 1-6 ms.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

from node.journal.connection import Durability, open_connection

log = logging.getLogger(__name__)

INTERVAL_S = 0.25
"""Most often a checkpoint runs; at 10,000 jobs/s the WAL grows by a few MiB in between."""
WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""`journal_size_limit`: the size a WAL is truncated back to when it restarts."""
RESTART_FRAMES = 4096
"""WAL frames (16 MiB of 4 KiB pages, one WAL-index hash table) at which the writer restarts it."""


def tune_writer(conn: sqlite3.Connection) -> None:
    """Leave checkpoints to a `Checkpointer` (call on the writer's connection)."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")


class Checkpointer:
    """Checkpoints the WAL of `path` in a thread after the commits it is told of."""

    def __init__(
        self,
        path: Path,
        durability: Durability,
        interval_s: float = INTERVAL_S,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        self._path = path
        self._durability = durability
        self._interval_s = interval_s
        self._restart_frames = restart_frames
        self._restart_due = False
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._dirty.set()  # the first round copies what a previous run left in the WAL
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
        self.checkpoints = 0
        """PASSIVE checkpoints run so far (for tests and benchmarks)."""
        self.restarts = 0
        """Checkpoints the writer finished so that its next write restarts the WAL."""

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def committed(self, writer: sqlite3.Connection) -> None:
        """The writer committed; call on its thread, with its connection outside a transaction,
        after its callers are answered: cheap, but for the few commits that finish a checkpoint."""
        self._dirty.set()
        if self._restart_due and not writer.in_transaction:
            try:
                busy, frames, copied = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as e:  # a storage fault: the writer's next commit reports it
                log.debug("WAL checkpoint on the writer failed: %s", e)
                return
            # Busy: this thread's own pass is running, so the next commit tries again. Frames left
            # over: a reader still uses them; this thread's next pass asks again if need be.
            self._restart_due = bool(busy)
            if not busy and frames == copied:
                self.restarts += 1  # the writer's next write restarts the WAL

    def stop(self) -> None:
        """Stop the thread (the writer's close then checkpoints what is left)."""
        self._stopping.set()
        self._dirty.set()
        self._thread.join()

    def _run(self) -> None:
        conn = open_connection(self._path, self._durability)
        try:
            # `stop` sets _stopping before _dirty: a stop that lands after this round cleared
            # _dirty ends the loop at its check, one that lands before wakes the wait.
            while not self._stopping.is_set():
                self._dirty.wait()
                if self._stopping.wait(self._interval_s):  # commits of the next interval join in
                    break
                self._dirty.clear()
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    if frames >= self._restart_frames:
                        self._restart_due = True
                except sqlite3.Error as e:  # a storage fault: the writer reports it; retry later
                    log.debug("WAL checkpoint failed: %s", e)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
