"""Instance properties: small string key/values of this node that every peer sees.

Sling's PropertyProvider, reshaped: values are set directly (`set`, `update`, `remove`) or
come from providers, callables returning a mapping that are re-read periodically and on
`refresh()`. A provider's names win over nothing; values set directly win over providers'.
Names match `[A-Za-z0-9._-]+`; the whole set has a size limit. Invalid input raises
InvalidArgument and changes nothing; it is never dropped silently.

The node publishes `jobmesh.topics` (the topic patterns its consumers take, comma-separated);
offloading reads it with `parse_topics`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping

from node.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
RESERVED_PREFIX = "jobmesh."
"""Names the node itself publishes; the gRPC API refuses to set them."""
TOPICS_PROPERTY = "jobmesh.topics"
"""Topic patterns this node's consumers take, comma-separated and sorted."""
_NAME = re.compile(r"[A-Za-z0-9._-]+")

PropertyProvider = Callable[[], Mapping[str, str]]
"""Returns some properties; called on the node's event loop, so it must be quick."""


def validate_name(name: object, field: str = "property") -> None:
    """Raise InvalidArgument unless `name` is a valid instance property name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{field}: instance property name {name!r} is invalid; names match [A-Za-z0-9._-]+ "
            f"and have at most {MAX_NAME_LENGTH} characters"
        )


def encoded_size(properties: Mapping[str, str]) -> int:
    """Bytes the properties take on the wire: UTF-8 names plus values."""
    return sum(len(name.encode()) + len(value.encode()) for name, value in properties.items())


def validate_properties(properties: Mapping[str, object], max_bytes: int, field: str = "properties") -> None:
    """Raise InvalidArgument unless every name and value is valid and the whole set fits `max_bytes`."""
    for name, value in properties.items():
        validate_name(name, field)
        if not isinstance(value, str):
            raise InvalidArgument(
                f"{field}[{name!r}]: instance property values are strings, not {type(value).__name__}"
            )
    size = encoded_size(properties)  # type: ignore[arg-type]  # all values are str (checked above)
    if size > max_bytes:
        raise InvalidArgument(
            f"{field}: instance properties would take {size} bytes; the limit is {max_bytes} "
            "(discovery.max_properties_bytes)"
        )


def format_topics(patterns: Iterable[str]) -> str:
    """The `jobmesh.topics` value for these topic patterns."""
    return ",".join(sorted(set(patterns)))


def parse_topics(value: str | None) -> tuple[str, ...]:
    """Topic patterns from a `jobmesh.topics` value (empty for None or '')."""
    return tuple(p for p in (value or "").split(",") if p)


class ProviderHandle:
    """Returned by `InstanceProperties.add_provider`; `remove()` withdraws the provider's names."""

    def __init__(self, owner: InstanceProperties, key: int) -> None:
        self._owner = owner
        self._key = key

    def remove(self) -> None:
        """Stop using the provider and withdraw its properties."""
        self._owner._remove_provider(self._key)


class InstanceProperties:
    """The instance properties of this node. Thread-safe: call it from any thread.

    Change listeners (`add_listener`) run on the thread that made the change, after it
    is applied, outside the internal lock.
    """

    def __init__(self, max_bytes: int, initial: Mapping[str, str] | None = None) -> None:
        validate_properties(initial or {}, max_bytes, "discovery.properties")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._direct: dict[str, str] = dict(initial or {})
        self._providers: dict[int, tuple[PropertyProvider, dict[str, str]]] = {}
        self._next_key = 0
        self._effective: dict[str, str] = dict(self._direct)
        self._listeners: list[Callable[[], None]] = []

    # --- reading ---

    def get(self, name: str) -> str | None:
        """The current value of `name`, or None."""
        with self._lock:
            return self._effective.get(name)

    def snapshot(self) -> dict[str, str]:
        """A copy of all current properties."""
        with self._lock:
            return dict(self._effective)

    # --- writing ---

    def set(self, name: str, value: str) -> None:
        """Set one property (raises InvalidArgument for a bad name, a non-string value, or too much data)."""
        self.update({name: value})

    def remove(self, name: str) -> None:
        """Remove a property set with `set` (unknown names are ignored)."""
        self.update({}, remove=[name])

    def update(self, values: Mapping[str, str], remove: Iterable[str] = ()) -> dict[str, str]:
        """Remove `remove`, then set `values`, atomically; returns all properties afterwards."""
        validate_properties(values, self.max_bytes)
        removed = set(remove)
        with self._lock:
            direct = {k: v for k, v in self._direct.items() if k not in removed}
            direct.update(values)
            changed = self._apply_locked(direct, None)
            result = dict(self._effective)
        if changed:
            self._notify()
        return result

    def add_provider(self, provider: PropertyProvider) -> ProviderHandle:
        """Publish the properties `provider()` returns; it is called now (errors raise) and on refresh."""
        values = dict(provider())
        validate_properties(values, self.max_bytes, f"provider {provider!r}")
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._providers[key] = (provider, {})
            try:
                changed = self._apply_locked(self._direct, (key, values))
            except InvalidArgument:
                del self._providers[key]
                raise
        if changed:
            self._notify()
        return ProviderHandle(self, key)

    def refresh(self) -> None:
        """Re-read every provider now. A provider that fails or returns bad data keeps its old values."""
        with self._lock:
            providers = list(self._providers.items())
        changed = False
        for key, (provider, _) in providers:
            try:
                values = dict(provider())
                validate_properties(values, self.max_bytes, f"provider {provider!r}")
                with self._lock:
                    if key in self._providers:
                        changed |= self._apply_locked(self._direct, (key, values))
            except Exception as e:  # a provider's bug must not stop the others or the node
                log.error(
                    "instance property provider %r failed; keeping its previous values: %s", provider, e
                )
        if changed:
            self._notify()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change (on the changing thread)."""
        self._listeners.append(listener)

    # --- internals ---

    def _remove_provider(self, key: int) -> None:
        with self._lock:
            if self._providers.pop(key, None) is None:
                return
            changed = self._apply_locked(self._direct, None)
        if changed:
            self._notify()

    def _apply_locked(self, direct: dict[str, str], provided: tuple[int, dict[str, str]] | None) -> bool:
        """Compute the effective set with `direct` and a provider's new values; commit if it fits."""
        providers = dict(self._providers)
        if provided is not None:
            key, values = provided
            providers[key] = (providers[key][0], values)
        effective: dict[str, str] = {}
        for _, values in providers.values():
            effective.update(values)
        effective.update(direct)
        validate_properties(effective, self.max_bytes)
        self._direct = direct
        self._providers = providers
        changed = effective != self._effective
        self._effective = effective
        return changed

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
