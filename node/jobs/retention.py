"""History retention: purges finished jobs and old events on a timer, per the config."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from node.config import EventsConfig, HistoryConfig, parse_state_limits
from node.errors import Unavailable
from node.instance import now_us
from node.journal.events import EventStore
from node.journal.jobs import JobStore
from node.model.job import HISTORY_STATES

log = logging.getLogger(__name__)


class Retention:
    """Applies the history and event limits every `history.purge_interval_s`."""

    def __init__(
        self, jobs: JobStore, events: EventStore, history: HistoryConfig, event_config: EventsConfig
    ):
        self._jobs = jobs
        self._events = events
        self._history = history
        self._event_config = event_config
        self._ages = parse_state_limits(history.state_max_age_s, "history.state_max_age_s")
        self._counts = parse_state_limits(history.state_max_count, "history.state_max_count")
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """True when any limit is set."""
        h, e = self._history, self._event_config
        return bool(h.max_age_s or h.max_count or self._ages or self._counts or e.max_age_s or e.max_count)

    def start(self) -> None:
        """Purge now and then every interval."""
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        """Stop purging."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def purge_once(self) -> int:
        """Apply every limit once; returns how many jobs were deleted."""
        now = now_us()
        deleted = 0
        for state in HISTORY_STATES:
            age = self._ages.get(state.name, self._history.max_age_s)
            count = int(self._counts.get(state.name, 0))
            if age:
                deleted += await self._jobs.purge([state], now - int(age * 1e6), 0)
            if count:
                deleted += await self._jobs.purge([state], None, count)
        if self._history.max_count:
            deleted += await self._jobs.purge(list(HISTORY_STATES), None, self._history.max_count)
        e = self._event_config
        if e.max_age_s or e.max_count:
            await self._events.purge(now - int(e.max_age_s * 1e6) if e.max_age_s else None, e.max_count)
        return deleted

    async def _loop(self) -> None:
        while True:
            try:
                deleted = await self.purge_once()
                if deleted:
                    log.info("history retention deleted %d finished jobs", deleted)
            except Unavailable:
                return
            except Exception:
                log.exception("history retention failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(self._history.purge_interval_s)
