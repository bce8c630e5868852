"""Topic consumption rules: per instance and topic pattern ENABLED, DISABLED or EXCLUSIVE.

An instance publishes its rules as instance properties (`jobmesh.topics.disabled`,
`jobmesh.topics.exclusive`); origins read them from the view when they pick a target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from node.topics import TopicPattern

DISABLED_PROPERTY = "jobmesh.topics.disabled"
"""Topic patterns the instance does not take (comma-separated, sorted)."""
EXCLUSIVE_PROPERTY = "jobmesh.topics.exclusive"
"""If set: the only topic patterns the instance takes (comma-separated, sorted)."""


class ConsumptionSetting(IntEnum):
    """Whether an instance takes jobs of a topic pattern; values equal the proto enum's."""

    ENABLED = 1
    DISABLED = 2
    EXCLUSIVE = 3


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p for p in (value or "").split(",") if p)


@dataclass(frozen=True)
class ConsumptionRules:
    """The settings of one instance, as matching rules."""

    disabled: tuple[str, ...] = ()
    exclusive: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, ConsumptionSetting]) -> ConsumptionRules:
        """Rules from pattern -> setting."""
        return cls(
            tuple(sorted(p for p, s in settings.items() if s is ConsumptionSetting.DISABLED)),
            tuple(sorted(p for p, s in settings.items() if s is ConsumptionSetting.EXCLUSIVE)),
        )

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> ConsumptionRules:
        """Rules an instance published."""
        return cls(_split(properties.get(DISABLED_PROPERTY)), _split(properties.get(EXCLUSIVE_PROPERTY)))

    def allows(self, topic: str) -> bool:
        """True if the instance may take jobs of `topic` (given a consumer for it)."""
        if any(TopicPattern.parse(p).matches(topic) for p in self.disabled):
            return False
        return not self.exclusive or any(TopicPattern.parse(p).matches(topic) for p in self.exclusive)

    def properties(self) -> dict[str, str]:
        """The instance properties that publish these rules (empty values: remove)."""
        return {DISABLED_PROPERTY: ",".join(self.disabled), EXCLUSIVE_PROPERTY: ",".join(self.exclusive)}

    def settings(self) -> dict[str, ConsumptionSetting]:
        """pattern -> setting, for the settings other than ENABLED."""
        found = {p: ConsumptionSetting.DISABLED for p in self.disabled}
        found.update({p: ConsumptionSetting.EXCLUSIVE for p in self.exclusive})
        return found
