"""Job ids: UUIDv7 strings, unique and strictly increasing within a process.

The 48-bit millisecond timestamp leads, so ids sort by creation time as plain strings;
the 12-bit `rand_a` field is a counter within one millisecond (RFC 9562, method 1), and
62 random bits keep ids of different nodes apart.
"""

from __future__ import annotations

import os
import threading
import time


class JobIdGenerator:
    """Thread-safe source of monotonic UUIDv7 strings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next_id(self) -> str:
        """A new id, greater than every id this generator returned before."""
        return self.next_ids(1)[0]

    def next_ids(self, count: int) -> list[str]:
        """`count` new ids in increasing order."""
        with self._lock:
            ids = []
            randomness = os.urandom(8 * count)
            for index in range(count):
                now_ms = time.time_ns() // 1_000_000
                if now_ms > self._last_ms:
                    self._last_ms, self._counter = now_ms, 0
                else:
                    self._counter += 1
                    if self._counter > 0xFFF:  # counter overflow: borrow the next millisecond
                        self._last_ms, self._counter = self._last_ms + 1, 0
                rand_b = int.from_bytes(randomness[8 * index : 8 * index + 8], "big") & ((1 << 62) - 1)
                value = (self._last_ms << 80) | (0x7 << 76) | (self._counter << 64) | (0b10 << 62) | rand_b
                text = f"{value:032x}"
                ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
            return ids
