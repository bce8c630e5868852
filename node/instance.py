"""This node's identity and its hold on the data directory."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node.errors import DataDirInUse

LOCK_FILE = "lock"
RUN_FILE = "node.json"


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
        """Take the lock or raise DataDirInUse naming the holder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open while locked
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
