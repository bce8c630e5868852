"""Topic consumption: per instance and topic pattern ENABLED, DISABLED or EXCLUSIVE.

Settings live in the instance's journal and are published as instance properties
(`jobmesh.topics.disabled`, `jobmesh.topics.exclusive`), so origins apply them when they
pick a target, and this node applies them to the jobs it assigns to itself.
"""

from __future__ import annotations

import sqlite3

from node.journal.journal import Journal
from node.model.consumption import ConsumptionRules, ConsumptionSetting


class ConsumptionStore:
    """This node's settings in its journal (table `topic_consumption`)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def load(self) -> ConsumptionRules:
        """The persisted rules."""
        rows = await self.journal.read(
            lambda c: c.execute("SELECT pattern, setting FROM topic_consumption").fetchall()
        )
        return ConsumptionRules.from_settings({p: ConsumptionSetting(s) for p, s in rows})

    async def set(self, pattern: str, setting: ConsumptionSetting) -> ConsumptionRules:
        """Persist one setting (ENABLED deletes it); returns the new rules."""

        def update(conn: sqlite3.Connection) -> None:
            if setting is ConsumptionSetting.ENABLED:
                conn.execute("DELETE FROM topic_consumption WHERE pattern = ?", (pattern,))
            else:
                conn.execute(
                    "INSERT INTO topic_consumption (pattern, setting) VALUES (?, ?) "
                    "ON CONFLICT (pattern) DO UPDATE SET setting = excluded.setting",
                    (pattern, int(setting)),
                )

        await self.journal.write(update)
        return await self.load()
