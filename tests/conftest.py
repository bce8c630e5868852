"""Suite-wide guards and fixtures: the private-network check, node processes, async tests, leaks."""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import socket
import threading
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.launcher import NodeFactory, NodeProcess
from tests.support.leaks import leaked_processes, leaked_tasks, leaked_threads
from tests.support.netlab import Lab, lab_or_skip

# Interfaces tests may create themselves (multi-host tests name their veths and bridges so).
TEST_LINK_PREFIX = "jm"


# --- never on the machine's own network --------------------------------------------------------


def network_interfaces() -> list[str]:
    """Interfaces of the network namespace this process is in.

    `socket.if_nameindex()` asks the kernel about the current namespace; /sys/class/net
    would show the namespace sysfs was mounted in, which after a bare `unshare --net` is
    still the machine's own.
    """
    return sorted(name for _, name in socket.if_nameindex())


def netns_problem() -> str | None:
    """Why this process must not run the tests here, or None when the namespace is private."""
    names = network_interfaces()
    if names == ["lo"]:
        return None
    extra = [n for n in names if n != "lo"]
    if os.environ.get("JOBMESH_NETNS") == "1" and all(n.startswith(TEST_LINK_PREFIX) for n in extra):
        return None
    return (
        f"refusing to run: this network namespace has interfaces {', '.join(names)}, so nodes and mDNS "
        "would reach the machine's own network. Run the suite with scripts/test (it enters a private "
        "namespace), or by hand: unshare --net bash -c 'ip link set lo up; "
        "JOBMESH_NETNS=1 .venv/bin/python -m pytest tests'"
    )


# Under CI=true a skipped test fails the run (see skip_policy).
pytest_plugins = ["tests.skip_policy"]


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = netns_problem()
    if problem is not None:
        pytest.exit(problem, returncode=3)


# --- async tests (no plugin: asyncio.run per test) and leak guards ------------------------------


async def _run_without_leaking_tasks(test: Coroutine[Any, Any, None]) -> None:
    await test
    leaked = await leaked_tasks()
    if leaked:
        pytest.fail(f"the test left asyncio tasks running: {leaked}", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop; fail them if they leave tasks behind."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(_run_without_leaking_tasks(pyfuncitem.obj(**kwargs)))
    return True


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every test: fail it if threads it started are still alive a few seconds after it ends."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before)
    if leaked:
        pytest.fail(f"the test left threads running: {leaked}", pytrace=False)


@pytest.fixture(autouse=True)
def no_process_leaks() -> Iterator[None]:
    """Every test: fail it if worker processes it started (multiprocessing) are still alive after it."""
    before = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    yield
    leaked = leaked_processes(before)
    if leaked:
        pytest.fail(f"the test left processes running: {leaked}", pytrace=False)


# --- node processes ----------------------------------------------------------------------------


def _close(factory: NodeFactory) -> None:
    problems = factory.close()
    if problems:
        pytest.fail("node processes misbehaved:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start node processes for one test; all are stopped (SIGTERM) and checked afterwards."""
    factory = NodeFactory(tmp_path)
    yield factory
    _close(factory)


@pytest.fixture(scope="module")
def module_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Like `nodes`, shared by the tests of one module (use distinct topics per test)."""
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    yield factory
    _close(factory)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the logs of the test's node processes to a failing test's report."""
    report = yield
    if report.failed and isinstance(item, pytest.Function):
        seen: set[int] = set()
        for value in item.funcargs.values():
            candidates = value.nodes if isinstance(value, NodeFactory) else [value]
            for node in candidates:
                if isinstance(node, NodeProcess) and id(node) not in seen and node.log_paths:
                    seen.add(id(node))
                    report.sections.append((f"node {node.data_dir.name} log", node.log_text()))
    return report


# --- the namespace lab -------------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A multi-host network lab (tests.support.netlab) for one test; skips where the kernel has none."""
    with lab_or_skip() as net:
        yield net


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Lab]:
    """Like `lab`, shared by the tests of one module."""
    with lab_or_skip() as net:
        yield net
