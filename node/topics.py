"""Topics (`a/b/c`) and topic patterns (`a/b` exact, `a/b/*` children, `a/b/**` descendants)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.errors import InvalidArgument

MAX_TOPIC_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_topic(topic: str, field: str = "topic", shown: str | None = None) -> str:
    """Return `topic` if it is a valid topic, else raise InvalidArgument naming `field` and
    `shown` (default: the topic itself; a pattern shows its whole text)."""
    if not topic:
        raise InvalidArgument(f"{field} is empty; a topic looks like 'images/resize'")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidArgument(f"{field} is {len(topic)} characters long; the limit is {MAX_TOPIC_LENGTH}")
    for segment in topic.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidArgument(
                f"{field} {shown or topic!r} is invalid: segments are non-empty and use only letters, digits, "
                "'.', '_' and '-', separated by single '/'"
            )
    return topic


@dataclass(frozen=True)
class TopicPattern:
    """A pattern over topics: exact, direct children (`/*`) or all descendants (`/**`)."""

    text: str
    base: str
    kind: str  # "exact" | "children" | "descendants"

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        """Parse `a/b`, `a/b/*`, `a/b/**`, or `*`/`**` alone (every topic)."""
        if text in ("*", "**"):
            return cls(text, "", "children" if text == "*" else "descendants")
        for suffix, kind in (("/**", "descendants"), ("/*", "children")):
            if text.endswith(suffix):
                base = text[: -len(suffix)]
                validate_topic(base, "topic pattern", shown=text)
                return cls(text, base, kind)
        validate_topic(text, "topic pattern")
        return cls(text, text, "exact")

    def matches(self, topic: str) -> bool:
        """True when `topic` falls under this pattern."""
        if self.kind == "exact":
            return topic == self.base
        if self.base:
            if not topic.startswith(self.base + "/"):
                return False
            rest = topic[len(self.base) + 1 :]
        else:
            rest = topic
        return self.kind == "descendants" or "/" not in rest

    @property
    def specificity(self) -> tuple[int, int]:
        """Sort key: higher is more specific (exact beats `/*` beats `/**`, deeper beats shallower)."""
        depth = len(self.base.split("/")) if self.base else 0
        rank = {"exact": 2, "children": 1, "descendants": 0}[self.kind]
        return (depth, rank)

    def __str__(self) -> str:
        return self.text
