"""`jobmesh run --detach`, `scripts/stop`, `scripts/shell`, and clients that wait for a starting node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.transport import client_transport
from tests.dev_scripts import (
    SCRIPTS,
    describe,
    jobmesh,
    net_namespace,
    pid_running,
    read_run_file,
    run,
    script_env,
    stopping_detached_nodes,
)


def health(address: str, data_dir: Path, timeout: float = 5.0) -> int:
    """The node's overall health status, asked once without waiting for a connection (over TLS,
    trusting the CA in the node's data dir)."""
    transport = client_transport({"JOBMESH_DATA_DIR": str(data_dir), "JOBMESH_PROFILE": os.devnull})
    with transport.create_sync_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        return int(stub.Check(request, timeout=timeout, wait_for_ready=False).status)


def test_detach_returns_once_the_node_serves_and_says_where_it_is_and_how_to_stop_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with stopping_detached_nodes(data_dir):
        # When a node is started detached
        result = jobmesh("run", "--detach", "--test-preset", "--data-dir", data_dir, cwd=tmp_path)
        assert result.returncode == 0, describe(result)

        # Then it serves the moment the command returns, in a session of its own
        info = read_run_file(data_dir)
        assert info is not None, describe(result)
        pid, address = int(info["pid"]), str(info["address"])
        assert health(address, data_dir) == health_pb2.HealthCheckResponse.SERVING
        assert pid_running(pid)
        assert os.getsid(pid) == pid
        # And the summary names its address, PID, data dir, log and how to stop it
        log = data_dir.resolve() / "node.log"
        for line in (
            f"address     {address}",
            f"bound to    {info['bound']}",
            f"advertised  {', '.join(info['advertised'])}",
            f"pid         {pid}",
            f"data dir    {data_dir.resolve()}",
            f"log         {log}",
            f"stop it     kill {pid}",
        ):
            assert line in result.stdout, describe(result)
        assert "serving: bound to 127.0.0.1:" in log.read_text()

        # When scripts/stop is run for that data dir
        stopped = run([SCRIPTS / "stop", "--data-dir", data_dir], tmp_path)
        assert stopped.returncode == 0, describe(stopped)
        # Then the node has shut down gracefully and is gone
        assert f"stopped node PID {pid}" in stopped.stdout
        assert not pid_running(pid)
        assert read_run_file(data_dir) is None
        assert "jobmesh: stopped" in log.read_text()

        # And with no node there, stop and shell say so with exit 4
        again = run([SCRIPTS / "stop", "--data-dir", data_dir], tmp_path)
        assert again.returncode == 4, describe(again)
        assert f"no node is running on data dir {data_dir}" in again.stderr
        shell = run([SCRIPTS / "shell", "--data-dir", data_dir, "true"], tmp_path)
        assert shell.returncode == 4, describe(shell)


def test_detach_reports_a_node_that_cannot_start_with_its_log_and_exit_code(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with stopping_detached_nodes(data_dir):
        result = jobmesh(
            "run", "--detach", "--test-preset", "--data-dir", data_dir,
            "--consumer", "demo/**=no_such_module:handler",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode not in (0, None), describe(result)
        assert f"the node exited (code {result.returncode}) before it served" in result.stderr
        assert "no_such_module" in result.stderr, describe(result)
        assert read_run_file(data_dir) is None


def test_detach_refuses_a_data_dir_another_node_runs_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with stopping_detached_nodes(data_dir):
        first = jobmesh("run", "--detach", "--test-preset", "--data-dir", data_dir, cwd=tmp_path)
        assert first.returncode == 0, describe(first)
        pid = int((read_run_file(data_dir) or {})["pid"])

        second = jobmesh("run", "--detach", "--test-preset", "--data-dir", data_dir, cwd=tmp_path)
        assert second.returncode == 75, describe(second)  # EX_TEMPFAIL: the data dir is taken
        assert f"is in use by pid {pid}" in second.stderr
        # The first node is untouched
        assert pid_running(pid)
        assert int((read_run_file(data_dir) or {})["pid"]) == pid


def test_a_configuration_error_fails_at_once_without_starting_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = jobmesh(
        "run", "--detach", "--test-preset", "--data-dir", data_dir, "--set", "jobs.max_parallel=lots",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 78, describe(result)
    assert "configuration error" in result.stderr
    assert not (data_dir / "node.log").exists()


def test_a_node_in_a_private_namespace_is_reached_through_scripts_shell(tmp_path: Path) -> None:
    data_dir = tmp_path / ".jobmesh"
    second_dir = tmp_path / "second"
    env = script_env(JOBMESH_PRIVATE_NETNS="1", SHELL="/bin/bash")
    with stopping_detached_nodes(data_dir, second_dir):
        # Given a detached node in a network namespace of its own
        started = run([SCRIPTS / "run", "--detach", "--test-preset"], tmp_path, env)
        assert started.returncode == 0, describe(started)
        assert "reach it with scripts/shell" in started.stdout
        info = read_run_file(data_dir)
        assert info is not None
        pid, address = int(info["pid"]), str(info["address"])
        assert net_namespace(pid) != net_namespace()
        # which nothing in this namespace reaches
        unreachable = run(
            [sys.executable, "-c", f"import grpc; grpc.channel_ready_future(grpc.insecure_channel({address!r})).result(timeout=1)"],
            tmp_path,
        )  # fmt: skip
        assert unreachable.returncode != 0

        # When jobmesh runs through scripts/shell
        added = run([SCRIPTS / "shell", "jobmesh", "add", "demo/private", "n:int=7"], tmp_path, env)
        assert added.returncode == 0, describe(added)
        job_id = added.stdout.strip()
        listed = run([SCRIPTS / "shell", "jobmesh", "jobs", "--json"], tmp_path, env)
        assert listed.returncode == 0, describe(listed)
        assert job_id in listed.stdout
        # And an interactive scripts/shell runs what it reads inside the node's namespace
        interactive = run(
            [SCRIPTS / "shell"], tmp_path, env, stdin=f"readlink /proc/self/ns/net\njobmesh job {job_id}\n"
        )
        assert interactive.returncode == 0, describe(interactive)
        assert net_namespace(pid) in interactive.stdout
        assert job_id in interactive.stdout
        # And from another directory, --data-dir names the node
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        found = run([SCRIPTS / "shell", "--data-dir", data_dir, "jobmesh", "job", job_id], elsewhere, env)
        assert found.returncode == 0, describe(found)

        # And a node started through scripts/shell runs in the same namespace
        second = run(
            [SCRIPTS / "shell", SCRIPTS / "run", "--detach", "--test-preset", "--data-dir", second_dir],
            tmp_path,
            env,
        )
        assert second.returncode == 0, describe(second)
        second_pid = int((read_run_file(second_dir) or {})["pid"])
        assert net_namespace(second_pid) == net_namespace(pid)

        # Then scripts/stop stops them from outside the namespace
        for directory, node_pid in ((second_dir, second_pid), (data_dir, pid)):
            stopped = run([SCRIPTS / "stop", "--data-dir", directory], tmp_path, env)
            assert stopped.returncode == 0, describe(stopped)
            assert not pid_running(node_pid)


def test_stop_and_shell_do_not_trust_a_node_json_left_by_a_crash(tmp_path: Path) -> None:
    data_dir = tmp_path / ".jobmesh"
    data_dir.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (data_dir / "node.json").write_text(json.dumps({"pid": gone.pid, "address": "127.0.0.1:1"}))
    for script in ("stop", "shell"):
        result = run([SCRIPTS / script], tmp_path)
        assert result.returncode == 4, describe(result)
        assert f"names PID {gone.pid}, which is not a running node" in result.stderr


def test_stop_and_shell_refuse_bad_usage_with_exit_2(tmp_path: Path) -> None:
    for command in (
        ["stop", "--bogus"],
        ["stop", "--timeout", "soon"],
        ["stop", "--data-dir"],
        ["shell", "--data-dir"],
    ):
        result = run([SCRIPTS / command[0], *command[1:]], tmp_path)
        assert result.returncode == 2, describe(result)
        assert f"usage: scripts/{command[0]}" in result.stderr
