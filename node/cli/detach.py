"""`jobmesh run --detach`: start the node in the background and return once it serves.

The command forks: the child becomes the node (its own session, output appended to
`<data dir>/node.log`), the parent waits until that child has written `node.json` and
answers the standard health check with SERVING, then prints where it is and how to stop
it. If the child dies first, the parent prints the new part of its log and exits with the
child's code, so a script can trust `jobmesh run --detach && jobmesh add ...`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.instance import RUN_FILE, unusable_data_dir
from node.transport import client_transport

LOG_FILE = "node.log"
# A node starts in about a second; a loaded machine may need much longer.
READY_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
HEALTH_CALL_TIMEOUT_S = 1.0
EXIT_FAILED = 1
EXIT_INTERNAL = 70
EXIT_CANTCREAT = 73  # as `jobmesh run` for an unusable data dir


def start_detached(data_dir: Path, run: Callable[[], int]) -> int:
    """Run `run()` (the node, returning its exit code) in a detached child; wait until it serves.

    The summary goes to stdout; why the node did not come up goes to stderr.
    """
    data_dir = data_dir.resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"jobmesh run: {unusable_data_dir(data_dir, e)}", file=sys.stderr)
        return EXIT_CANTCREAT
    log_path = data_dir / LOG_FILE
    log_start = log_path.stat().st_size if log_path.exists() else 0
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the node: never returns
        _become_node(log_path, run)
    return _wait_until_serving(pid, data_dir, log_path, log_start)


def _become_node(log_path: Path, run: Callable[[], int]) -> None:
    """In the child: leave the terminal's session, log to the file, run, and exit."""
    code = EXIT_INTERNAL
    try:
        os.setsid()  # no SIGHUP when the terminal closes, no SIGINT from its Ctrl-C
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null_fd)
        code = run()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_run_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _serving(address: str, data_dir: Path) -> bool:
    """True when the node at `address` answers the health check with SERVING (over TLS with the
    CA in its data dir, unless it serves plaintext)."""
    environ = {**os.environ, "JOBMESH_DATA_DIR": str(data_dir)}
    channel = client_transport(environ).create_sync_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        # Fail fast while the child is still binding: the loop around this checks that it lives.
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_CALL_TIMEOUT_S, wait_for_ready=False
        )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _wait_until_serving(pid: int, data_dir: Path, log_path: Path, log_start: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            print(
                f"jobmesh run --detach: the node exited (code {code}) before it served; its log:",
                file=sys.stderr,
            )
            with log_path.open("rb") as log:
                log.seek(log_start)
                sys.stderr.write(log.read().decode(errors="replace"))
            return code if code > 0 else EXIT_FAILED
        info = _read_run_file(data_dir)
        if info is not None and info.get("pid") == pid and _serving(str(info["address"]), data_dir):
            _print_summary(info, data_dir, log_path, sys.stdout)
            return 0
        if time.monotonic() >= deadline:
            print(
                f"jobmesh run --detach: the node (PID {pid}) is not serving after {READY_TIMEOUT_S:.0f}s; "
                f"it is still running: see {log_path}, stop it with kill {pid}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        time.sleep(POLL_INTERVAL_S)


def _print_summary(info: dict[str, Any], data_dir: Path, log_path: Path, out: TextIO) -> None:
    advertised = ", ".join(info.get("advertised") or []) or "-"
    pid = info["pid"]
    out.write(
        f"jobmesh node {info.get('name', '')} is serving in the background\n"
        f"  address     {info['address']}  (what clients on this host dial)\n"
        f"  bound to    {info.get('bound', '-')}\n"
        f"  advertised  {advertised}  (what peers dial)\n"
        f"  pid         {pid}\n"
        f"  data dir    {data_dir}\n"
        f"  log         {log_path}\n"
        f"  stop it     kill {pid}  (graceful; or scripts/stop in a checkout)\n"
    )
    out.flush()
