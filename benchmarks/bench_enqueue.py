"""One-at-a-time enqueue as a user does it: `JobmeshClient.add_job` (one SubmitJobs stream)
against a unary AddJob per job and against a no-op unary call (the transport's own limit), on
one real node process, in the same run.

    benchmarks/run-enqueue [--jobs 5000] [--runs 3] [--producers 32]

Cells (jobs/s; each run a fresh node, topic without consumer, medians and min-max of runs):
  noop unary        Health.Check one at a time (what one unary round trip costs here)
  AddJob unary      jobs_pb2_grpc AddJob one at a time
  add_job stream    JobmeshClient.add_job one at a time (the SubmitJobs stream)
  AddJob unary xP   P threads, each AddJob one at a time
  add_job stream xP P threads sharing one JobmeshClient
  echo stream       the same client code (node/submitter.py) against a server that answers each
                    request at once (benchmarks/submit_echo.py, plaintext): the transport's limit
  echo stream xP    P threads sharing it
  echo + hop        the echo answering after a round trip to a thread (as to the journal writer)
  echo + commit     ... after that thread committed one SQLite row (benchmarks/submit_echo.py)

The report gives `add_job stream` against the issue's targets: 2,000 jobs/s one at a time and
80% of the echo stream in the same run; 6,000 jobs/s with P producers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from benchmarks.submit_echo import EchoServer
from node.client import JobmeshClient
from tests.support.launcher import NodeProcess, shared_cluster
from tests.support.protos import new_job

TOPIC = "bench/enqueue"


def rate(count: int, producers: int, add: Callable[[int], object]) -> float:
    """Jobs/s of `producers` threads each calling `add` count/producers times."""
    share = count // producers
    threads = [threading.Thread(target=lambda: [add(n) for n in range(share)]) for _ in range(producers)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * producers / (time.perf_counter() - began)


def one_run(work: Path, jobs: int, producers: int) -> dict[str, float]:
    node = NodeProcess(
        Path(tempfile.mkdtemp(dir=work)),
        work,
        [],
        extra_args=["--log-level", "WARNING"],
        cluster=shared_cluster(work),
    )
    node.start()
    try:
        transport = node.client_transport()
        channel = transport.create_sync_channel(node.address)
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        request = jobs_pb2.AddJobRequest(job=new_job(TOPIC))
        check = health_pb2.HealthCheckRequest()
        with JobmeshClient(node.address, transport=transport) as client:
            client.add_job(TOPIC)  # open the stream
            stub.AddJob(request)
            cells = {
                "noop unary": rate(jobs, 1, lambda _n: health.Check(check)),
                "AddJob unary": rate(jobs, 1, lambda _n: stub.AddJob(request)),
                "add_job stream": rate(jobs, 1, lambda _n: client.add_job(TOPIC)),
                f"AddJob unary x{producers}": rate(jobs * 2, producers, lambda _n: stub.AddJob(request)),
                f"add_job stream x{producers}": rate(jobs * 2, producers, lambda _n: client.add_job(TOPIC)),
            }
        channel.close()
        job = new_job(TOPIC)
        with EchoServer() as echo:
            echo.add(job)
            cells["echo stream"] = rate(jobs, 1, lambda _n: echo.add(job))
            cells[f"echo stream x{producers}"] = rate(jobs * 2, producers, lambda _n: echo.add(job))
        for mode in ("hop", "commit"):
            with EchoServer(mode) as echo:
                echo.add(job)
                cells[f"echo + {mode}"] = rate(jobs, 1, lambda _n: echo.add(job))
        return cells
    finally:
        node.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--producers", type=int, default=32)
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.runs):
            runs.append(one_run(Path(tmp), args.jobs, args.producers))
            print(
                f"run {number + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in runs[-1].items()),
                file=sys.stderr,
            )
    print(f"| cell (jobs/s, {args.jobs:,} jobs, {args.runs} runs) | median | min-max | vs AddJob unary |")
    print("|---|---|---|---|")
    unary = statistics.median(r["AddJob unary"] for r in runs)
    for cell in runs[0]:
        values = [r[cell] for r in runs]
        median = statistics.median(values)
        print(f"| {cell} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {median / unary:.2f}x |")
    one = statistics.median(r["add_job stream"] for r in runs)
    many = statistics.median(r[f"add_job stream x{args.producers}"] for r in runs)
    echo = statistics.median(r["echo stream"] for r in runs)
    print(f"\n- one at a time: {one:,.0f} jobs/s (target 2,000: {'PASS' if one >= 2000 else 'FAIL'})")
    share = one / echo
    print(
        f"- one at a time against the echo stream: {share:.0%} (target 80%: {'PASS' if share >= 0.8 else 'FAIL'})"
    )
    verdict = "PASS" if many >= 6000 else "FAIL"
    print(f"- {args.producers} producers: {many:,.0f} jobs/s (target 6,000: {verdict})")


if __name__ == "__main__":
    main()
