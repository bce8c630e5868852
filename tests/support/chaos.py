"""The chaos scenario (issue 13, point 12): three namespace hosts on one bridge, an origin that
only offloads, short jobs flowing while a worker is killed and restarted, the other worker is
cut off past the death timeout and healed, and the origin is killed and restarted.

    one subnet (br1): origin (h1, no consumer)  worker-a (h2)  worker-b (h3)   — mDNS only

`run_chaos` drives it and checks it; `benchmarks/chaos.py` runs it at the production timings
(`ChaosProfile.production`), `tests/test_chaos.py` at the test preset (`ChaosProfile.quick`).
The checks: every job SUCCEEDED exactly once at the origin (FindJobs, GetStatistics' offloaded
counts, one terminal event per job in WatchJobs' history and in the journal's events), every
execution beyond the accepted one explained by a fault (tests/support/executions.py), `jobmesh
check` clean on every data dir after the stop, one view and one leader at the end. The jobs
come from `producer.Producer`; `chaos_report.render` prints an outcome.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobmesh.v1 import jobs_pb2

from node import JobState
from node.config import OffloadConfig
from node.discovery.config import DiscoveryConfig
from tests.consumers import EXECUTIONS_SUFFIX

from .executions import Fault, FaultKind, Verdict, explain, read_executions, stale_pairs, token_of
from .job_calls import find_all
from .launcher import NodeFactory, NodeProcess
from .netlab import Host, Lab
from .producer import Producer
from .protos import PropertyInput
from .topology import leader_names, names, view, wait_views
from .waiting import wait_for

TOPIC = "chaos/work"
PORT = 7710
NAMES = ("origin", "worker-a", "worker-b")
TERMINAL_EVENTS = (
    jobs_pb2.JOB_EVENT_TYPE_FINISHED,
    jobs_pb2.JOB_EVENT_TYPE_CANCELLED,
    jobs_pb2.JOB_EVENT_TYPE_STOPPED,
    jobs_pb2.JOB_EVENT_TYPE_REMOVED,
)
UNFINISHED = (int(JobState.QUEUED), int(JobState.ACTIVE))


def _fault_deadlines(d: DiscoveryConfig, o: OffloadConfig) -> tuple[float, float]:
    """Deadlines (not waits) for a cut-off peer to be declared dead and for its jobs to be
    reassigned: the configured timings plus a margin for a loaded machine, which answers late."""
    death = d.probe_interval_s * 3 + d.probe_timeout_s * 3 + d.suspicion_timeout_s + 10.0
    # reassigned once gone for the grace, never within the start-up grace; the reaper looks
    # every quarter of the grace
    reassign = max(o.reassign_grace_s, o.startup_grace_s) + o.reassign_grace_s / 4 + 5.0
    return death, reassign


@dataclass(frozen=True)
class ChaosProfile:
    """Sizes and timings of one chaos run."""

    jobs: int
    """Jobs added at least (steadily, plus a burst before each fault): the steady flow goes on
    until the last fault, then tops up to this many."""
    rate_per_s: float
    """Steady rate of the producer between bursts."""
    burst: tuple[int, int]
    """Jobs added at once right before each fault: a seeded size in this range."""
    preset: bool
    """True: nodes run with the test preset; False: the production defaults."""
    death_s: float
    """How long discovery needs at most to declare a silent peer dead (for the deadlines)."""
    reassign_s: float
    """How long the origin waits at most before it reassigns a dead target's jobs (grace,
    start-up grace, one reaper period)."""
    slack_s: float = 1.0
    """How far before a fault an execution may have ended and still count as in flight at it
    (a result commits and its report leaves some time after the consumer returns)."""
    start_s: float = 60.0
    """Deadline for nodes to serve and for views to form."""
    settle_s: float = 240.0
    """Deadline for every job to be terminal at the origin after the last fault."""
    batch: int = 20
    """Jobs per AddJobs call."""
    work_s: float = 0.01
    """How long each job works."""
    seed: int = 1

    @classmethod
    def production(cls, jobs: int = 3000, seed: int = 1) -> ChaosProfile:
        """The production timings (no test preset): LAN discovery, 10 s reassign grace."""
        death, reassign = _fault_deadlines(DiscoveryConfig.lan(), OffloadConfig())
        return cls(jobs, 50.0, (100, 300), False, death, reassign, 1.0, seed=seed)

    @classmethod
    def quick(cls, jobs: int = 500, seed: int = 1) -> ChaosProfile:
        """The test preset: the suite's short version (well under a minute)."""
        death, reassign = _fault_deadlines(DiscoveryConfig.for_tests(), OffloadConfig.for_tests())
        return cls(jobs, 60.0, (40, 80), True, death, reassign, 1.0, start_s=30.0, settle_s=40.0, seed=seed)


@dataclass
class ChaosOutcome:
    """What a run saw and found; `passed` is the verdict."""

    profile: ChaosProfile
    timeline: list[tuple[float, str]] = field(default_factory=list)
    """(seconds since the start, what happened)."""
    added: int = 0
    terminal_states: dict[str, int] = field(default_factory=dict)
    statistics: dict[str, int] = field(default_factory=dict)
    """The origin's GetStatistics offloaded counts by state name."""
    verdict: Verdict = field(default_factory=Verdict)
    names: dict[str, str] = field(default_factory=dict)
    """instance id -> node name."""
    failures: list[str] = field(default_factory=list)
    t0_us: int = 0
    """Wall-clock start of the run (the timeline's zero)."""
    arrivals: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    """(instance, job id) -> bounds (microseconds; 0: none) of when a job that ran more than
    once arrived at that instance: tells a job held but not run from one delivered late."""

    @property
    def passed(self) -> bool:
        """True when no check failed, every re-execution has a cause, and none is fenced work."""
        v = self.verdict
        return not self.failures and not v.problems and not v.unexplained and not v.fenced


class Chaos:
    """One run of the scenario on a `Lab`, its nodes made by a `NodeFactory`."""

    def __init__(
        self, lab: Lab, nodes: NodeFactory, profile: ChaosProfile, log: Callable[[str], None]
    ) -> None:
        self.lab = lab
        self.nodes = nodes
        self.profile = profile
        self.random = random.Random(profile.seed)
        self.say = log
        self.outcome = ChaosOutcome(profile)
        self.records = nodes.root / "executions"
        self.records.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, Host] = {}
        self.procs: dict[str, NodeProcess] = {}
        self.faults: list[Fault] = []
        self._t0 = time.time()
        self.outcome.t0_us = int(self._t0 * 1_000_000)

    # --- timeline ---

    def mark(self, what: str) -> int:
        """Note an event in the timeline; returns its wall-clock time (microseconds)."""
        now = time.time()
        self.outcome.timeline.append((now - self._t0, what))
        self.say(f"[{now - self._t0:7.2f} s] {what}")
        return int(now * 1_000_000)

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """`wait_for` that notes a missed deadline as a failure instead of raising."""
        try:
            wait_for(condition, timeout, what)
        except AssertionError as e:
            self.outcome.failures.append(f"timed out: {what}: {str(e).splitlines()[0]}")
            self.mark(f"TIMED OUT waiting for {what}")

    # --- set-up ---

    def _create(self, name: str, consumer: bool) -> NodeProcess:
        host = self.lab.add_host(name, 1)
        self.hosts[name] = host
        proc = self.nodes.create(
            name,
            consumers=["chaos/**=consumers:record_execution"] if consumer else [],
            settings={
                "discovery.mdns": "true",
                "discovery.interfaces": "eth0",
                "discovery.advertise_addresses": host.address,
            },
            extra_args=["--name", name, "--host", "0.0.0.0", "--port", str(PORT)],
            netns=host.netns.path,
            dial_host=host.mgmt_address,
            preset=self.profile.preset,
        )
        self.procs[name] = proc
        return proc

    def _executions_on(self, name: str) -> int:
        path = self.records / f"{self.procs[name].instance_id}{EXECUTIONS_SUFFIX}"
        try:
            text = b"\n" + path.read_bytes()
        except OSError:
            return 0
        return text.count(b"\nS ")

    def _consumes(self, name: str, started_after_us: int = 0) -> bool:
        """True when the origin's view holds `name` with its capacity (a run started after
        `started_after_us`: the restarted one)."""
        worker = self.procs[name].instance_id
        return any(
            i.id == worker
            and "jobmesh.capacity" in i.properties
            and i.start_time.ToMicroseconds() >= started_after_us
            for i in view(self.procs["origin"]).instances
        )

    def _in_origin_view(self, name: str) -> bool:
        return self.procs[name].instance_id in {i.id for i in view(self.procs["origin"]).instances}

    def start(self) -> None:
        """Hosts, nodes, one view (by mDNS alone), the workers' capacity seen by the origin."""
        for name in NAMES:
            self._create(name, consumer=name != "origin")
        for proc in self.procs.values():
            proc.spawn()
        for proc in self.procs.values():
            proc.wait_serving(self.profile.start_s)
        self.outcome.names = {p.instance_id: n for n, p in self.procs.items()}
        self.mark(
            "three nodes serve: " + ", ".join(f"{n} {p.instance_id[:8]}" for n, p in self.procs.items())
        )
        wait_views(list(self.procs.values()), set(NAMES), timeout=self.profile.start_s)
        wait_for(
            lambda: self._consumes("worker-a") and self._consumes("worker-b"),
            self.profile.start_s,
            "capacity",
        )
        self.mark("one view of three (mDNS); the origin sees both workers' capacity")

    # --- faults ---

    def _busy(self, name: str, more: int) -> None:
        """Wait until `name` has run `more` jobs since now (so a fault meets work in flight)."""
        base = self._executions_on(name)
        self.wait(lambda: self._executions_on(name) >= base + more, 60, f"{name} to run {more} more jobs")

    def _burst(self, producer: Producer) -> None:
        size = self.random.randint(*self.profile.burst)
        producer.burst(size)
        self.mark(f"burst of {size} jobs (added so far: {len(producer.ids)})")

    def kill_worker(self, producer: Producer, name: str) -> None:
        """kill -9 a worker while it is busy, restart it at once."""
        self._busy(name, self.random.randint(10, 40))
        self._burst(producer)
        self._busy(name, 5)
        proc = self.procs[name]
        proc.kill()
        killed = self.mark(f"kill -9 {name} (reaped)")
        proc.start(self.profile.start_s)
        back = self.mark(f"{name} restarted, serving")
        self.faults.append(Fault(FaultKind.WORKER_KILL, proc.instance_id, killed, back))
        self.wait(
            lambda: self._consumes(name, killed),
            self.profile.death_s + 30,
            f"{name}'s new run in the origin's view",
        )
        self.mark(f"{name}'s new run in the origin's view with its capacity")

    def partition_worker(self, producer: Producer, name: str) -> None:
        """Cut a busy worker off past the death timeout until the origin reassigned its jobs; heal."""
        self._busy(name, self.random.randint(10, 40))
        self._burst(producer)
        self._busy(name, 5)
        proc, origin = self.procs[name], self.procs["origin"]
        cut = self.mark(f"cut {name} off (its bridge port down)")
        self.lab.cut_host(self.hosts[name])
        try:
            self.wait(lambda: not self._in_origin_view(name), self.profile.death_s, f"{name} declared dead")
            self.mark(f"{name} gone from the origin's view")
            gone = re.compile(rf"target {proc.instance_id} is gone: reassigned (\d+)")
            found: list[str] = []

            def reassigned() -> bool:
                found[:] = gone.findall(origin.log_paths[-1].read_text(errors="replace"))
                return bool(found)

            self.wait(reassigned, self.profile.reassign_s, f"the origin to reassign {name}'s jobs")
            self.mark(f"the origin reassigned {sum(map(int, found))} of {name}'s unfinished jobs")
        finally:
            self.lab.heal_host(self.hosts[name])
        healed = self.mark(f"healed {name}")
        self.faults.append(Fault(FaultKind.PARTITION, proc.instance_id, cut, healed))
        self.wait(
            lambda: self._consumes(name), self.profile.death_s + 30, f"{name} back in the origin's view"
        )
        self.mark(f"{name} back in the origin's view")

    def kill_origin(self, producer: Producer) -> None:
        """kill -9 the origin while jobs flow, restart it at once."""
        self._busy("worker-a", 10)
        self._burst(producer)
        self._busy("worker-b", 5)
        origin = self.procs["origin"]
        origin.kill()
        killed = self.mark("kill -9 origin (reaped)")
        origin.start(self.profile.start_s)
        back = self.mark("origin restarted, serving")
        self.faults.append(Fault(FaultKind.ORIGIN_KILL, origin.instance_id, killed, back))

    # --- the end ---

    def _unfinished(self) -> int:
        rows = self.procs["origin"].query_journal(
            f"SELECT count(*) FROM jobs WHERE state IN ({','.join(map(str, UNFINISHED))})"
        )
        return int(rows[0][0])

    def settle(self, producer: Producer) -> None:
        """Wait for the producer, then for every job to be terminal at the origin."""
        self.wait(lambda: producer.done, 600, "the producer to add every job")
        producer.stop()
        if producer.failed is not None:
            self.outcome.failures.append(f"the producer failed: {producer.failed!r}")
        self.outcome.added = len(producer.ids)
        self.mark(
            f"producer done: {len(producer.ids)} jobs acknowledged ({producer.retried_batches} "
            f"batch retries, {producer.deduplicated} deduplicated on retry)"
        )
        self.wait(lambda: self._unfinished() == 0, self.profile.settle_s, "every job terminal at the origin")
        self.mark(f"jobs not terminal at the origin: {self._unfinished()}")

    def check_running(self, ids: list[str]) -> dict[str, str]:
        """Checks on the running nodes; returns job id -> accepted execution token."""
        origin = self.procs["origin"]
        jobs = find_all(origin.stub, jobs_pb2.FindJobsRequest(topic=TOPIC, page_size=1000))
        by_id = {j.id: j for j in jobs}
        states: dict[str, int] = {}
        for job in jobs:
            state = jobs_pb2.JobState.Name(job.state)
            states[state] = states.get(state, 0) + 1
        self.outcome.terminal_states = states
        missing = set(ids) - set(by_id)
        if missing:
            self.outcome.failures.append(f"{len(missing)} acknowledged jobs are not at the origin")
        if len(by_id) != len(ids):
            self.outcome.failures.append(
                f"the origin has {len(by_id)} jobs of the topic, {len(ids)} were added"
            )
        not_ok = [j for j in jobs if j.state != jobs_pb2.JOB_STATE_SUCCEEDED]
        if not_ok:
            self.outcome.failures.append(
                f"{len(not_ok)} jobs did not succeed at the origin, e.g. "
                + ", ".join(
                    f"{j.id} {jobs_pb2.JobState.Name(j.state)} at {self.outcome.names.get(j.target_instance, j.target_instance)}"
                    for j in not_ok[:5]
                )
            )
        stats = origin.stub.GetStatistics(jobs_pb2.GetStatisticsRequest(), timeout=10)
        counted: dict[str, int] = {}
        for count in stats.offloaded:
            state = jobs_pb2.JobState.Name(count.state)
            counted[state] = counted.get(state, 0) + count.jobs
        self.outcome.statistics = counted
        if counted.get("JOB_STATE_SUCCEEDED", 0) != len(ids):
            self.outcome.failures.append(
                f"the origin's statistics count {counted} offloaded jobs, not {len(ids)} SUCCEEDED"
            )
        self._check_events(origin, set(by_id))
        self._check_views()
        return {j.id: token_of(j.result_message) for j in jobs}

    def _check_events(self, origin: NodeProcess, ids: set[str]) -> None:
        """One terminal event per job, a FINISHED, in the origin's WatchJobs history."""
        head = next(iter(origin.stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_seq=-1), timeout=10))).head_seq
        request = jobs_pb2.WatchJobsRequest(after_seq=0, topics=[TOPIC], types=list(TERMINAL_EVENTS))
        terminal: dict[str, list[int]] = {}
        stream = origin.stub.WatchJobs(request, timeout=60)
        try:
            for message in stream:
                if message.gap_until_seq:
                    self.outcome.failures.append(
                        f"the origin's event history was purged up to {message.gap_until_seq}"
                    )
                for event in message.events:
                    terminal.setdefault(event.job_id, []).append(event.type)
                if message.head_seq >= head:
                    break
        finally:
            stream.cancel()
        finished = jobs_pb2.JOB_EVENT_TYPE_FINISHED
        wrong = {j: t for j, t in terminal.items() if t != [finished]}
        silent = ids - set(terminal)
        if wrong or silent:
            self.outcome.failures.append(
                f"WatchJobs history at the origin: {len(wrong)} jobs with other than one FINISHED "
                f"(e.g. {dict(list(wrong.items())[:3])}), {len(silent)} jobs with no terminal event"
            )

    def _check_views(self) -> None:
        procs = list(self.procs.values())
        try:
            views = wait_views(procs, set(NAMES), timeout=self.profile.start_s)
        except AssertionError as e:
            self.outcome.failures.append(f"no single view at the end: {e}")
            return
        leaders = {tuple(leader_names(v)) for v in views.values()}
        if len(leaders) != 1 or len(next(iter(leaders))) != 1:
            self.outcome.failures.append(f"not one leader at the end: {leaders}")
            return
        self.mark(
            f"one view of {sorted(names(next(iter(views.values()))))}, one leader: {next(iter(leaders))[0]}"
        )

    def stop_and_check_journals(self) -> None:
        """Stop every node (SIGTERM) and run `jobmesh check` on each data dir."""
        for name, proc in self.procs.items():
            code = proc.terminate(timeout=30)
            if code != 0:
                self.outcome.failures.append(f"{name} exited with {code} on SIGTERM")
        self.mark("all nodes stopped")
        for name, proc in self.procs.items():
            result = subprocess.run(
                [sys.executable, "-m", "node", "check", "--data-dir", str(proc.data_dir), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            try:
                report = json.loads(result.stdout)
            except ValueError:
                report = {}
            if result.returncode != 0:
                self.outcome.failures.append(
                    f"jobmesh check on {name}: exit {result.returncode} {result.stdout.strip()} {result.stderr.strip()}"
                )
            else:
                self.mark(f"jobmesh check {name}: clean ({report.get('jobs', '?')} jobs)")
        origin = self.procs["origin"]
        rows = origin.query_journal("SELECT job_id, count(*) FROM job_events WHERE type = 4 GROUP BY job_id")
        twice = [job for job, n in rows if n != 1]
        if twice:
            self.outcome.failures.append(
                f"{len(twice)} jobs have more than one FINISHED event in the origin's journal"
            )

    def run(self) -> ChaosOutcome:
        """The whole scenario; the outcome holds the verdict."""
        self.start()
        properties: dict[str, PropertyInput] = {
            "executions_dir": str(self.records),
            "work_s": self.profile.work_s,
        }
        producer = Producer(self.procs["origin"], self.profile, TOPIC, properties)
        producer.start()
        self.mark(
            f"producer started: at least {self.profile.jobs} jobs, {self.profile.rate_per_s:.0f}/s, bursts {self.profile.burst}"
        )
        try:
            self.kill_worker(producer, "worker-a")
            self.partition_worker(producer, "worker-b")
            self.kill_origin(producer)
            producer.finish()
            self.settle(producer)
        finally:
            producer.stop()
        accepted = self.check_running(producer.ids)
        self.stop_and_check_journals()
        log = read_executions(self.records)
        if log.bad_lines:
            self.outcome.failures.append(f"{log.bad_lines} unreadable lines in the execution files")
        epochs = {n: dict(p.query_journal("SELECT id, epoch FROM jobs")) for n, p in self.procs.items()}
        workers = {self.procs[n].instance_id: epochs[n] for n in NAMES if n != "origin"}
        stale = stale_pairs(epochs["origin"], workers)
        self.outcome.verdict = explain(log, accepted, self.faults, self.profile.slack_s, stale)
        self._read_arrivals()
        return self.outcome

    def _read_arrivals(self) -> None:
        """When the re-executed jobs arrived at the workers that ran them (after the stop, from
        each worker's journal). A job's ADDED event there carries the origin's creation time,
        so the arrival is bounded by the times of the worker's own events just before and
        just after it in the journal's order."""
        wanted: dict[str, set[str]] = {}
        for extra in self.outcome.verdict.extras:
            wanted.setdefault(extra.execution.instance, set()).add(extra.execution.job_id)
        for proc in self.procs.values():
            ids = sorted(wanted.get(proc.instance_id, ()))
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = proc.query_journal(
                    "SELECT e.job_id, "
                    "(SELECT max(p.time_us) FROM job_events p WHERE p.seq < e.seq AND p.type != 1), "
                    "(SELECT min(n.time_us) FROM job_events n WHERE n.seq > e.seq AND n.type != 1) "
                    f"FROM job_events e WHERE e.type = 1 AND e.job_id IN ({marks}) GROUP BY e.job_id",
                    chunk,
                )
                for job_id, after_us, before_us in rows:
                    self.outcome.arrivals[(proc.instance_id, job_id)] = (after_us or 0, before_us or 0)
