"""Jobmesh "Node foundation" benchmark: one real node process, driven over gRPC.

Run it through the wrapper, which sets up .venv and enters a private network namespace
(no benchmark may run in the machine's own one):

    benchmarks/run                      # every scenario, 5 runs each (about 10 minutes)
    benchmarks/run --quick              # small sizes, 2 runs: a smoke test (about 1 minute)
    benchmarks/run --scenarios add,lifecycle --runs 3

Each run of each scenario starts a fresh node (`python -m node run --test-preset` with its
own data dir and `--consumer 'bench/**=benchmarks.consumers:...'`), waits for
`<data-dir>/node.json`, drives it from this process with `grpc.aio`, and stops it with
SIGTERM. Every loop is bounded (sizes and timeouts), so the script always ends.

Scenarios (targets from the "Node foundation" issue; durable = acknowledged after commit):

    add         AddJobs, batches of --batch jobs, --in-flight calls at once, topic with no
                consumer (jobs stay QUEUED); durability normal (target >= 20,000 jobs/s)
                and full (information).
    lifecycle   add -> ACTIVE -> SUCCEEDED with a no-op consumer, sync (thread pool) and
                async (event loop); time from the first AddJobs until FindJobs(SUCCEEDED,
                topic).total_size reaches N, counted ever less often as the end nears
                (targets >= 6,000 jobs/s sync, >= 7,000 async). With lifecycle or events,
                `raw-sqlite` runs too (benchmarks/raw_sqlite.py: insert -> claim -> succeed
                in plain SQLite with the journal's schema and pragmas, batches of 15 and
                1,000) and the report gives the node's rate as a share of it.
    events      the sync lifecycle with a WatchJobs client streaming every event (ADDED,
                STARTED, FINISHED) from a separate connection: its lag behind the journal
                head, sampled every 100 ms, must not grow (target: keeps up with the
                full-lifecycle rate, no backlog growth; target >= 5,000 jobs/s).
    single      AddJob one job per call, 32 calls in flight (information).
    latency     enqueue-to-start latency at a steady --rate of single AddJob calls, from
                before the call: the consumer returns its wall-clock start time as its result
                message, read back with FindJobs, less the time this process took just
                before it called AddJob (one machine, one clock). p50/p99 in ms (targets
                <= 1 ms and <= 3 ms); claim_* is the node's own part (started - created).
    --backlog N runs lifecycle and latency also with N QUEUED jobs on a topic nobody
                consumes, added before the measured part (`...@backlog`), in the same run
                as the empty journal; the report gives backlog / empty ratios (targets:
                lifecycle >= 0.90, AddJob p99 <= 2x, the same latency targets).
    memory      1,000,000 QUEUED jobs: node VmRSS before/after (target: growth <= ~100 MB),
                FindJobs and GetJob latency on that journal (targets <= 50 ms with a
                template, <= 2 ms), and the time a restart takes until it serves, without
                and with a consumer for the backlog (target <= 2 s).

Results: a Markdown table on stdout and a JSON file in benchmarks/results/. The machine
has few, shared cores: look at medians and min/max over runs, not single numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from jobmesh.v1 import jobs_pb2, jobs_pb2_grpc

from benchmarks.raw_sqlite import raw_rate
from node.transport import Transport
from tests.support.launcher import NodeProcess, ProcStats, shared_cluster
from tests.support.protos import new_job
from tests.support.waiting import async_wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONSUMERS = "benchmarks.consumers"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


NODE_FLAGS: list[str] = []
"""Flags every benchmark node gets (`--insecure` with the option of that name)."""


def log(message: str) -> None:
    """Progress on stderr (stdout carries the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the node process ------------------------------------------------------------------------


class BenchNode:
    """A fresh node (its own data dir under `work`) for one run, driven from here over grpc.aio.

    The process itself is the suite's launcher (`tests.support.launcher.NodeProcess`).
    """

    def __init__(
        self, work: Path, consumer: str | None, durability: str = "normal", extra: Sequence[str] = ()
    ):
        data_dir = Path(tempfile.mkdtemp(prefix="node-", dir=work))
        consumers = [f"bench/**={CONSUMERS}:{consumer}"] if consumer else []
        args = ["--durability", durability, "--log-level", "WARNING", *NODE_FLAGS, *extra]
        # Secure by default: every node of a run is of one cluster; clients use its admin token.
        cluster = None if "--insecure" in NODE_FLAGS else shared_cluster(work)
        self.process = NodeProcess(data_dir, work, consumers, extra_args=args, cluster=cluster)
        self.channel: grpc.aio.Channel | None = None
        self._stub: jobs_pb2_grpc.JobServiceStub | None = None

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def stub(self) -> jobs_pb2_grpc.JobServiceStub:
        """A JobService stub on this run's channel."""
        assert self._stub is not None, "the node is not started"
        return self._stub

    async def __aenter__(self) -> BenchNode:
        """Start the node, wait until it serves, and open a channel to it."""
        self.process.spawn()
        try:
            await self.process.async_wait_serving(START_TIMEOUT_S)
            self.channel = self.transport().create_channel(f"127.0.0.1:{self.port}")
            await asyncio.wait_for(self.channel.channel_ready(), START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        self._stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def transport(self) -> Transport:
        """A client transport with the node's local credentials (CA, client certificate, admin token)."""
        return self.process.client_transport()

    def stats(self) -> ProcStats:
        return self.process.stats()

    def journal_bytes(self) -> int:
        return self.process.journal_bytes()

    async def restart_serving_s(self, consumers: Sequence[str]) -> float:
        """Stop the node (SIGTERM), start it again on its data dir with `consumers`, and return
        how long it took from the new process's spawn until it served."""
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        await asyncio.to_thread(self.process.terminate, STOP_TIMEOUT_S)
        self.process.consumers = tuple(consumers)
        t0 = time.perf_counter()
        self.process.spawn()
        await self.process.async_wait_serving(START_TIMEOUT_S)
        return time.perf_counter() - t0

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.process.running:
            try:
                await asyncio.to_thread(self.process.terminate, STOP_TIMEOUT_S)
            except AssertionError:  # it ignored SIGTERM and was killed
                log(f"node {self.process.pid} ignored SIGTERM for {STOP_TIMEOUT_S}s; killed it")
        shutil.rmtree(self.process.data_dir, ignore_errors=True)


# --- requests --------------------------------------------------------------------------------


def bench_job(topic: str, index: int, payload: bytes = b"") -> jobs_pb2.NewJob:
    """A job with two small properties (an int that varies and a string), like a real client's."""
    return new_job(topic, payload, n=index, group=f"g{index % 100}")


def add_requests(
    topic: str, batch: int, distinct: int = 16, payload: bytes = b""
) -> list[jobs_pb2.AddJobsRequest]:
    """A few distinct prebuilt AddJobs requests, cycled by the senders (client cost stays low)."""
    return [
        jobs_pb2.AddJobsRequest(jobs=[bench_job(topic, r * batch + i, payload) for i in range(batch)])
        for r in range(distinct)
    ]


async def send_batches(
    stub: jobs_pb2_grpc.JobServiceStub, requests: list[jobs_pb2.AddJobsRequest], calls: int, in_flight: int
) -> None:
    """`calls` AddJobs calls (cycling `requests`), `in_flight` at a time; raises on any error."""
    next_call = 0

    async def sender() -> None:
        nonlocal next_call
        while next_call < calls:
            request = requests[next_call % len(requests)]
            next_call += 1
            await stub.AddJobs(request, timeout=120)

    await asyncio.gather(*(sender() for _ in range(in_flight)))


async def count(
    stub: jobs_pb2_grpc.JobServiceStub, query_type: jobs_pb2.QueryType.ValueType, topic: str = ""
) -> int:
    response = await stub.FindJobs(
        jobs_pb2.FindJobsRequest(type=query_type, topic=topic, page_size=1), timeout=60
    )
    return int(response.total_size)


def poll_pause(done: int, total: int, elapsed_s: float) -> float:
    """How long to wait before counting again: half the time the rate so far says is left, within
    5 ms .. 0.5 s. Counting costs the node a query, so a fixed 20 ms poll took a sixth of its
    samples in a profile; this counts a few dozen times a run and ends within a few ms of the last job."""
    if done <= 0 or elapsed_s <= 0:
        return 0.05
    left_s = (total - done) / (done / elapsed_s)
    return min(0.5, max(0.005, left_s / 2))


async def succeeded(stub: jobs_pb2_grpc.JobServiceStub, topic: str, total: int, timeout_s: float) -> None:
    """Wait until `total` jobs of `topic` SUCCEEDED (AssertionError after `timeout_s`)."""

    async def done() -> bool:
        return await count(stub, jobs_pb2.QUERY_TYPE_SUCCEEDED, topic) >= total

    await async_wait_for(done, timeout_s, f"{total} jobs of {topic} to succeed")


def micros(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --- scenarios ---------------------------------------------------------------------------------


@dataclass
class Settings:
    work: Path
    runs: int
    memory_runs: int
    add_jobs: int
    batch: int
    in_flight: int
    lifecycle_jobs: int
    single_calls: int
    single_in_flight: int
    latency_rate: float
    latency_seconds: float
    memory_jobs: int
    query_repeats: int
    payload_bytes: int = 0
    """Input payload of each job in the add and lifecycle scenarios (random bytes, 0: none)."""
    backlog: int = 0
    """QUEUED jobs nobody consumes, added before the measured part of the `@backlog` runs."""

    @property
    def payload(self) -> bytes:
        return random.Random(self.payload_bytes).randbytes(self.payload_bytes)


Metrics = dict[str, float]


async def scenario_add(s: Settings, durability: str) -> Metrics:
    async with BenchNode(s.work, None, durability) as node:
        stub = node.stub
        requests = add_requests("idle/add", s.batch, payload=s.payload)
        await send_batches(stub, requests, 2, 2)  # warm-up (connections, threads); not counted
        calls = max(1, s.add_jobs // s.batch)
        cpu0 = node.stats().cpu_s
        t0 = time.perf_counter()
        await send_batches(stub, requests, calls, s.in_flight)
        elapsed = time.perf_counter() - t0
        cpu = node.stats().cpu_s - cpu0
        queued = await count(stub, jobs_pb2.QUERY_TYPE_QUEUED)
        expected = (calls + 2) * s.batch
        if queued != expected:
            raise RuntimeError(f"{queued} jobs QUEUED after adding {expected}")
        jobs = calls * s.batch
        return {"jobs_per_s": jobs / elapsed, "seconds": elapsed, "node_cpu_pct": 100 * cpu / elapsed}


BACKLOG_TOPIC = "idle/backlog"
"""No consumer matches it (theirs is `bench/**`): its jobs stay QUEUED, unassigned."""


async def fill_backlog(stub: jobs_pb2_grpc.JobServiceStub, jobs: int) -> None:
    """Add `jobs` QUEUED jobs on BACKLOG_TOPIC (AddJobs, batches of 1,000, 4 in flight)."""
    if jobs:
        await send_batches(stub, add_requests(BACKLOG_TOPIC, 1000), max(1, jobs // 1000), 4)


async def scenario_lifecycle(s: Settings, consumer: str, backlog: int = 0) -> Metrics:
    async with BenchNode(s.work, consumer) as node:
        stub = node.stub
        topic = "bench/lifecycle"
        await fill_backlog(stub, backlog)
        await send_batches(stub, add_requests("bench/warmup", 100, 1), 1, 1)  # warm-up: 100 jobs
        await succeeded(stub, "bench/warmup", 100, 30)
        requests = add_requests(topic, s.batch, payload=s.payload)
        calls = max(1, s.lifecycle_jobs // s.batch)
        total = calls * s.batch
        timeout_s = max(60.0, total / 200)  # bounded even if the node is very slow
        cpu0 = node.stats().cpu_s
        t0 = time.perf_counter()
        adding = asyncio.create_task(send_batches(stub, requests, calls, s.in_flight))
        added_s = 0.0
        done = 0
        while True:
            if adding.done() and not added_s:
                adding.result()  # raise if adding failed
                added_s = time.perf_counter() - t0
            done = await count(stub, jobs_pb2.QUERY_TYPE_SUCCEEDED, topic)
            if done >= total:
                break
            if time.perf_counter() - t0 > timeout_s:
                adding.cancel()
                raise RuntimeError(f"only {done} of {total} jobs SUCCEEDED after {timeout_s:.0f}s")
            await asyncio.sleep(poll_pause(done, total, time.perf_counter() - t0))
        elapsed = time.perf_counter() - t0
        cpu = node.stats().cpu_s - cpu0
        await adding
        added_s = added_s or elapsed
        failed = await count(stub, jobs_pb2.QUERY_TYPE_CANCELLED)
        if failed:
            raise RuntimeError(f"{failed} jobs did not succeed")
        return {
            "jobs_per_s": total / elapsed,
            "seconds": elapsed,
            "add_phase_jobs_per_s": total / added_s,
            "node_cpu_pct": 100 * cpu / elapsed,
        }


async def scenario_raw_sqlite(s: Settings) -> Metrics:
    """The plain-SQLite ceiling of the lifecycle (benchmarks/raw_sqlite.py), in this run."""
    jobs = max(s.lifecycle_jobs, 1000)
    return {
        "jobs_per_s_batch_15": await asyncio.to_thread(raw_rate, s.work, jobs, 15),
        "jobs_per_s_batch_1000": await asyncio.to_thread(raw_rate, s.work, jobs, 1000),
    }


async def head_seq(stub: jobs_pb2_grpc.JobServiceStub) -> int:
    """The node's newest committed event seq (a live-only watch answers it at once)."""
    call = stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=-1, job_ids=["-"]))
    try:
        async for message in call:
            return int(message.head_seq)
    finally:
        call.cancel()
    raise RuntimeError("WatchJobs ended without a message")


async def scenario_events(s: Settings, consumer: str) -> Metrics:
    """The lifecycle scenario with a WatchJobs client streaming every event; measures its lag."""
    async with BenchNode(s.work, consumer) as node:
        stub = node.stub
        # The watcher has a connection of its own.
        async with node.transport().create_channel(f"127.0.0.1:{node.port}") as watch_channel:
            watch_stub = jobs_pb2_grpc.JobServiceStub(watch_channel)
            topic = "bench/events"
            requests = add_requests(topic, s.batch)
            calls = max(1, s.lifecycle_jobs // s.batch)
            total = calls * s.batch
            expected_events = 3 * total  # ADDED, STARTED, FINISHED per job
            start_seq = await head_seq(stub)
            received = 0
            last_seq = start_seq
            watch = watch_stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=start_seq))

            async def consume() -> None:
                nonlocal received, last_seq
                async for message in watch:
                    if message.gap_until_seq:
                        raise RuntimeError(f"the watcher lost events (gap until {message.gap_until_seq})")
                    received += len(message.events)
                    if message.events:
                        last_seq = message.events[-1].seq
                    if received >= expected_events:
                        return

            watcher = asyncio.create_task(consume())
            lags: list[int] = []
            timeout_s = max(60.0, total / 200)
            t0 = time.perf_counter()
            adding = asyncio.create_task(send_batches(stub, requests, calls, s.in_flight))
            while await count(stub, jobs_pb2.QUERY_TYPE_SUCCEEDED, topic) < total:
                if time.perf_counter() - t0 > timeout_s:
                    raise RuntimeError(f"jobs did not finish within {timeout_s:.0f}s")
                if watcher.done():
                    watcher.result()
                lags.append(await head_seq(stub) - last_seq)
                await asyncio.sleep(0.1)
            jobs_done_s = time.perf_counter() - t0
            await adding
            await asyncio.wait_for(watcher, timeout_s)
            drained_s = time.perf_counter() - t0
            if received != expected_events:
                raise RuntimeError(f"the watcher got {received} events; expected {expected_events}")
            return {
                "jobs_per_s": total / jobs_done_s,
                "events_per_s": received / drained_s,
                "lag_p50_events": percentile(lags, 50),
                "lag_max_events": max(lags) if lags else 0.0,
                "drain_after_last_job_ms": 1000 * (drained_s - jobs_done_s),
            }


async def scenario_single(s: Settings) -> Metrics:
    async with BenchNode(s.work, None) as node:
        stub = node.stub
        request = jobs_pb2.AddJobRequest(job=bench_job("idle/single", 1))
        for _ in range(50):  # warm-up
            await stub.AddJob(request, timeout=30)
        latencies: list[float] = []
        next_call = 0

        async def caller() -> None:
            nonlocal next_call
            while next_call < s.single_calls:
                next_call += 1
                t = time.perf_counter()
                await stub.AddJob(request, timeout=60)
                latencies.append(time.perf_counter() - t)

        cpu0 = node.stats().cpu_s
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(s.single_in_flight)))
        elapsed = time.perf_counter() - t0
        cpu = node.stats().cpu_s - cpu0
        return {
            "calls_per_s": s.single_calls / elapsed,
            "rpc_p50_ms": 1000 * percentile(latencies, 50),
            "rpc_p99_ms": 1000 * percentile(latencies, 99),
            "node_cpu_pct": 100 * cpu / elapsed,
        }


class StreamAdder:
    """Adds jobs over one SubmitJobs stream, as `JobmeshClient.add_job` does: a job is answered
    once committed, answers matched to their requests by request_id."""

    def __init__(self, stub: jobs_pb2_grpc.JobServiceStub) -> None:
        self.call = stub.SubmitJobs()
        self.waiting: dict[int, asyncio.Future[jobs_pb2.SubmitJobsResponse]] = {}
        self.ids = itertools.count(1)
        self.writing = asyncio.Lock()  # one write at a time on a grpc.aio call
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.waiting.pop(response.request_id).set_result(response)

    async def add(self, job: jobs_pb2.NewJob) -> jobs_pb2.Job:
        """The committed job; RuntimeError if the node refused it."""
        request_id = next(self.ids)
        answer = self.waiting[request_id] = asyncio.get_running_loop().create_future()
        async with self.writing:
            await self.call.write(jobs_pb2.SubmitJobsRequest(job=job, request_id=request_id))
        response = await answer
        if response.HasField("error"):
            raise RuntimeError(f"SubmitJobs refused a job: {response.error.message}")
        added: jobs_pb2.Job = response.job
        return added

    async def close(self) -> None:
        """Half-close and wait for the node to end the call."""
        await self.call.done_writing()
        await self.reader


async def scenario_latency(s: Settings, consumer: str, backlog: int = 0, via: str = "unary") -> Metrics:
    """`via`: "unary" (one AddJob call per job) or "stream" (one SubmitJobs stream)."""
    async with BenchNode(s.work, consumer) as node:
        stub = node.stub
        topic = "bench/latency"
        await fill_backlog(stub, backlog)
        warm = jobs_pb2.AddJobRequest(job=bench_job("bench/warmup", 0))
        for _ in range(20):
            await stub.AddJob(warm, timeout=30)
        stream = StreamAdder(stub) if via == "stream" else None
        if stream is not None:
            for _ in range(20):
                await stream.add(warm.job)
        total = int(s.latency_rate * s.latency_seconds)
        jobs = [bench_job(topic, i) for i in range(total)]
        rpc_latencies: list[float] = []
        called_us: dict[str, int] = {}  # job id -> wall clock just before its add call

        async def add(job: jobs_pb2.NewJob) -> None:
            before_us = time.time_ns() // 1000
            t = time.perf_counter()
            if stream is not None:
                added = await stream.add(job)
            else:
                added = (await stub.AddJob(jobs_pb2.AddJobRequest(job=job), timeout=60)).job
            rpc_latencies.append(time.perf_counter() - t)
            called_us[added.id] = before_us

        tasks = []
        t0 = time.perf_counter()
        for i, job in enumerate(jobs):  # open loop: a steady rate, whatever the node does
            delay = t0 + i / s.latency_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(add(job)))
        await asyncio.gather(*tasks)
        achieved_rate = total / (time.perf_counter() - t0)
        if stream is not None:
            await stream.close()
        await succeeded(stub, topic, total, 60)
        start_latencies: list[float] = []  # consumer start - just before the AddJob call
        claim_latencies: list[float] = []  # started_time - created_time (from the journal)
        token = ""
        for _ in range(total // 1000 + 2):
            page = await stub.FindJobs(
                jobs_pb2.FindJobsRequest(
                    type=jobs_pb2.QUERY_TYPE_SUCCEEDED, topic=topic, page_size=1000, page_token=token
                ),
                timeout=60,
            )
            for job in page.jobs:
                start_latencies.append((int(job.result_message) - called_us[job.id]) / 1000)
                claim_latencies.append((micros(job.started_time) - micros(job.created_time)) / 1000)
            token = page.next_page_token
            if not token:
                break
        if len(start_latencies) != total:
            raise RuntimeError(f"read {len(start_latencies)} results, expected {total}")
        return {
            "start_p50_ms": percentile(start_latencies, 50),
            "start_p99_ms": percentile(start_latencies, 99),
            "start_max_ms": max(start_latencies),
            "claim_p50_ms": percentile(claim_latencies, 50),
            "claim_p99_ms": percentile(claim_latencies, 99),
            "add_rpc_p50_ms": 1000 * percentile(rpc_latencies, 50),
            "add_rpc_p99_ms": 1000 * percentile(rpc_latencies, 99),
            "rate_per_s": achieved_rate,
        }


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> tuple[float, Any]:
    """Median milliseconds of `repeats` sequential calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = await call()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), result


async def scenario_memory(s: Settings) -> Metrics:
    async with BenchNode(s.work, None) as node:
        stub = node.stub
        topic = "idle/memory"
        requests = add_requests(topic, s.batch, distinct=100)  # properties n, group (100 groups)
        await send_batches(stub, requests, 1, 1)  # warm-up: one batch, then one query
        await count(stub, jobs_pb2.QUERY_TYPE_QUEUED)
        await asyncio.sleep(0.5)
        before = node.stats()
        calls = max(1, s.memory_jobs // s.batch) - 1
        peak_rss = before.rss_kib
        t0 = time.perf_counter()
        adding = asyncio.create_task(send_batches(stub, requests, calls, s.in_flight))
        while not adding.done():
            peak_rss = max(peak_rss, node.stats().rss_kib)
            await asyncio.wait([adding], timeout=0.5)
        await adding
        add_rate = (calls * s.batch) / (time.perf_counter() - t0)
        total = (calls + 1) * s.batch
        await asyncio.sleep(1.0)
        after_add = node.stats()

        queued_page = jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_QUEUED, page_size=100)
        topic_page = jobs_pb2.FindJobsRequest(type=jobs_pb2.QUERY_TYPE_QUEUED, topic=topic, page_size=100)
        condition = jobs_pb2.PropertyCondition(
            name="group",
            operator=jobs_pb2.COMPARISON_OPERATOR_EQUAL,
            value=jobs_pb2.PropertyValue(string_value="g7"),
        )
        template_page = jobs_pb2.FindJobsRequest(
            type=jobs_pb2.QUERY_TYPE_QUEUED,
            page_size=100,
            templates=[jobs_pb2.PropertyTemplate(conditions=[condition])],
        )
        repeats = s.query_repeats
        queued_ms, first = await timed(lambda: stub.FindJobs(queued_page, timeout=120), repeats)
        if first.total_size != total or len(first.jobs) != 100:
            raise RuntimeError(f"QUEUED total_size {first.total_size}, expected {total}")
        deep_token = first.next_page_token
        for _ in range(9):  # page 11 of 100-job pages (the token continues after a seq)
            deep_token = (
                await stub.FindJobs(
                    jobs_pb2.FindJobsRequest(
                        type=jobs_pb2.QUERY_TYPE_QUEUED, page_size=100, page_token=deep_token
                    ),
                    timeout=120,
                )
            ).next_page_token
        next_page = jobs_pb2.FindJobsRequest(
            type=jobs_pb2.QUERY_TYPE_QUEUED, page_size=100, page_token=deep_token
        )
        next_ms, _ = await timed(lambda: stub.FindJobs(next_page, timeout=120), repeats)
        topic_ms, _ = await timed(lambda: stub.FindJobs(topic_page, timeout=120), repeats)
        template_ms, matched = await timed(
            lambda: stub.FindJobs(template_page, timeout=120), max(3, repeats // 4)
        )
        if matched.total_size != total // 100:
            raise RuntimeError(f"template matched {matched.total_size}, expected {total // 100}")
        job_id = first.jobs[50].id
        get_ms, _ = await timed(
            lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=60), repeats
        )
        after_queries = node.stats()
        # Start-up with the whole backlog in the journal: once as it was (nobody takes the
        # topic), once with a consumer for it (every job then waits for this node's runners).
        restart_idle_s = await node.restart_serving_s([])
        restart_consumed_s = await node.restart_serving_s([f"idle/**={CONSUMERS}:noop"])
        return {
            "rss_before_mb": before.rss_kib / 1024,
            "rss_after_add_mb": after_add.rss_kib / 1024,
            "rss_after_queries_mb": after_queries.rss_kib / 1024,
            "rss_growth_mb": (after_queries.rss_kib - before.rss_kib) / 1024,
            "rss_peak_mb": max(peak_rss, after_queries.hwm_kib) / 1024,
            "journal_mb": node.journal_bytes() / 1e6,
            "add_jobs_per_s": add_rate,
            "find_queued_page_ms": queued_ms,
            "find_queued_page11_ms": next_ms,
            "find_topic_page_ms": topic_ms,
            "find_template_ms": template_ms,
            "get_job_ms": get_ms,
            "restart_serving_s": restart_idle_s,
            "restart_serving_with_consumer_s": restart_consumed_s,
        }


# --- running and reporting ------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    description: str
    runs: list[Metrics] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, key: str) -> tuple[float, float, float]:
        values = [r[key] for r in self.runs]
        return statistics.median(values), min(values), max(values)


@dataclass(frozen=True)
class Target:
    scenario: str
    metric: str
    op: str  # ">=" or "<="
    value: float
    text: str


TARGETS = (
    Target("add-normal", "jobs_per_s", ">=", 20_000, "AddJobs >= 20,000 jobs/s (durability normal)"),
    Target("lifecycle-sync", "jobs_per_s", ">=", 6_000, "add -> SUCCEEDED >= 6,000 jobs/s (sync no-op)"),
    Target("lifecycle-async", "jobs_per_s", ">=", 7_000, "add -> SUCCEEDED >= 7,000 jobs/s (async no-op)"),
    Target("events-watched", "jobs_per_s", ">=", 5_000, "add -> SUCCEEDED with a watcher >= 5,000 jobs/s"),
    Target("latency-sync", "start_p50_ms", "<=", 1, "enqueue->start p50 <= 1 ms at 300 AddJob/s (sync)"),
    Target("latency-sync", "start_p99_ms", "<=", 3, "enqueue->start p99 <= 3 ms at 300 AddJob/s (sync)"),
    Target("latency-stream", "start_p50_ms", "<=", 1, "enqueue->start p50 <= 1 ms at 300 jobs/s (stream)"),
    Target("latency-stream", "start_p99_ms", "<=", 3, "enqueue->start p99 <= 3 ms at 300 jobs/s (stream)"),
    Target("latency-sync@backlog", "start_p50_ms", "<=", 1, "enqueue->start p50 <= 1 ms with the backlog"),
    Target("latency-sync@backlog", "start_p99_ms", "<=", 3, "enqueue->start p99 <= 3 ms with the backlog"),
    Target("memory", "rss_growth_mb", "<=", 100, "RSS growth with 1,000,000 QUEUED jobs <= ~100 MB"),
    Target(
        "memory",
        "restart_serving_with_consumer_s",
        "<=",
        2,
        "start with 1,000,000 jobs for its consumer: serving <= 2 s",
    ),
    Target(
        "memory",
        "find_template_ms",
        "<=",
        50,
        "FindJobs with a property template over 1,000,000 jobs <= 50 ms",
    ),
    Target("memory", "get_job_ms", "<=", 2, "GetJob with 1,000,000 jobs <= 2 ms"),
)


async def run_scenario(
    name: str, description: str, runs: int, body: Callable[[], Awaitable[Metrics]]
) -> Result:
    result = Result(name, description)
    for index in range(runs):
        log(f"{name}: run {index + 1}/{runs}")
        try:
            metrics = await body()
        except Exception as e:  # one bad run must not lose the others
            log(f"{name}: run {index + 1} failed: {e}")
            result.errors.append(str(e))
            continue
        log(f"{name}: " + ", ".join(f"{k}={v:,.2f}" for k, v in metrics.items()))
        result.runs.append(metrics)
    return result


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import google.protobuf

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def report(results: list[Result], info: dict[str, str], command: str) -> str:
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", f"Command: `{command}`", "", "## Results (median [min .. max] over runs)", ""]
    lines += ["| scenario | metric | median | min .. max | runs |", "|---|---|---:|---:|---:|"]
    for result in results:
        if not result.runs:
            lines.append(f"| {result.name} | (all runs failed) | | | 0 |")
            continue
        for key in result.runs[0]:
            median, low, high = result.summary(key)
            runs = f"{len(result.runs)}" + (f" ({len(result.errors)} failed)" if result.errors else "")
            lines.append(f"| {result.name} | {key} | {fmt(median)} | {fmt(low)} .. {fmt(high)} | {runs} |")
    lines += ["", "## Targets", "", "| target | median | verdict |", "|---|---:|---|"]
    by_name = {r.name: r for r in results}
    for target in TARGETS:
        found = by_name.get(target.scenario)
        if found is None:
            continue
        if not found.runs:
            lines.append(f"| {target.text} | .. | FAIL (no successful run) |")
            continue
        median = found.summary(target.metric)[0]
        ok = median >= target.value if target.op == ">=" else median <= target.value
        lines.append(f"| {target.text} | {fmt(median)} | {'PASS' if ok else 'FAIL'} |")
    ratios = []
    if (
        "add-normal" in by_name
        and "add-full" in by_name
        and by_name["add-normal"].runs
        and by_name["add-full"].runs
    ):
        ratio = by_name["add-full"].summary("jobs_per_s")[0] / by_name["add-normal"].summary("jobs_per_s")[0]
        ratios.append(f"- AddJobs durability full / normal: {ratio:.2f}")
    sync, asy = by_name.get("lifecycle-sync"), by_name.get("lifecycle-async")
    if sync and asy and sync.runs and asy.runs:
        ratio = asy.summary("jobs_per_s")[0] / sync.summary("jobs_per_s")[0]
        ratios.append(f"- lifecycle async / sync consumer: {ratio:.2f}")
    raw = by_name.get("raw-sqlite")
    if raw and raw.runs:
        for life in (sync, asy, by_name.get("events-watched")):
            if life and life.runs:
                node_rate = life.summary("jobs_per_s")[0]
                shares = ", ".join(
                    f"{node_rate / raw.summary(f'jobs_per_s_batch_{b}')[0]:.0%} of batches of {b}"
                    for b in (15, 1000)
                )
                ratios.append(f"- {life.name} / raw SQLite insert -> claim -> succeed: {shares}")
    ratios += backlog_ratios(by_name)
    ratios += tls_ratios(results)
    if ratios:
        lines += ["", "## Ratios (of medians)", "", *ratios]
    errors = [f"- {r.name}: {e}" for r in results for e in r.errors]
    if errors:
        lines += ["", "## Failed runs", "", *errors]
    return "\n".join(lines) + "\n"


SCENARIOS = ("add", "lifecycle", "events", "single", "latency", "memory")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--runs", type=int, default=5, help="runs per scenario (default 5)")
    p.add_argument(
        "--memory-runs", type=int, default=3, help="runs of the 1M-job memory scenario (default 3)"
    )
    p.add_argument("--quick", action="store_true", help="small sizes and 2 runs: a smoke test")
    p.add_argument("--batch", type=int, default=1000, help="jobs per AddJobs call (default 1000)")
    p.add_argument("--in-flight", type=int, default=4, help="AddJobs calls in flight (default 4)")
    p.add_argument("--add-jobs", type=int, default=200_000, help="jobs per add run (default 200,000)")
    p.add_argument(
        "--lifecycle-jobs", type=int, default=50_000, help="jobs per lifecycle run (default 50,000)"
    )
    p.add_argument("--single-calls", type=int, default=10_000, help="AddJob calls per run (default 10,000)")
    p.add_argument("--latency-rate", type=float, default=300, help="AddJob calls/s in the latency run (300)")
    p.add_argument("--latency-seconds", type=float, default=10, help="length of a latency run (10 s)")
    p.add_argument("--memory-jobs", type=int, default=1_000_000, help="jobs in the memory run (1,000,000)")
    p.add_argument(
        "--payload-bytes", type=int, default=0, help="input payload per job in add and lifecycle (default 0)"
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="also run lifecycle and latency with this many QUEUED jobs nobody consumes (default 0: not)",
    )
    p.add_argument("--work-dir", type=Path, help="where node data dirs go (default: a temp dir)")
    p.add_argument(
        "--insecure", action="store_true", help="nodes serve plaintext (default: mutual TLS and tokens)"
    )
    p.add_argument(
        "--compare-insecure",
        action="store_true",
        help="run every scenario both ways, alternating run by run: mutual TLS and tokens (`-tls`) and "
        "`--insecure` (`-plain`); the report gives each ratio against the 0.85 target",
    )
    p.add_argument("--json", type=Path, help="write results here (default benchmarks/results/<time>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.memory_runs = min(args.runs, 2), 1
        args.add_jobs, args.lifecycle_jobs, args.single_calls = 20_000, 10_000, 2_000
        args.latency_seconds, args.memory_jobs = 3, 100_000
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    return args


async def main_async(args: argparse.Namespace, work: Path) -> list[Result]:
    s = Settings(
        work=work,
        runs=args.runs,
        memory_runs=args.memory_runs,
        add_jobs=args.add_jobs,
        batch=args.batch,
        in_flight=args.in_flight,
        lifecycle_jobs=args.lifecycle_jobs,
        single_calls=args.single_calls,
        single_in_flight=32,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        memory_jobs=args.memory_jobs,
        query_repeats=20,
        payload_bytes=args.payload_bytes,
        backlog=args.backlog,
    )
    chosen = args.scenarios.split(",")
    batch = f"batches of {s.batch}, {s.in_flight} in flight"
    plan: list[tuple[str, str, int, Callable[[], Awaitable[Metrics]]]] = []
    if "add" in chosen:
        plan.append(("add-normal", f"AddJobs, {batch}, normal", s.runs, lambda: scenario_add(s, "normal")))
        plan.append(("add-full", f"AddJobs, {batch}, full", s.runs, lambda: scenario_add(s, "full")))
    if "lifecycle" in chosen:
        plan.append(
            ("lifecycle-sync", "add -> SUCCEEDED, sync no-op", s.runs, lambda: scenario_lifecycle(s, "noop"))
        )
        plan.append(
            (
                "lifecycle-async",
                "add -> SUCCEEDED, async no-op",
                s.runs,
                lambda: scenario_lifecycle(s, "async_noop"),
            )
        )
        if s.backlog:
            plan.append(
                (
                    "lifecycle-sync@backlog",
                    f"add -> SUCCEEDED, sync no-op, {s.backlog:,} QUEUED elsewhere",
                    s.runs,
                    lambda: scenario_lifecycle(s, "noop", s.backlog),
                )
            )
    if "lifecycle" in chosen or "events" in chosen:
        plan.append(
            ("raw-sqlite", "plain SQLite insert -> claim -> succeed", s.runs, lambda: scenario_raw_sqlite(s))
        )
    if "events" in chosen:
        # Alternate with and without a watcher so their ratio compares like with like.
        plan.append(
            (
                "events-watched",
                "add -> SUCCEEDED + WatchJobs of all events",
                s.runs,
                lambda: scenario_events(s, "noop"),
            )
        )
        if "lifecycle" not in chosen:
            plan.append(
                (
                    "lifecycle-sync",
                    "add -> SUCCEEDED, sync no-op",
                    s.runs,
                    lambda: scenario_lifecycle(s, "noop"),
                )
            )
    if "single" in chosen:
        plan.append(("single-32", "AddJob, 32 in flight", s.runs, lambda: scenario_single(s)))
    if "latency" in chosen:
        plan.append(("latency-sync", "enqueue->start, sync", s.runs, lambda: scenario_latency(s, "latency")))
        plan.append(
            ("latency-async", "enqueue->start, async", s.runs, lambda: scenario_latency(s, "async_latency"))
        )
        plan.append(
            (
                "latency-stream",
                "enqueue->start, sync, over one SubmitJobs stream (JobmeshClient.add_job's way)",
                s.runs,
                lambda: scenario_latency(s, "latency", via="stream"),
            )
        )
        if s.backlog:
            plan.append(
                (
                    "latency-sync@backlog",
                    f"enqueue->start, sync, {s.backlog:,} QUEUED elsewhere",
                    s.runs,
                    lambda: scenario_latency(s, "latency", s.backlog),
                )
            )
    if "memory" in chosen:
        plan.append(("memory", f"{s.memory_jobs:,} QUEUED jobs", s.memory_runs, lambda: scenario_memory(s)))
    if args.compare_insecure:
        return [r for name, text, runs, body in plan for r in await run_both_ways(name, text, runs, body)]
    return [await run_scenario(name, text, runs, body) for name, text, runs, body in plan]


TLS_RATIO_TARGET = 0.85
"""Mutual TLS and token checks must keep at least this share of the plaintext rate."""


async def run_both_ways(
    name: str, description: str, runs: int, body: Callable[[], Awaitable[Metrics]]
) -> list[Result]:
    """`runs` runs of the scenario in the secure default and as many with `--insecure`,
    alternating (which goes first alternates too), so both see the same machine load."""
    secure, plain = (
        Result(f"{name}-tls", f"{description}, TLS + token"),
        Result(f"{name}-plain", f"{description}, --insecure"),
    )
    for index in range(runs):
        order = [(secure, False), (plain, True)]
        for result, insecure in order if index % 2 == 0 else order[::-1]:
            NODE_FLAGS[:] = ["--insecure"] if insecure else []
            result.runs.extend((await run_scenario(result.name, result.description, 1, body)).runs)
    NODE_FLAGS[:] = []
    return [secure, plain]


BACKLOG_TARGETS = (
    ("lifecycle-sync", "jobs_per_s", ">=", 0.90),
    ("latency-sync", "add_rpc_p99_ms", "<=", 2.0),
)
"""(scenario, metric, op, ratio): the backlog run against the empty journal's, medians."""


def backlog_ratios(by_name: dict[str, Result]) -> list[str]:
    """`- scenario metric: with the backlog / empty = r (target)` for each pair that ran."""
    lines = []
    for name, metric, op, target in BACKLOG_TARGETS:
        empty, deep = by_name.get(name), by_name.get(f"{name}@backlog")
        if not (empty and deep and empty.runs and deep.runs):
            continue
        ratio = deep.summary(metric)[0] / empty.summary(metric)[0]
        ok = ratio >= target if op == ">=" else ratio <= target
        lines.append(
            f"- {name} {metric}: with the backlog / empty journal = {ratio:.2f}"
            f" ({op} {target:g}: {'PASS' if ok else 'FAIL'})"
        )
    return lines


def tls_ratios(results: list[Result]) -> list[str]:
    """`- scenario: TLS / plaintext = r (target)` for every pair `run_both_ways` made."""
    by_name = {r.name: r for r in results}
    lines = []
    for secure in results:
        if not secure.name.endswith("-tls"):
            continue
        plain = by_name.get(secure.name.removesuffix("-tls") + "-plain")
        if plain is None or not secure.runs or not plain.runs:
            continue
        key = next(k for k in secure.runs[0] if k.endswith("_per_s"))
        ratio = secure.summary(key)[0] / plain.summary(key)[0]
        verdict = "PASS" if ratio >= TLS_RATIO_TARGET else "FAIL"
        lines.append(
            f"- {secure.name.removesuffix('-tls')} ({key}): TLS + token / plaintext = {ratio:.2f}"
            f" (>= {TLS_RATIO_TARGET}: {verdict})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.insecure:
        NODE_FLAGS.append("--insecure")
    if os.environ.get("JOBMESH_NETNS") != "1":
        print("bench_jobs: run me through benchmarks/run (a private network namespace)", file=sys.stderr)
        return 2
    info = machine()
    command = "benchmarks/run " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="jobmesh-bench-", dir=args.work_dir) as tmp:
        results = asyncio.run(main_async(args, Path(tmp)))
    own = resource.getrusage(resource.RUSAGE_SELF)
    info["bench_client_cpu_s"] = f"{own.ru_utime + own.ru_stime:.1f}"
    info["wall_s"] = f"{time.time() - started:.0f}"
    text = report(results, info, command.strip())
    print(text)
    path = args.json or RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "command": command,
        "results": [
            {"name": r.name, "description": r.description, "runs": r.runs, "errors": r.errors}
            for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"results written to {path}")
    failed = any(not r.runs for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
