"""Offloading configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from node.ranges import NON_NEGATIVE_S, POSITIVE_S, Range
from node.transfer.chunks import CHUNK_BYTES


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

    @classmethod
    def for_tests(cls) -> OffloadConfig:
        """Short timings for tests."""
        return cls(capacity_interval_s=0.2, reassign_grace_s=0.5, startup_grace_s=1.0, chunk_bytes=256 * 1024)
