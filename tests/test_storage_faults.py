"""A full or failing disk: the right status, reads keep working, writes resume by themselves.

The node's data dir lies on a small tmpfs. scripts/test runs the suite in a private mount
namespace, so the mount (and filling or remounting it) touches nothing of the machine.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from node.errors import JournalFull, StorageUnavailable
from node.journal.faults import storage_fault
from node.services.status import status_for
from tests.support.job_calls import add_job, get_job
from tests.support.launcher import NodeFactory, NodeProcess

DISK_BYTES = 8 * 1024 * 1024
PAYLOAD = b"p" * 32 * 1024


def in_private_mount_namespace() -> bool:
    """scripts/netns.sh sets JOBMESH_NETNS=1 in the network and mount namespaces it makes."""
    return os.environ.get("JOBMESH_NETNS") == "1"


class SmallDisk:
    """A tmpfs of `DISK_BYTES` at `path`."""

    def __init__(self, path: Path) -> None:
        path.mkdir()
        self.path = path
        self._mount("-t", "tmpfs", "-o", f"size={DISK_BYTES}", "jm-disk")

    def _mount(self, *options: str) -> None:
        subprocess.run(["mount", *options, str(self.path)], check=True, capture_output=True, timeout=10)

    def fill(self, leave_bytes: int) -> None:
        """Write a filler file that leaves about `leave_bytes` free."""
        stat = os.statvfs(self.path)
        with open(self.path / "filler", "wb") as filler:
            filler.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))

    def free_up(self) -> None:
        """Remove the filler file."""
        (self.path / "filler").unlink()

    def close(self) -> None:
        subprocess.run(["umount", "--lazy", str(self.path)], check=False, capture_output=True, timeout=10)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if not in_private_mount_namespace():
        pytest.skip("needs a private mount namespace: run the suite with scripts/test")
    small = SmallDisk(tmp_path / "disk")
    yield small
    small.close()


def start_on(nodes: NodeFactory, disk: SmallDisk) -> NodeProcess:
    return nodes.start("on-tmpfs", data_dir=disk.path / "node", settings={"jobs.max_payload_bytes": 1 << 20})


def test_a_full_disk_is_resource_exhausted_reads_work_and_adds_resume_once_freed(
    nodes: NodeFactory, disk: SmallDisk
) -> None:
    node = start_on(nodes, disk)
    acknowledged = [add_job(node.stub, "faults/full", PAYLOAD) for _ in range(5)]

    # When the disk fills up
    disk.fill(leave_bytes=64 * 1024)
    errors = []
    for _ in range(20):
        try:
            acknowledged.append(add_job(node.stub, "faults/full", PAYLOAD))
        except grpc.RpcError as e:
            errors.append(e)
    # Then adds fail with RESOURCE_EXHAUSTED saying what to do, and every acknowledged job reads
    assert errors, "the disk never filled up"
    assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "the journal's disk is full; free space in" in errors[0].details()
    assert all(get_job(node.stub, job_id).id == job_id for job_id in acknowledged)

    # When space is freed, adds work again without a restart
    disk.free_up()
    acknowledged.append(add_job(node.stub, "faults/full", PAYLOAD))

    # And nothing acknowledged is lost across a restart; the fault was logged once, not per call
    node.restart()
    assert all(get_job(node.stub, job_id).id == job_id for job_id in acknowledged)
    log = node.log_text()
    assert log.count("journal writes are failing") == 1
    assert "journal writes work again" in log
    assert "Traceback" not in log


def real_error(path: Path, *, readonly: bool = False, max_pages: int = 0) -> sqlite3.Error:
    """The error SQLite itself raises for a write to a read-only or a full database."""
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True)
    try:
        if max_pages:
            conn.execute(f"PRAGMA max_page_count = {max_pages}")
        conn.execute("INSERT INTO t VALUES (zeroblob(1000000))")
        conn.commit()
    except sqlite3.Error as e:
        return e
    finally:
        conn.close()
    raise AssertionError("the write succeeded")


def test_storage_errors_map_to_the_status_a_caller_can_act_on(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"

    full = storage_fault(real_error(journal, max_pages=2), journal)
    read_only = storage_fault(real_error(journal, readonly=True), journal)

    assert isinstance(full, JournalFull)
    assert status_for(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"free space in {tmp_path}" in str(full)
    assert isinstance(read_only, StorageUnavailable)
    assert status_for(read_only) == grpc.StatusCode.UNAVAILABLE
    assert str(journal) in str(read_only)
    assert storage_fault(sqlite3.IntegrityError("UNIQUE constraint failed"), journal) is None
    assert storage_fault(ValueError("not sqlite"), journal) is None
