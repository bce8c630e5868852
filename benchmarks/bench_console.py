"""What the console costs: the full lifecycle benchmark with and without console load, same run.

    benchmarks/run-console                  # 4 runs each, 20,000 jobs per run, alternating
    benchmarks/run-console --runs 2 --jobs 5000

"With console" means, for the whole measured phase: `/metrics` scraped every second (with a
read-scope bearer token, as a Prometheus would) and a signed-in jobs page's event stream open
(`/streams/jobs`, every job change of the node, read as a browser reads it). Each run starts a
fresh secure-default node (HTTPS console, mutual TLS gRPC) with the sync no-op consumer;
variants alternate (without, with, without, ...) so drift on the shared machine hits both.
Target: the rate with console load >= 97% of the rate without (median of the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from jobmesh.v1 import jobs_pb2

from benchmarks.bench_jobs import BenchNode, add_requests, count, send_batches, succeeded
from node.security import tokens
from node.security.cluster import ClusterFiles


def _insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the node's certificate is of its own cluster CA
    return context


class ConsoleLoad:
    """A Prometheus-like scraper and one open jobs page stream against a node's console."""

    def __init__(self, base: str, token: str, parts: str = "both") -> None:
        self.parts = parts
        """`both`, `scrape` (only /metrics) or `stream` (only the jobs page's stream)."""
        self.base = base
        self.token = token
        self.scrapes = 0
        self.messages = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=_insecure_tls())
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with self._session.get(self.base + "/signin") as page:
            csrf = re.search(r'name=csrf value="([^"]+)"', await page.text())
        assert csrf, "no CSRF token on the sign-in page"
        form = {"csrf": csrf.group(1), "token": self.token, "next": "/jobs"}
        async with self._session.post(self.base + "/signin", data=form) as jobs_page:
            assert jobs_page.status == 200, jobs_page.status
            assert "<h1>Jobs</h1>" in await jobs_page.text()
        loop = asyncio.get_running_loop()
        self._tasks = []
        if self.parts in ("both", "scrape"):
            self._tasks.append(loop.create_task(self._scrape()))
        if self.parts in ("both", "stream"):
            self._tasks.append(loop.create_task(self._stream()))

    async def _scrape(self) -> None:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        while True:
            async with self._session.get(self.base + "/metrics", headers=headers) as response:
                assert response.status == 200
                await response.read()
            self.scrapes += 1
            await asyncio.sleep(1.0)

    async def _stream(self) -> None:
        assert self._session is not None
        async with self._session.get(
            self.base + "/streams/jobs", timeout=aiohttp.ClientTimeout(total=None)
        ) as r:
            async for line in r.content:
                if line.startswith(b"data:"):
                    self.messages += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()


async def lifecycle(
    work: Path, jobs: int, batch: int, in_flight: int, console: bool, parts: str = "both"
) -> dict[str, float]:
    """One run: `jobs` jobs added in batches until all SUCCEEDED; jobs/s."""
    async with BenchNode(work, "noop") as node:
        stub = node.stub
        await send_batches(stub, add_requests("bench/warmup", 100, 1), 1, 1)
        await succeeded(stub, "bench/warmup", 100, 30)
        load = None
        if console:
            data_dir = node.process.data_dir
            reader = tokens.sign(
                tokens.new_claims("bench", ["read"], [], 0), ClusterFiles(data_dir).read_ca_key()
            )
            load = ConsoleLoad(f"https://127.0.0.1:{node.process.info['http_port']}", reader, parts)
            await load.start()
        calls = max(1, jobs // batch)
        total = calls * batch
        topic = "bench/lifecycle"
        cpu0 = node.stats().cpu_s
        t0 = time.perf_counter()
        adding = asyncio.create_task(send_batches(stub, add_requests(topic, batch), calls, in_flight))
        while await count(stub, jobs_pb2.QUERY_TYPE_SUCCEEDED, topic) < total:
            if time.perf_counter() - t0 > max(120.0, total / 100):
                raise RuntimeError("the lifecycle did not finish in time")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu_ms_per_job = (node.stats().cpu_s - cpu0) * 1000 / total
        await adding
        result = {"jobs_per_s": total / elapsed, "node_cpu_ms_per_job": cpu_ms_per_job}
        if load is not None:
            result.update(scrapes=load.scrapes, stream_messages=load.messages)
            await load.stop()
        return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=4, help="runs of each variant (alternating)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per run")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--load", choices=("both", "scrape", "stream"), default="both", help="what the console load is"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for run in range(args.runs):
            for console in (False, True) if run % 2 == 0 else (True, False):
                result = await lifecycle(work, args.jobs, args.batch, args.in_flight, console, args.load)
                rates[console].append(result["jobs_per_s"])
                cpu[console].append(result["node_cpu_ms_per_job"])
                extra = (
                    f" ({result['scrapes']:.0f} scrapes, {result['stream_messages']:.0f} stream messages)"
                    if console
                    else ""
                )
                print(
                    f"run {run + 1} {'with' if console else 'without'} console: "
                    f"{result['jobs_per_s']:,.0f} jobs/s, node CPU {result['node_cpu_ms_per_job']:.3f} ms/job{extra}",
                    flush=True,
                )
    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    print()
    print("| variant | runs (jobs/s) | median jobs/s | median node CPU ms/job |")
    print("|---|---|---:|---:|")
    loaded = {
        "both": "/metrics every 1 s + jobs page stream",
        "scrape": "/metrics every 1 s",
        "stream": "jobs page stream",
    }
    for label, key in (("without console load", False), (loaded[args.load], True)):
        runs = ", ".join(f"{r:,.0f}" for r in rates[key])
        print(
            f"| {label} | {runs} | {statistics.median(rates[key]):,.0f} | {statistics.median(cpu[key]):.3f} |"
        )
    print(f"\nrate ratio with/without: {with_ / without:.3f} (target >= 0.97)")
    cpu_ratio = statistics.median(cpu[False]) / statistics.median(cpu[True])
    print(f"node CPU per job, without/with: {cpu_ratio:.3f} (the share of the rate the node's CPU allows)")


if __name__ == "__main__":
    asyncio.run(main())
