"""How healthy this node itself looks to the membership protocol: Lifeguard's local health
multiplier (memberlist's "awareness").

A node starved of CPU (a loaded machine, a busy event loop) sees its own probes time out and
would suspect healthy peers, and gets suspected itself. So each sign of that raises a score: a
probe of a peer that some helper could reach (or that no helper answered about), and every
suspicion of this node it had to refute. Each probe answered in time lowers it. Probe timeouts
and the probe interval are multiplied by `score + 1`: a struggling node waits longer and probes
less instead of spreading false suspicions, and a healthy node (score 0) keeps the configured
timings, so detection stays as fast as configured where nothing is wrong.
"""

from __future__ import annotations

MAX_SCORE = 8
"""Timings are stretched at most `MAX_SCORE` times."""


class LocalHealth:
    """A score from 0 (healthy) to `MAX_SCORE - 1`. Used from the event loop only."""

    def __init__(self, max_score: int = MAX_SCORE) -> None:
        self._max = max_score
        self.score = 0

    def apply(self, delta: int) -> None:
        """Raise (positive `delta`) or lower the score, within its bounds."""
        self.score = min(self._max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """`seconds` stretched by the current score."""
        return seconds * (self.score + 1)
