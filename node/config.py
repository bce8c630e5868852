"""Node configuration: one frozen dataclass tree, built from TOML, then env, then flags.

Every setting has a dotted key (`jobs.max_parallel`) used the same way in a TOML file (section
`[jobs]`, key `max_parallel`), an environment variable (`JOBMESH_JOBS_MAX_PARALLEL`) and the CLI
(`--set jobs.max_parallel=4`). Only the CLI reads argv and the environment; it passes them here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from node.discovery.config import DiscoveryConfig
from node.errors import ConfigError
from node.journal.connection import Durability
from node.model.queues import MAIN_QUEUE, QueueConfig, SyncIsolation
from node.ranges import COUNT, NON_NEGATIVE_S, POSITIVE_S, Range, check_ranges

DEFAULT_PORT = 7710
ENV_PREFIX = "JOBMESH_"
OTHER_ENV_NAMES = frozenset(
    {
        "JOBMESH_NODE",  # the CLI's default node address
        "JOBMESH_TOKEN",  # the CLI's bearer token
        "JOBMESH_PROFILE",  # the CLI's profile file (named nodes and their credentials)
        "JOBMESH_NETNS",  # set inside the private network namespace of scripts/
        "JOBMESH_PRIVATE_NETNS",  # scripts/run: start the node in a private network namespace
        "JOBMESH_VENV",  # scripts/: where the virtual environment lives
        "JOBMESH_SKIP_POLYGLOT_SETUP",  # scripts/setup-polyglot: install nothing
        "JOBMESH_SKIP_BUF_SETUP",  # scripts/setup-buf: install nothing
        "JOBMESH_SKIP_NETLAB_SETUP",  # scripts/setup-netlab: install nothing
        "JOBMESH_SKIP_BROWSER_SETUP",  # scripts/setup-browser: install nothing
    }
)
"""`JOBMESH_*` variables that are not node settings (a test keeps this list complete)."""


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC server."""

    host: str = "0.0.0.0"
    """Address to listen on (`0.0.0.0` all IPv4 interfaces, `[::]` all, `127.0.0.1` local only)."""
    port: Annotated[int, Range(0, 65535)] = DEFAULT_PORT
    """TCP port; 0 picks a free one (written to `<data_dir>/node.json`)."""
    shutdown_grace_s: Annotated[float, NON_NEGATIVE_S] = 10.0
    """On SIGTERM/SIGINT: how long running jobs and RPCs get to finish before they are cut off."""
    keepalive_interval_s: Annotated[float, Range(0.01, 3600, unit="s")] = 1.0
    """HTTP/2 keepalive ping period of every connection (both ways; idle streams stay open)."""
    keepalive_timeout_s: Annotated[float, Range(0.01, 3600, unit="s")] = 2.0
    """A connection whose ping is unanswered this long is dead: a link that silently drops
    packets is found within interval + timeout (3 s by default; the issue asks for 5 s), and a
    dead worker's jobs are re-queued and its patterns withdrawn then."""


DAY_S = 24 * 3600.0
DEFAULT_HTTP_PORT = 7711


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP server of the web console, `/metrics` and `/healthz` (node/console)."""

    enabled: bool = True
    """Serve the console, `/metrics` and `/healthz` (HTTPS in the secure default)."""
    host: str = ""
    """Address to listen on; empty: the gRPC server's (`server.host`)."""
    port: Annotated[int, Range(0, 65535)] = DEFAULT_HTTP_PORT
    """TCP port; 0 picks a free one (written to `<data_dir>/node.json` as `http_port`)."""
    open_metrics: bool = False
    """Serve `/metrics` without a token (for a Prometheus on a trusted network); otherwise a
    scrape needs a bearer token with the `read` scope."""
    session_ttl_s: Annotated[float, Range(1, 30 * DAY_S, unit="s")] = 12 * 3600.0
    """How long a console sign-in lasts."""


@dataclass(frozen=True)
class SecurityConfig:
    """Trust: the cluster PKI, mutual TLS between nodes and bearer tokens for clients."""

    insecure: bool = False
    """Plaintext, no authentication (today's LAN behaviour); warned about at start."""
    join: str = ""
    """A join token from `jobmesh cluster token create`: join that cluster at first start."""
    cert_lifetime_s: Annotated[float, Range(1, 100 * 365 * DAY_S, unit="s")] = 30 * DAY_S
    """Lifetime of the node certificates this node issues."""
    renew_fraction: Annotated[float, Range(0.1, 0.99)] = 2 / 3
    """A node certificate is renewed once this fraction of its lifetime has passed."""


@dataclass(frozen=True)
class JournalConfig:
    """The SQLite journal."""

    durability: Durability = Durability.NORMAL
    """`normal`: commits survive any process crash; `full`: also power loss (fsync each commit)."""
    readers: Annotated[int, Range(1, 64)] = 2
    """Read connections (threads) serving queries beside the single writer."""


@dataclass(frozen=True)
class JobsConfig:
    """Job processing on this node; the `max_parallel` .. `sync_isolation` keys configure the main queue."""

    max_parallel: Annotated[float, Range(0, 10_000, above=True, also=(-1,))] = 15
    """Main queue: jobs run at once (a count, a fraction of the cores between 0 and 1, or -1: all cores)."""
    retries: Annotated[int, Range(0, 2**31 - 1, also=(-1,))] = 10
    """Main queue: retries after a failed first attempt before a job is GIVEN_UP; -1 retries forever."""
    retry_delay_s: Annotated[float, NON_NEGATIVE_S] = 2.0
    """Main queue: wait before a failed job runs again (a consumer may ask for another delay)."""
    retry_backoff: Annotated[float, Range(1, 1000)] = 1.0
    """Main queue: each further retry waits this many times longer (1: fixed delay)."""
    retry_delay_max_s: Annotated[float, NON_NEGATIVE_S] = 3600.0
    """Main queue: cap on the retry delay."""
    timeout_s: Annotated[float, NON_NEGATIVE_S] = 0.0
    """Main queue: an attempt running longer is stopped and counted failed; 0: no timeout."""
    keep_jobs: bool = True
    """Main queue: keep SUCCEEDED jobs in history."""
    sync_isolation: SyncIsolation = SyncIsolation.THREAD
    """Main queue: sync consumers in threads (`thread`) or worker processes killed at the timeout."""
    max_log_lines: Annotated[int, Range(0, 100_000)] = 100
    """Log lines kept per job (the newest)."""
    max_payload_bytes: Annotated[int, Range(0, 2**31 - 1, unit="bytes")] = 64 * 1024 * 1024
    """Largest input payload a job may carry."""
    max_properties_bytes: Annotated[int, Range(2, 16 * 1024 * 1024, unit="bytes")] = 64 * 1024
    """Largest encoded size of one job's properties."""


@dataclass(frozen=True)
class HistoryConfig:
    """Automatic purge of finished jobs (0 disables a limit)."""

    max_age_s: Annotated[float, NON_NEGATIVE_S] = 0.0
    """Delete finished jobs older than this."""
    max_count: Annotated[int, COUNT] = 0
    """Keep at most this many finished jobs (the newest)."""
    state_max_age_s: str = ""
    """Per-state age limits overriding max_age_s, e.g. `SUCCEEDED=3600,ERROR=604800`."""
    state_max_count: str = ""
    """Per-state count limits, e.g. `SUCCEEDED=100000`."""
    purge_interval_s: Annotated[float, POSITIVE_S] = 60.0
    """How often the purge runs."""


@dataclass(frozen=True)
class EventsConfig:
    """Retention of job events (the WatchJobs resume window)."""

    max_age_s: Annotated[float, NON_NEGATIVE_S] = 7 * 24 * 3600.0
    """Delete events older than this; 0: no age limit."""
    max_count: Annotated[int, COUNT] = 1_000_000
    """Keep at most this many events; 0: no count limit."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer loaded from configuration: topic patterns and the callable that handles them."""

    topics: tuple[str, ...]
    """Topic patterns (`a/b`, `a/b/*`, `a/b/**`)."""
    handler: str
    """`package.module:callable`: a function, or a class whose instances have `process`."""

    @classmethod
    def parse(cls, text: str) -> ConsumerSpec:
        """Parse `PATTERN[,PATTERN...]=package.module:callable`."""
        patterns, sep, handler = text.partition("=")
        if not sep or not patterns or ":" not in handler:
            raise ConfigError(
                f"consumer {text!r} is malformed; write TOPIC_PATTERN[,PATTERN...]=package.module:callable"
            )
        return cls(tuple(p.strip() for p in patterns.split(",") if p.strip()), handler.strip())


@dataclass(frozen=True)
class WorkersConfig:
    """Bounds on what one remote worker (WorkerService.Work) may hold."""

    max_concurrency: Annotated[int, Range(1, 10_000)] = 256
    """Most jobs one worker is sent at once: a larger registered concurrency is clamped to this
    (the node's `registered` answer carries the applied one)."""
    max_inflight_bytes: Annotated[int, Range(1, 2**40, unit="bytes")] = 64 * 1024 * 1024
    """Most input payload bytes sent to one worker whose results have not come back; a job that
    would exceed it waits (a worker holding nothing always gets its next job, however large)."""


@dataclass(frozen=True)
class AuditConfig:
    """The audit journal: admin actions with their caller, kept on the node."""

    max_entries: Annotated[int, Range(1, 10_000_000)] = 10_000
    """How many audit entries the node keeps (the newest)."""


CHUNK_BYTES = 1024 * 1024
"""Default chunk size: payloads larger than this travel to and from targets in chunks."""


@dataclass(frozen=True)
class OffloadConfig:
    """Offloading timings."""

    capacity_interval_s: Annotated[float, POSITIVE_S] = 0.5
    """Shortest interval between two updates of the `jobmesh.capacity` property."""
    reassign_grace_s: Annotated[float, NON_NEGATIVE_S] = 10.0
    """How long a target must be gone from the view before its unfinished jobs are reassigned."""
    startup_grace_s: Annotated[float, NON_NEGATIVE_S] = 30.0
    """No reassignment this soon after start (a restarting topology is still forming)."""
    chunk_bytes: Annotated[int, Range(1024, 8 * 1024 * 1024, unit="bytes")] = CHUNK_BYTES
    """Payloads larger than this travel to and from targets in chunks of this size."""
    reconcile_after_s: Annotated[float, POSITIVE_S] = 30.0
    """An origin asks a target about a job it offloaded there that has been quiet this long."""
    confirm_window_s: Annotated[float, POSITIVE_S] = 5.0
    """A target starts another origin's job only if it heard from it this recently (< reassign_grace_s)."""

    @classmethod
    def for_tests(cls) -> OffloadConfig:
        """Short timings for tests."""
        return cls(0.2, 0.5, 1.0, 256 * 1024, reconcile_after_s=0.5, confirm_window_s=0.25)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to run. Build with `load_config`, or a preset."""

    data_dir: Path = Path(".jobmesh")
    """Where the journal and the instance id live."""
    name: str = ""
    """Human-readable instance name; default `<hostname>-<port>`."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR; logs go to stderr."""
    server: ServerConfig = field(default_factory=ServerConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    consumers: tuple[ConsumerSpec, ...] = ()
    """Consumers to load at start."""
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    """Peer discovery, membership and the topology view (node/discovery/config.py)."""
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    """Offloading: capacity publishing and reassignment timings."""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """Cluster PKI, mutual TLS and client tokens."""
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    """Bounds on remote workers."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """The audit journal of admin actions."""
    http: HttpConfig = field(default_factory=HttpConfig)
    """The web console and Prometheus metrics."""

    queues: tuple[QueueConfig, ...] = ()
    """Queue configurations besides the main queue (TOML `[[queues]]`; env/flags: a JSON list)."""

    def main_queue(self) -> QueueConfig:
        """The main queue's configuration, from the `jobs` section."""
        j = self.jobs
        return QueueConfig.create(
            name=MAIN_QUEUE,
            max_parallel=j.max_parallel,
            retries=j.retries,
            retry_delay_s=j.retry_delay_s,
            retry_backoff=j.retry_backoff,
            retry_delay_max_s=j.retry_delay_max_s,
            timeout_s=j.timeout_s,
            keep_jobs=j.keep_jobs,
            sync_isolation=j.sync_isolation,
            prefer_run_on_creation_instance=True,  # one node runs its own jobs as it always did
        )

    @classmethod
    def lan(cls, data_dir: Path = Path(".jobmesh")) -> NodeConfig:
        """Defaults for a node on a LAN."""
        return cls(data_dir=data_dir)

    @classmethod
    def for_tests(cls, data_dir: Path) -> NodeConfig:
        """Short timings, loopback, a free port: for tests and benchmarks."""
        return cls(
            data_dir=data_dir,
            # Pings every 100 ms keep the keepalive path busy in every test; the timeout is
            # generous because a loaded test machine may answer a ping late.
            server=ServerConfig(
                host="127.0.0.1",
                port=0,
                shutdown_grace_s=2.0,
                keepalive_interval_s=0.1,
                keepalive_timeout_s=1.0,
            ),
            jobs=JobsConfig(retry_delay_s=0.05),
            discovery=DiscoveryConfig.for_tests(),
            offload=OffloadConfig.for_tests(),
            history=HistoryConfig(purge_interval_s=0.2),
            http=HttpConfig(port=0),
        )

    def with_overrides(self, values: Mapping[str, object]) -> NodeConfig:
        """A copy with dotted-key settings applied (strings are parsed to the field's type)."""
        config = self
        for key, value in values.items():
            config = _set(config, key.split("."), value, key)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError if a value is out of range (numeric ranges are declared on the fields)."""
        check_ranges(self)
        checks = [
            (bool(self.server.host.strip()), "server.host is empty; use 0.0.0.0, [::] or an address"),
            (
                self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
                f"log_level {self.log_level!r} unknown; use DEBUG, INFO, WARNING or ERROR",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.discovery.validate()
        if 0 < self.offload.reassign_grace_s <= self.offload.confirm_window_s:
            raise ConfigError("offload.confirm_window_s must be less than offload.reassign_grace_s")
        self.main_queue()  # validates the main queue's settings
        names = [q.name for q in self.queues]
        if len(names) != len(set(names)):
            raise ConfigError("a queue name is configured twice")
        parse_state_limits(self.history.state_max_age_s, "history.state_max_age_s")
        parse_state_limits(self.history.state_max_count, "history.state_max_count")


def parse_state_limits(text: str, key: str) -> dict[str, float]:
    """`SUCCEEDED=3600,ERROR=60` -> {"SUCCEEDED": 3600.0, "ERROR": 60.0} (ConfigError if malformed)."""
    limits: dict[str, float] = {}
    history_states = ("SUCCEEDED", "STOPPED", "GIVEN_UP", "ERROR", "DROPPED")
    for item in filter(None, (part.strip() for part in text.split(","))):
        state, sep, value = item.partition("=")
        state = state.strip().upper()
        try:
            if not sep or state not in history_states:
                raise ValueError(item)
            limits[state] = float(value)
            if not 0 <= limits[state] < float("inf"):
                raise ValueError(item)
        except ValueError as e:
            raise ConfigError(
                f"{key}: {item!r} is not STATE=NUMBER (NUMBER >= 0) with STATE one of {', '.join(history_states)}"
            ) from e
    return limits


def _coerce(value: object, kind: Any, key: str) -> object:
    """Parse `value` (often a string from env or flags) as type `kind`."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)  # type: ignore[call-overload]
        if kind is float:
            return float(value)  # type: ignore[arg-type]
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if kind is Path:
            return Path(str(value))
        if isinstance(kind, type) and issubclass(kind, Enum):
            return kind(str(value).lower())
        if typing.get_origin(kind) is tuple and typing.get_args(kind)[0] is str:  # seeds, interfaces
            parts: list[Any] = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            return tuple(str(p).strip() for p in parts if str(p).strip())
        if typing.get_origin(kind) is dict:  # instance properties: a table, or "name=value;name=value"
            if isinstance(value, str):
                pairs = [item.partition("=") for item in value.split(";") if item.strip()]
                if any(not sep for _, sep, _ in pairs):
                    raise ValueError(value)
                return {name.strip(): text for name, _, text in pairs}
            if not isinstance(value, dict) or any(isinstance(v, dict | list) for v in value.values()):
                raise ValueError(value)
            return {str(k): str(v) for k, v in value.items()}
        if kind == tuple[QueueConfig, ...]:
            queues: list[Any] = json.loads(value) if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            return tuple(q if isinstance(q, QueueConfig) else QueueConfig.create(**q) for q in queues)
        if typing.get_origin(kind) is tuple:  # consumers
            items: list[Any] = value.split(";") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            specs = []
            for item in items:
                if isinstance(item, ConsumerSpec):
                    specs.append(item)
                elif isinstance(item, str):
                    if item.strip():
                        specs.append(ConsumerSpec.parse(item.strip()))
                elif isinstance(item, dict) and set(item) == {"topics", "handler"}:
                    specs.append(ConsumerSpec(tuple(item["topics"]), str(item["handler"])))
                else:
                    raise ValueError(item)
            return tuple(specs)
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{key}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from e
    raise ConfigError(f"{key}: unsupported setting type {kind}")


def _set(obj: Any, path: list[str], value: object, key: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown setting {key!r}; known here: {', '.join(sorted(names))}")
    kind = hints[head]
    if dataclasses.is_dataclass(kind):
        if len(path) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its keys ({key}.KEY)")
            section = getattr(obj, head)
            for sub_key, sub_value in value.items():
                section = _set(section, [sub_key], sub_value, f"{key}.{sub_key}")
            return replace(obj, **{head: section})
        return replace(obj, **{head: _set(getattr(obj, head), path[1:], value, key)})
    if len(path) > 1:
        raise ConfigError(f"unknown setting {key!r}: {head} has no sub-settings")
    return replace(obj, **{head: _coerce(value, kind, key)})


def setting_keys(cls: type = NodeConfig, prefix: str = "") -> list[str]:
    """Every dotted setting key, in declaration order."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys += setting_keys(kind, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            keys.append(prefix + f.name)
    return keys


def env_name(key: str) -> str:
    """The environment variable of a setting: `jobs.max_parallel` -> `JOBMESH_JOBS_MAX_PARALLEL`."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from `JOBMESH_*` variables (`JOBMESH_JOBS_MAX_PARALLEL` -> `jobs.max_parallel`)."""
    by_env = {env_name(key): key for key in setting_keys()}
    return {by_env[name]: value for name, value in environ.items() if name in by_env}


def unknown_env_names(environ: Mapping[str, str]) -> list[str]:
    """A warning, naming the closest setting, for each `JOBMESH_*` variable that is neither a
    setting nor a known variable (a typo would otherwise be ignored without a word)."""
    settings = [env_name(key) for key in setting_keys()]
    known = set(settings) | OTHER_ENV_NAMES
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, settings, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else "; see `jobmesh run --help` for the settings"
        warnings.append(f"environment variable {name} is not a Jobmesh setting and is ignored{hint}")
    return warnings


def load_config(
    toml_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    base: NodeConfig | None = None,
) -> NodeConfig:
    """Build the config: `base` (LAN defaults), then the TOML file, then env, then overrides."""
    config = base or NodeConfig.lan()
    if toml_path is not None:
        try:
            data = tomllib.loads(toml_path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {toml_path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {toml_path} is not valid TOML: {e}") from e
        config = config.with_overrides(data)
        if not config.data_dir.is_absolute() and "data_dir" in data:
            # A relative data_dir in a file is relative to that file, not to the cwd.
            config = replace(config, data_dir=toml_path.parent / config.data_dir)
    if environ:
        config = config.with_overrides(env_overrides(environ))
    if overrides:
        config = config.with_overrides(overrides)
    config.validate()
    return config
