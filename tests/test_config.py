"""Configuration: a TOML file, then JOBMESH_* variables, then flags; and what the settings do."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobmesh.v1 import queues_pb2

from node import ConfigError, Durability, Node, NodeConfig, load_config
from tests.support.job_calls import add_job, get_job
from tests.support.launcher import NodeFactory

TOML = """
data_dir = "data"
[jobs]
retries = 3
max_parallel = 4
[journal]
durability = "full"
[[queues]]
name = "imports"
topics = ["import/**"]
type = "ordered"
"""


def test_file_then_environment_then_flags_each_override_the_one_before(tmp_path: Path) -> None:
    config_file = tmp_path / "jobmesh.toml"
    config_file.write_text(TOML)

    from_file = load_config(config_file)
    assert (from_file.jobs.retries, from_file.jobs.max_parallel) == (3, 4)
    assert from_file.journal.durability is Durability.FULL
    assert from_file.data_dir == tmp_path / "data"  # relative to the file, not the cwd
    assert [q.name for q in from_file.queues] == ["imports"]

    with_env = load_config(config_file, {"JOBMESH_JOBS_RETRIES": "5", "JOBMESH_SERVER_PORT": "7799"})
    assert (with_env.jobs.retries, with_env.jobs.max_parallel, with_env.server.port) == (5, 4, 7799)

    with_flags = load_config(config_file, {"JOBMESH_JOBS_RETRIES": "5"}, {"jobs.retries": "7"})
    assert with_flags.jobs.retries == 7


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"jobs.retries": "-2"}, "jobs.retries"),
        ({"server.port": "70000"}, "server.port"),
        ({"jobs.nonsense": "1"}, "unknown setting"),
        ({"journal.durability": "sometimes"}, "journal.durability"),
        ({"queues": '[{"name": "q"}]'}, "needs topic patterns"),
    ],
)
def test_invalid_settings_are_refused_with_a_message_naming_them(
    overrides: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, {}, overrides)


def test_a_node_runs_with_the_settings_of_its_config_file(nodes: NodeFactory, tmp_path: Path) -> None:
    # Given a node started with --config (the file's data_dir is overridden by the harness)
    config_file = tmp_path / "node.toml"
    config_file.write_text(TOML.replace('data_dir = "data"\n', ""))
    node = nodes.start("configured", extra_args=["--config", str(config_file)])

    # Then its jobs get the file's retries and its queues include the file's queue
    assert get_job(node.stub, add_job(node.stub, "any/topic")).max_retries == 3
    queues = node.queues.ListQueues(queues_pb2.ListQueuesRequest()).queues
    assert {(q.config.name, q.source) for q in queues} >= {("imports", queues_pb2.QUEUE_SOURCE_CONFIG)}


async def test_durability_full_makes_every_commit_synchronous(tmp_path: Path) -> None:
    config = NodeConfig.for_tests(tmp_path).with_overrides({"journal.durability": "full"})
    async with Node(config) as node:
        (synchronous,) = await node.journal.write(lambda c: c.execute("PRAGMA synchronous").fetchone())
        assert synchronous == 2  # FULL: fsync at each commit
    async with Node(NodeConfig.for_tests(tmp_path)) as node:
        (synchronous,) = await node.journal.write(lambda c: c.execute("PRAGMA synchronous").fetchone())
        assert synchronous == 1  # NORMAL (the default)
