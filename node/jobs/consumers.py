"""Consumers: the code that processes jobs, registered for topic patterns.

A consumer is a callable `handler(job, context)` returning a `JobResult` or None (None
means succeeded), plain or `async def`; or a class whose instances have such a
`process` method. Raising an exception ends the job in ERROR with the exception's text.
Sync consumers run in the node's consumer thread pool, async ones on the event loop.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from node.errors import ConsumerLoadError, InvalidArgument
from node.jobs.context import JobContext
from node.model.job import Job, JobResult
from node.topics import TopicPattern

Handler: TypeAlias = Callable[[Job, JobContext], "JobResult | Awaitable[JobResult | None] | None"]


@dataclass(frozen=True)
class Consumer:
    """A handler registered for topic patterns."""

    patterns: tuple[TopicPattern, ...]
    handler: Handler = field(repr=False)
    name: str
    is_async: bool


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

    def register(self, patterns: Iterable[str], handler: Any, name: str | None = None) -> Consumer:
        """Register `handler` (function, coroutine function, or class) for topic patterns."""
        parsed = tuple(TopicPattern.parse(p) for p in patterns)
        if not parsed:
            raise InvalidArgument("a consumer needs at least one topic pattern")
        label = name or str(getattr(handler, "__qualname__", repr(handler)))
        resolved, is_async = _resolve_callable(handler, label)
        consumer = Consumer(parsed, resolved, label, is_async)
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
        best: tuple[tuple[int, int], Consumer] | None = None
        for consumer in self._consumers:
            for pattern in consumer.patterns:
                if pattern.matches(topic) and (best is None or pattern.specificity > best[0]):
                    best = (pattern.specificity, consumer)
        found = best[1] if best else None
        if len(self._cache) < 100_000:
            self._cache[topic] = found
        return found

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
