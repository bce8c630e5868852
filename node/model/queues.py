"""Queue configurations: how jobs of matching topics run (Sling's QueueConfiguration).

A job's queue is the configured queue whose topic patterns match its topic, highest
`ranking` first, then the most specific pattern; jobs no queue matches go to the main queue.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

from node.errors import ConfigError, InvalidArgument
from node.ranges import MAX_DURATION_S, Range
from node.topics import TopicPattern

MAIN_QUEUE = "main"
_CORES = os.cpu_count() or 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_QUEUE_TOPICS = 256
"""Topic patterns of one queue: each one is matched against every new job's topic."""
_INT32 = Range(-(2**31), 2**31 - 1)
# What each number may be: a value outside would be stored and then fail a later read or
# overflow a timer (1e308 parallel jobs, a retry delay of 10^20 s), so it is refused here.
_RANGES = {
    "max_parallel": Range(0, 10_000, above=True, also=(-1,)),
    "retries": Range(0, 2**31 - 1, also=(-1,)),
    "retry_delay_s": Range(0, MAX_DURATION_S, unit="s"),
    "retry_backoff": Range(1, 1000),
    "retry_delay_max_s": Range(0, MAX_DURATION_S, unit="s"),
    "timeout_s": Range(0, MAX_DURATION_S, unit="s"),
    "ranking": _INT32,
}


class QueueType(Enum):
    """How a queue orders and parallelises its jobs."""

    UNORDERED = "unordered"
    """Jobs run in parallel, earliest due first."""
    ORDERED = "ordered"
    """Strict FIFO, one at a time; a failed job blocks the queue for its retry delay, then runs first."""
    TOPIC_ROUND_ROBIN = "topic_round_robin"
    """Jobs run in parallel, taking turns between topics so one busy topic cannot starve the others."""


class SyncIsolation(Enum):
    """Where a queue runs its sync (plain `def`) consumers, and so what its attempt timeout can do."""

    THREAD = "thread"
    """In the node's consumer thread pool: at the timeout the consumer is told to stop, and its
    attempt (so its retry) waits until the thread has returned."""
    PROCESS = "process"
    """In a pool of worker processes (spawned, `max_parallel` of them): at the timeout the
    worker process is killed (SIGKILL) and replaced, so the attempt ends then."""


@dataclass(frozen=True)
class QueueConfig:
    """One queue's configuration. Build from TOML/API values with `QueueConfig.create`."""

    name: str
    topics: tuple[str, ...] = ()
    """Topic patterns of the jobs this queue runs (`a/b`, `a/b/*`, `a/b/**`)."""
    type: QueueType = QueueType.UNORDERED
    max_parallel: float = 15
    """Jobs run at once: a count (>= 1), a fraction of the CPU cores (0 < x < 1), or -1 for all cores."""
    retries: int = 10
    """Retries after a failed first attempt; -1 retries forever."""
    retry_delay_s: float = 2.0
    """Delay before the first retry."""
    retry_backoff: float = 1.0
    """Each further retry waits this many times longer (1.0: fixed delay)."""
    retry_delay_max_s: float = 3600.0
    """Cap on the retry delay when backing off."""
    timeout_s: float = 0.0
    """An attempt running longer is stopped and counted failed; 0 = no timeout."""
    keep_jobs: bool = True
    """Keep SUCCEEDED jobs in history (failed ones are always kept)."""
    prefer_run_on_creation_instance: bool = False
    """Offloading: run jobs on the node where they were added when it can."""
    ranking: int = 0
    """When several queues match a topic, the highest ranking wins."""
    sync_isolation: SyncIsolation = SyncIsolation.THREAD
    """Where sync consumers of this queue run: threads (default) or killable worker processes."""
    patterns: tuple[TopicPattern, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def create(cls, **values: object) -> QueueConfig:
        """Validate and build a config (raises ConfigError)."""
        try:
            if "type" in values and not isinstance(values["type"], QueueType):
                values["type"] = QueueType(str(values["type"]).lower())
            isolation = values.get("sync_isolation")
            if isolation is not None and not isinstance(isolation, SyncIsolation):
                try:
                    values["sync_isolation"] = SyncIsolation(str(isolation).lower())
                except ValueError:
                    raise ValueError(f"sync_isolation is {isolation!r}; use 'thread' or 'process'") from None
            if "topics" in values:
                topics = values["topics"]
                if isinstance(topics, str) or not all(isinstance(t, str) for t in topics):  # type: ignore[attr-defined]
                    raise ValueError(f"topics must be a list of topic patterns, not {topics!r}")
                values["topics"] = tuple(topics)  # type: ignore[arg-type]
            config = cls(**values)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"queue {values.get('name', '?')!r}: {e}") from e
        return config.validated()

    def validated(self) -> QueueConfig:
        """This config with parsed patterns, or ConfigError."""
        where = f"queue {self.name!r}"
        for key, allowed in _RANGES.items():
            value = getattr(self, key)
            # inf or NaN would pass a range check and fail later, inside a commit.
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, not {value!r}")
            if key in ("retries", "ranking") and not float(value).is_integer():
                raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}")
            problem = allowed.problem(value)
            if problem is not None:
                raise ConfigError(f"{where}: {key} is {value!r}; {problem}")
        checks = [
            (
                isinstance(self.name, str) and bool(_NAME.fullmatch(self.name)),
                f"{where}: names use letters, digits, '.', '_', '-' (max 100)",
            ),
            (
                self.max_parallel < 1 or float(self.max_parallel).is_integer(),
                f"{where}: max_parallel >= 1 must be whole",
            ),
            (self.name == MAIN_QUEUE or bool(self.topics), f"{where}: needs topic patterns"),
            (len(self.topics) <= MAX_QUEUE_TOPICS, f"{where}: at most {MAX_QUEUE_TOPICS} topic patterns"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            patterns = tuple(TopicPattern.parse(t) for t in self.topics)
        except InvalidArgument as e:
            raise ConfigError(f"{where}: {e}") from e
        return replace(self, retries=int(self.retries), ranking=int(self.ranking), patterns=patterns)

    def to_json(self) -> dict[str, object]:
        """The config as stored in the journal (what `--set queues=JSON` takes)."""
        data = asdict(self)
        data.pop("patterns")
        data["type"] = self.type.value
        data["sync_isolation"] = self.sync_isolation.value
        data["topics"] = list(self.topics)
        return data

    @property
    def parallelism(self) -> int:
        """How many jobs run at once on this machine (1 for ordered queues)."""
        if self.type is QueueType.ORDERED:
            return 1
        cores = _CORES
        if self.max_parallel == -1:
            return cores
        if self.max_parallel < 1:
            return max(1, round(self.max_parallel * cores))
        return int(self.max_parallel)

    def retry_delay_us(self, retry_count: int, override_s: float | None = None) -> int:
        """Delay before retry number `retry_count` (1 = first retry), with backoff and cap."""
        base = self.retry_delay_s
        if override_s is not None and math.isfinite(override_s) and override_s >= 0:
            base = override_s  # a consumer's JobResult.failed(retry_delay_s=inf) must not wedge the job
        cap = max(base, self.retry_delay_max_s)
        try:
            delay = base * float(self.retry_backoff) ** max(0, retry_count - 1)
        except OverflowError:  # e.g. the 1100th retry of a queue that retries forever
            delay = cap
        return int(min(delay, cap) * 1e6)


@dataclass(frozen=True)
class QueueInfo:
    """A queue with its state and counts."""

    config: QueueConfig
    source: str  # "default", "config" or "api"
    suspended: bool
    queued: int
    active: int


class QueueDirectory:
    """All queue configs of a node; maps topics to queues."""

    def __init__(self, configs: Iterable[QueueConfig], main: QueueConfig) -> None:
        self.main = replace(main, name=MAIN_QUEUE, topics=()).validated()
        self._configs: dict[str, QueueConfig] = {}
        for config in configs:
            if config.name == MAIN_QUEUE:
                self.main = replace(config, topics=()).validated()
            elif config.name in self._configs:
                raise ConfigError(f"queue {config.name!r} is configured twice")
            else:
                self._configs[config.name] = config
        self._cache: dict[str, QueueConfig] = {}

    def all(self) -> Sequence[QueueConfig]:
        """The main queue first, then the others by name."""
        return [self.main, *sorted(self._configs.values(), key=lambda c: c.name)]

    def get(self, name: str) -> QueueConfig | None:
        """The queue called `name`, or None."""
        return self.main if name == MAIN_QUEUE else self._configs.get(name)

    def for_topic(self, topic: str) -> QueueConfig:
        """The queue that runs jobs of `topic`."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        best: tuple[tuple[int, tuple[int, int]], QueueConfig] | None = None
        for config in self._configs.values():
            for pattern in config.patterns:
                if pattern.matches(topic):
                    key = (config.ranking, pattern.specificity)
                    if best is None or key > best[0]:
                        best = (key, config)
        found = best[1] if best else self.main
        if len(self._cache) < 100_000:
            self._cache[topic] = found
        return found
