"""Consumers: the code that processes jobs, registered for topic patterns.

A consumer is a callable `handler(job, context)` returning a `JobResult` or None (None
means succeeded), plain or `async def`; or a class whose instances have such a
`process` method. Raising an exception ends the job in ERROR with the exception's text.
Sync consumers run in the node's consumer thread pool (or, in a queue with `sync_isolation =
"process"`, in its worker processes: node.jobs.processes), async ones on the event loop.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from node.errors import ConsumerLoadError, InvalidArgument
from node.jobs.context import JobContext
from node.model.job import Job, JobResult
from node.topics import TopicPattern

Handler: TypeAlias = Callable[[Job, JobContext], "JobResult | Awaitable[JobResult | None] | None"]

Admit: TypeAlias = Callable[[str, int], bool]
"""`admit(topic, payload_bytes)`: whether a claim may start one more job of `topic` with that
much input now (see
`ConsumerRegistry.admission`). Called on the journal's writer thread, inside the claim."""


@dataclass(frozen=True)
class Consumer:
    """A handler registered for topic patterns."""

    patterns: tuple[TopicPattern, ...]
    handler: Handler = field(repr=False)
    name: str
    is_async: bool
    dispatches: bool = False
    """True: the handler itself tells the context when the job reached whoever runs it
    (`JobContext.mark_dispatched`; remote workers), so the attempt timeout starts then."""
    spec: str | None = None
    """`package.module:callable` naming the handler, when it can be imported by that name (what a
    worker process of a `sync_isolation = "process"` queue loads); None: it cannot."""


def _resolve_callable(target: Any, name: str) -> tuple[Handler, bool]:
    if inspect.isclass(target):
        try:
            instance = target()
        except Exception as e:
            raise ConsumerLoadError(f"consumer {name}: creating {target.__name__}() failed: {e}") from e
        process = getattr(instance, "process", None)
        if not callable(process):
            raise ConsumerLoadError(
                f"consumer {name}: class {target.__name__} has no process(job, context) method"
            )
        target = process
    if not callable(target):
        raise ConsumerLoadError(f"consumer {name} is not callable")
    # An object whose __call__ is `async def` is a coroutine consumer too.
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - we need the method, not callable()
    )
    return target, is_async


class Capacity(Protocol):
    """Consumers with a bounded number of slots (remote workers): what a claim may start.

    Every method runs on the event loop; the `Admit` an admission returns runs on the
    journal's writer thread and reads only its own snapshot.
    """

    def admission(self, consumers: Sequence[Consumer]) -> Admit | None:
        """An `Admit` for one claim, from the free slots now less the claimed jobs not yet
        settled (None: nothing is bounded)."""
        ...

    def claimed(self, jobs: Sequence[Job]) -> None:
        """Jobs a claim started: their slots are spoken for until `settled`."""
        ...

    def settled(self, job_id: str) -> None:
        """The consumer has the job now, or its attempt ended: its slot is no longer pending."""
        ...


def spec_of(handler: Any) -> str | None:
    """`module:qualname` of a function or class defined at a module's top level, else None
    (lambdas, nested functions, bound methods, callable instances, `__main__`'s objects)."""
    if inspect.ismethod(handler) or not (inspect.isfunction(handler) or inspect.isclass(handler)):
        return None
    module, qualname = handler.__module__, handler.__qualname__
    if not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def resolve_consumer(spec: str) -> Handler:
    """The handler `spec` names, as `ConsumerRegistry.register` would run it (a class is
    instantiated and its `process` used); for worker processes. Raises ConsumerLoadError."""
    handler, is_async = _resolve_callable(load_handler(spec), spec)
    if is_async:
        raise ConsumerLoadError(f"consumer {spec!r} is async; worker processes run sync consumers only")
    return handler


def find_consumer(consumers: Sequence[Consumer], topic: str) -> Consumer | None:
    """The consumer among `consumers` whose matching pattern is most specific, or None."""
    best: tuple[tuple[int, int], Consumer] | None = None
    for consumer in consumers:
        for pattern in consumer.patterns:
            if pattern.matches(topic) and (best is None or pattern.specificity > best[0]):
                best = (pattern.specificity, consumer)
    return best[1] if best else None


def load_handler(spec: str) -> Any:
    """Import `package.module:callable` and return the object it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConsumerLoadError(f"consumer {spec!r} is malformed; write package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConsumerLoadError(f"consumer {spec!r}: cannot import {module_name}: {e}") from e
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as e:
            raise ConsumerLoadError(f"consumer {spec!r}: {module_name} has no attribute {attribute}") from e
    return target


class ConsumerRegistry:
    """The consumers of one node; finds the most specific one for a topic."""

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []
        self._cache: dict[str, Consumer | None] = {}
        self._listeners: list[Callable[[], None]] = []
        self._capacity_listeners: list[Callable[[], None]] = []
        self.capacity: Capacity | None = None
        """Set by a provider of bounded consumers (node.jobs.remote.RemoteWorkers)."""

    def register(
        self,
        patterns: Iterable[str],
        handler: Any,
        name: str | None = None,
        *,
        dispatches: bool = False,
        spec: str | None = None,
    ) -> Consumer:
        """Register `handler` (function, coroutine function, or class) for topic patterns
        (`dispatches`, `spec`: see `Consumer`; the spec defaults to the handler's own
        `module:qualname` when it has one)."""
        parsed = tuple(TopicPattern.parse(p) for p in patterns)
        if not parsed:
            raise InvalidArgument("a consumer needs at least one topic pattern")
        label = name or str(getattr(handler, "__qualname__", repr(handler)))
        resolved, is_async = _resolve_callable(handler, label)
        consumer = Consumer(parsed, resolved, label, is_async, dispatches, spec or spec_of(handler))
        self._consumers.append(consumer)
        self._changed()
        return consumer

    def unregister(self, consumer: Consumer) -> None:
        """Remove a consumer; jobs it would have taken wait for another one."""
        self._consumers.remove(consumer)
        self._changed()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the registering thread) after every change."""
        self._listeners.append(listener)

    def find(self, topic: str) -> Consumer | None:
        """The consumer whose matching pattern is most specific, or None."""
        if topic in self._cache:
            return self._cache[topic]
        found = find_consumer(self._consumers, topic)
        if len(self._cache) < 100_000:
            self._cache[topic] = found
        return found

    # --- capacity (on the loop) ---

    def admission(self) -> Admit | None:
        """What a claim may start now, given bounded consumers (None: anything): a snapshot
        taken on the loop, used by one claim on the writer thread. A job of a topic whose
        consumer has no free slot stays QUEUED, so ACTIVE means a consumer holds it."""
        capacity = self.capacity
        return None if capacity is None else capacity.admission(tuple(self._consumers))

    def claimed(self, jobs: Sequence[Job]) -> None:
        """Jobs a claim just started (on the loop, before anything else may claim): their
        slots count as taken until their consumer has them (`settled`)."""
        if self.capacity is not None and jobs:
            self.capacity.claimed(jobs)

    def settled(self, job_id: str) -> None:
        """A claimed job's attempt ended, or its consumer got it (on the loop)."""
        if self.capacity is not None:
            self.capacity.settled(job_id)

    def add_capacity_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the loop) whenever a bounded consumer's free slots change."""
        self._capacity_listeners.append(listener)

    def capacity_changed(self) -> None:
        """A bounded consumer has more (or fewer) free slots: claims may start more now."""
        for listener in self._capacity_listeners:
            listener()

    @property
    def patterns(self) -> Sequence[TopicPattern]:
        """Every registered pattern."""
        return [p for c in self._consumers for p in c.patterns]

    def __len__(self) -> int:
        return len(self._consumers)

    def _changed(self) -> None:
        self._cache.clear()
        for listener in self._listeners:
            listener()
