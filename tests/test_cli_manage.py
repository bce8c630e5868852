"""`jobmesh queue/property/topology/workers` against a real node, and the errors a user meets."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from jobmesh.v1 import workers_pb2, workers_pb2_grpc

from node.cli import build_parser
from node.cli.common import EXIT_BY_STATUS, EXIT_CODES
from tests.cli_support import credentials, failed, jobmesh, ok, ok_json
from tests.support.job_calls import rpc_error
from tests.support.launcher import TESTS_DIR, NodeFactory, NodeProcess
from tests.support.waiting import wait_for
from tests.support.worker_stream import WorkerStream

README = TESTS_DIR.parent / "README.md"


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> NodeProcess:
    return module_nodes.start("cli-manage", extra_args=["--name", "cli-manage"])


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return jobmesh(*args, "--node", node.address, env=credentials(node))


@pytest.fixture
def workers(node: NodeProcess) -> Iterator[list[WorkerStream]]:
    """Remote workers a test connects; closed afterwards."""
    streams: list[WorkerStream] = []
    yield streams
    for stream in streams:
        stream.cancel()


def test_queue_set_creates_then_changes_only_the_settings_given(node: NodeProcess) -> None:
    created = ok_json(
        cli(
            node,
            "queue",
            "set",
            "cliq",
            "--topic",
            "cliq/**",
            "--type",
            "ordered",
            "--retries",
            "2",
            "--json",
        )
    )
    assert created["config"]["topics"] == ["cliq/**"]
    assert (created["config"]["type"], created["config"]["retries"], created["source"]) == (
        "ORDERED",
        2,
        "API",
    )
    ok(
        cli(
            node,
            "queue",
            "set",
            "cliq",
            "--retry-delay",
            "1.5",
            "--no-keep-jobs",
            "--attempt-timeout",
            "30",
            "--sync-isolation",
            "process",
        )
    )
    shown = ok_json(cli(node, "queue", "show", "cliq", "--json"))["config"]
    assert (shown["type"], shown["retries"], shown["topics"], shown["keep_jobs"]) == (
        "ORDERED",
        2,
        ["cliq/**"],
        False,
    )
    assert shown["retry_delay"] == 1.5
    assert shown["timeout"] == 30.0
    assert shown["sync_isolation"] == "PROCESS"
    text = ok(cli(node, "queue", "show", "cliq"))
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert (fields["name"], fields["state"], fields["type"], fields["retries"]) == (
        "cliq",
        "running",
        "ORDERED",
        "2",
    )
    suspended = ok_json(cli(node, "queue", "suspend", "cliq", "--json"))
    assert suspended["suspended"] is True
    assert "cliq" in ok(cli(node, "queues"))
    one = cli(node, "queues", "--limit", "1")
    assert len(ok(one).splitlines()) == 2  # header + main
    assert one.stderr.startswith("(1 of 2 shown; --all for all")
    assert len(ok_json(cli(node, "queues", "--all", "--json"))["queues"]) == 2


def test_queue_show_of_an_unknown_queue_is_not_found(node: NodeProcess) -> None:
    assert failed(cli(node, "queue", "show", "nope"), 3) == (
        "jobmesh queue show: no queue named 'nope'; `jobmesh queues` lists them"
    )


def test_property_set_and_unset_show_in_topology_wide(node: NodeProcess) -> None:
    assert ok_json(cli(node, "property", "set", "rack", "r7", "--json"))["properties"]["rack"] == "r7"

    def wide() -> str | None:
        text = ok(cli(node, "topology", "--wide"))
        return text if "rack=r7" in text else None

    table = wait_for(wide, 10, "the property in topology --wide")
    assert table.splitlines()[0].split()[-1] == "PROPERTIES"
    assert "rack=r7" not in ok(cli(node, "topology"))
    instance = ok_json(cli(node, "topology", "--json"))["instances"][0]
    assert instance["properties"]["rack"] == "r7"
    assert "rack" not in ok_json(cli(node, "property", "unset", "rack", "--json"))["properties"]
    (line,) = ok(cli(node, "topology", "--watch", "--events", "1", "--json")).splitlines()
    event = json.loads(line)
    assert (event["type"], event["new_view"]["instances"][0]["name"]) == ("INIT", "cli-manage")


def test_workers_lists_connected_workers_with_their_jobs_in_flight(
    node: NodeProcess, workers: list[WorkerStream]
) -> None:
    workers.append(WorkerStream.connect(node.channel, "cliw/**", "cliw2/*", concurrency=3, name="resizer"))
    ok(cli(node, "add", "cliw/a"))
    workers[0].expect("assignment")
    listing = ok_json(cli(node, "workers", "--json"))
    assert listing["total_size"] == 1
    (worker,) = listing["workers"]
    assert worker == {
        "worker_id": workers[0].registered.worker_id,  # type: ignore[union-attr]
        "name": "resizer",
        "topics": ["cliw/**", "cliw2/*"],
        "concurrency": 3,
        "in_flight": 1,
    }
    rows = ok(cli(node, "workers")).splitlines()
    assert rows[0].split() == ["WORKER", "NAME", "TOPICS", "CONCURRENCY", "IN", "FLIGHT"]
    assert rows[1].split()[1:] == ["resizer", "cliw/**,cliw2/*", "3", "1"]


def test_list_workers_pages_by_connection(node: NodeProcess, workers: list[WorkerStream]) -> None:
    for name in ("p1", "p2", "p3"):
        workers.append(WorkerStream.connect(node.channel, "clipage/**", name=name))
    stub = workers_pb2_grpc.WorkerServiceStub(node.channel)
    first = stub.ListWorkers(workers_pb2.ListWorkersRequest(page_size=2), timeout=10)
    assert [w.name for w in first.workers] == ["p1", "p2"]
    assert first.total_size == 3
    rest = stub.ListWorkers(
        workers_pb2.ListWorkersRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [w.name for w in rest.workers] == ["p3"]
    assert rest.next_page_token == ""
    paged = ok_json(cli(node, "workers", "--limit", "1", "--json"))
    assert [w["name"] for w in paged["workers"]] == ["p1"]
    more = ok_json(cli(node, "workers", "--page-token", paged["next_page_token"], "--json"))
    assert [w["name"] for w in more["workers"]] == ["p2", "p3"]
    bad = rpc_error(lambda: stub.ListWorkers(workers_pb2.ListWorkersRequest(page_token="x"), timeout=10))
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token 'x' is malformed" in (bad.details() or "")


def test_unparsable_node_addresses_are_usage_errors() -> None:
    assert "is not HOST:PORT" in jobmesh("jobs", "--node", "nohost").stderr
    assert jobmesh("jobs", "--node", "nohost").returncode == 2
    line = failed(jobmesh("jobs", env={"JOBMESH_NODE": "a:b:c"}), 2)
    assert line == "jobmesh jobs: $JOBMESH_NODE 'a:b:c' is not HOST:PORT; write e.g. 127.0.0.1:7710"


def test_an_unreachable_node_is_exit_4_after_the_timeout() -> None:
    line = failed(jobmesh("stats", "--node", "127.0.0.1:1", "--timeout", "1"), 4)
    assert line.startswith("jobmesh stats: no node answered at 127.0.0.1:1 within 1s")


def test_timeout_waits_for_a_node_that_is_still_starting(nodes: NodeFactory) -> None:
    # Given a client started before its node, on a port chosen now
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, "-m", "node", "stats", "--node", f"127.0.0.1:{port}", "--timeout", "30", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The node does not exist yet: the client trusts (and holds a token of) its cluster's CA.
        env={**os.environ, "JOBMESH_DATA_DIR": str(nodes.cluster), "JOBMESH_PROFILE": os.devnull},
    )
    try:
        assert client.stderr is not None
        assert "waiting up to 30s for a node at" in client.stderr.readline()
        # When the node starts only then
        nodes.start("late", extra_args=["--port", str(port), "--host", "127.0.0.1"])
        # Then the client gets its answer
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0
        assert "global" in out
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()


def test_an_unknown_instance_in_topics_is_not_found(node: NodeProcess) -> None:
    line = failed(cli(node, "topics", "disable", "a/b", "--instance", "ghost"), 3)
    assert "no live instance with id or name 'ghost'" in line


def test_an_invalid_topic_pattern_is_named_once(node: NodeProcess) -> None:
    line = failed(cli(node, "topics", "disable", "a//b"), 2)
    assert line.count("a//b") == 1, line


def test_a_missing_payload_file_says_so(node: NodeProcess, tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    assert failed(cli(node, "add", "x/y", "--payload", str(missing)), 2) == (
        f"jobmesh add: cannot read payload file {missing}: no such file"
    )


def test_not_found_job_is_exit_3(node: NodeProcess) -> None:
    assert failed(cli(node, "job", "01a00000-0000-7000-8000-000000000000"), 3).startswith("jobmesh job: ")


# Commands that work on a data dir (--data-dir), not on a node they dial.
DATA_DIR_COMMANDS = frozenset({"run", "cluster", "token", "check"})


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def _leaf_commands() -> list[list[str]]:
    """Every client command and action, with its required positional arguments filled in."""
    commands: list[list[str]] = []
    for name, command in _subcommands(build_parser()).items():
        leaves = _subcommands(command) or {"": command}
        for action, leaf in leaves.items():
            required = [a for a in leaf._positionals._group_actions if a.nargs is None]
            commands.append([name, *([action] if action else []), *["X"] * len(required)])
    return [c for c in commands if c[0] not in DATA_DIR_COMMANDS]


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_client_command_takes_node_timeout_and_json_after_it(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--node", "10.1.2.3:7710", "--timeout", "3", "--json"])
    assert (args.node, args.timeout, args.json) == ("10.1.2.3:7710", 3.0, True)


def test_version_and_help_tell_the_exit_codes() -> None:
    assert ok(jobmesh("--version")).startswith("jobmesh ")
    help_text = ok(jobmesh("--help"))
    for code, meaning in EXIT_CODES:
        assert f"{code:>3}  {meaning}" in help_text


def test_every_status_maps_to_a_documented_exit_code_and_the_readme_lists_them() -> None:
    documented = {code for code, _ in EXIT_CODES}
    assert set(EXIT_BY_STATUS.values()) <= documented
    readme = README.read_text()
    for code, _ in EXIT_CODES:
        assert f"| `{code}` |" in readme, f"README lacks exit code {code}"
