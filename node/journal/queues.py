"""Persisted queue state: suspension (survives restarts) and queue configs set over the API."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from node.journal.journal import Journal


@dataclass(frozen=True)
class StoredQueue:
    """What the journal keeps about one queue."""

    name: str
    suspended: bool
    config_json: str | None


class QueueStore:
    """Queue rows of the journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def load(self) -> dict[str, StoredQueue]:
        """Every stored queue by name."""
        rows = await self.journal.read(
            lambda c: c.execute("SELECT name, suspended, config FROM queues").fetchall()
        )
        return {name: StoredQueue(name, bool(suspended), config) for name, suspended, config in rows}

    async def set_suspended(self, name: str, suspended: bool) -> None:
        """Persist a queue's suspension."""
        await self.journal.write(
            lambda c: c.execute(
                "INSERT INTO queues (name, suspended) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET suspended = excluded.suspended",
                (name, int(suspended)),
            )
        )

    async def save_config(self, name: str, config: dict[str, object] | None) -> None:
        """Persist (or with None, forget) a queue config set over the API."""
        text = None if config is None else json.dumps(config, sort_keys=True)

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queues (name, config) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                (name, text),
            )

        await self.journal.write(update)
