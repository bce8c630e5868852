"""This node's identity and its hold on the data directory."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node.errors import DataDirInUse, DataDirUnusable, IdentityMismatch

LOCK_FILE = "lock"
RUN_FILE = "node.json"
IDENTITY_FILE = "instance.json"


@dataclass(frozen=True)
class InstanceIdentity:
    """Who this node is: a stable id (persisted), a name, and when this run started."""

    id: str
    name: str
    start_time_us: int


def new_instance_id() -> str:
    """A fresh random instance id."""
    return str(uuid.uuid4())


def default_name(port: int) -> str:
    """`<hostname>-<port>`."""
    return f"{socket.gethostname()}-{port}"


class DataDirLock:
    """An exclusive lock on a data directory, held for the node's lifetime.

    Two processes must never share one journal; the lock is released by the OS when the
    process dies, so a crash never leaves it stale.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse naming the holder (DataDirUnusable if it cannot be)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open while locked
        except OSError as e:
            raise DataDirUnusable(unusable_data_dir(self.data_dir, e)) from e
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirInUse(
                f"data dir {self.data_dir} is in use by {holder}; stop that node or choose another --data-dir"
            ) from e
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Release the lock."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def write_run_file(data_dir: Path, info: dict[str, object]) -> None:
    """Atomically write `<data_dir>/node.json` (how tools find a running node's port)."""
    path = data_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)


def remove_run_file(data_dir: Path) -> None:
    """Remove `<data_dir>/node.json` on clean shutdown."""
    (data_dir / RUN_FILE).unlink(missing_ok=True)


def now_us() -> int:
    """Wall-clock microseconds since the epoch."""
    return time.time_ns() // 1000


def unusable_data_dir(data_dir: Path, error: OSError) -> str:
    """Why `data_dir` cannot be used, as one line telling what to do."""
    if data_dir.exists() and not data_dir.is_dir():
        reason = "it is a file, not a directory"
    elif error.errno == errno.EROFS:
        reason = "it is on a read-only file system"
    elif error.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    else:
        reason = error.strerror or str(error)
    return f"data dir {data_dir} cannot be used: {reason}; choose another --data-dir"


def read_identity(data_dir: Path) -> str | None:
    """The instance id recorded in the data dir (beside the journal), or None."""
    try:
        value = json.loads((data_dir / IDENTITY_FILE).read_text()).get("instance_id")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as e:
        raise IdentityMismatch(
            f"{data_dir / IDENTITY_FILE} is unreadable ({e}); restore it, or remove it to start as a new instance"
        ) from e
    return str(value) if value else None


def write_identity(data_dir: Path, instance_id: str) -> None:
    """Record the instance id beside the journal, so a lost journal is noticed."""
    path = data_dir / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"instance_id": instance_id}) + "\n")
    tmp.replace(path)


def choose_instance_id(data_dir: Path, in_journal: str | None, *, reset_journal: bool) -> str:
    """This node's instance id, from its journal and its identity file; refuses to become someone new.

    A journal that is missing or empty while the data dir has an identity means the jobs are
    gone (a lost disk, a bad restore): the node refuses to start as a new instance unless told
    `reset_journal`, and then keeps its id. A journal and an identity of different instances
    mean two data dirs were mixed: always refused.
    """
    recorded = read_identity(data_dir)
    if in_journal is not None:
        if recorded is not None and recorded != in_journal:
            raise IdentityMismatch(
                f"the journal in {data_dir} belongs to instance {in_journal}, but the data dir's "
                f"{IDENTITY_FILE} says {recorded}: were two data dirs mixed? Restore the right journal"
            )
        if recorded is None:
            write_identity(data_dir, in_journal)  # data dirs made before the identity file existed
        return in_journal
    if recorded is not None and not reset_journal:
        raise IdentityMismatch(
            f"the journal in {data_dir} is missing or empty, but this data dir is instance {recorded}: "
            "its jobs would be lost. Restore the journal from a backup, or start anew with "
            "`jobmesh run --reset-journal` (keeps the instance id, discards the jobs)"
        )
    instance_id = recorded or new_instance_id()
    write_identity(data_dir, instance_id)
    return instance_id
