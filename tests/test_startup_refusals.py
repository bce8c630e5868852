"""A node that cannot start says why in one line, with an exit code of its own, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.support.job_calls import add_job, get_job, rpc_error
from tests.support.launcher import NodeFactory

RUN = [sys.executable, "-m", "node", "run", "--test-preset"]


def refused(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `jobmesh run` expecting it to refuse to start."""
    run = subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode != 0, run.stderr
    return run


def stopped_node_dir(nodes: NodeFactory, name: str) -> tuple[Path, str, str]:
    """A data dir of a node that ran, holds one job and was stopped: (dir, instance id, job id)."""
    node = nodes.start(name)
    job_id = add_job(node.stub, "refusals/kept")
    instance_id = str(node.info["instance_id"])
    assert node.terminate() == 0
    return node.data_dir, instance_id, job_id


def test_a_data_dir_that_is_a_file_is_refused_with_exit_73(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    run = refused("--data-dir", str(tmp_path / "file"))

    assert run.returncode == 73
    assert run.stderr.strip().endswith("it is a file, not a directory; choose another --data-dir")


def test_a_data_dir_that_cannot_be_created_is_refused_with_exit_73() -> None:
    run = refused("--data-dir", "/proc/jobmesh-data")

    assert run.returncode == 73
    assert "data dir /proc/jobmesh-data cannot be used" in run.stderr


def test_a_data_dir_on_a_read_only_file_system_is_refused_with_exit_73(tmp_path: Path) -> None:
    if os.environ.get("JOBMESH_NETNS") != "1":
        pytest.skip("needs the private mount namespace of scripts/test")
    data = tmp_path / "ro"
    data.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(data), str(data)], check=True, timeout=10)
    try:
        run = refused("--data-dir", str(data))
    finally:
        subprocess.run(["umount", str(data)], check=False, timeout=10)

    assert run.returncode == 73
    assert "it is on a read-only file system" in run.stderr


def test_a_journal_with_a_damaged_header_is_refused_with_exit_74(nodes: NodeFactory) -> None:
    data_dir, _, _ = stopped_node_dir(nodes, "damaged")
    journal = data_dir / "journal.sqlite"
    with sqlite3.connect(journal) as conn:  # everything into the main file, whose header we damage
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    journal.with_name("journal.sqlite-wal").unlink(missing_ok=True)
    with open(journal, "r+b") as f:
        f.write(b"this is no journal")

    run = refused("--data-dir", str(data_dir))

    assert run.returncode == 74
    assert (
        "it is damaged: restore it from a backup, or move it aside with `jobmesh run --reset-journal`"
        in run.stderr
    )


def test_an_empty_journal_in_a_data_dir_with_an_identity_is_refused_then_reset_on_request(
    nodes: NodeFactory,
) -> None:
    data_dir, instance_id, job_id = stopped_node_dir(nodes, "emptied")
    (data_dir / "journal.sqlite").write_bytes(b"")  # what a lost disk or a bad restore leaves

    run = refused("--data-dir", str(data_dir))

    assert run.returncode == 65
    assert f"is missing or empty, but this data dir is instance {instance_id}" in run.stderr

    # When the operator asks for a fresh journal, the node starts with its old id and says so
    node = nodes.start("emptied", data_dir=data_dir, extra_args=["--reset-journal"])
    assert node.info["instance_id"] == instance_id
    assert "--reset-journal: discarded the journal" in node.log_text()
    assert list(data_dir.glob("journal.sqlite.discarded-*")), "the old journal is moved aside, not deleted"
    assert rpc_error(lambda: get_job(node.stub, job_id)).code() == grpc.StatusCode.NOT_FOUND


def test_a_journal_of_another_instance_is_refused_with_exit_65(nodes: NodeFactory) -> None:
    data_dir, instance_id, _ = stopped_node_dir(nodes, "mixed")
    (data_dir / "instance.json").write_text(json.dumps({"instance_id": "someone-else"}))

    run = refused("--data-dir", str(data_dir))

    assert run.returncode == 65
    assert (
        f"belongs to instance {instance_id}, but the data dir's instance.json says someone-else" in run.stderr
    )


def test_a_port_in_use_is_refused_with_exit_75_naming_port_and_host(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        run = refused("--data-dir", str(tmp_path / "d"), "--port", str(port))

    assert run.returncode == 75
    assert (
        run.stderr.strip().splitlines()[-1]
        == f"jobmesh run: port {port} on 127.0.0.1 is in use (another node?); choose --port"
    )


def test_a_console_port_in_use_is_refused_with_exit_75_naming_port_and_host(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        run = refused("--data-dir", str(tmp_path / "d"), "--host", "127.0.0.1", "--set", f"http.port={port}")

    assert run.returncode == 75
    assert run.stderr.strip().splitlines()[-1] == (
        f"jobmesh run: console port {port} on 127.0.0.1 is in use (another node?); "
        "choose --set http.port=N (0: any free port), or --set http.enabled=false"
    )


def test_a_node_made_before_the_identity_file_existed_starts_and_records_it(nodes: NodeFactory) -> None:
    data_dir, instance_id, job_id = stopped_node_dir(nodes, "older")
    (data_dir / "instance.json").unlink()

    node = nodes.start("older", data_dir=data_dir)

    assert node.info["instance_id"] == instance_id
    assert get_job(node.stub, job_id).id == job_id
    assert json.loads((data_dir / "instance.json").read_text()) == {"instance_id": instance_id}
