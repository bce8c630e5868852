"""A gRPC response stream read by a thread of its own, so a test takes messages with a deadline.

Shared by `watching.Watcher` (WatchJobs) and `worker_stream.WorkerStream` (WorkerService.Work).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc

_END = object()


class StreamReader:
    """Moves every message of `call` into a queue; notes how the stream ended."""

    def __init__(self, call: Iterable[Any], name: str, on_end: Callable[[], None] | None = None) -> None:
        self.error: grpc.RpcError | None = None
        """The status the stream failed with; None while it runs or once it ended with OK."""
        self.ended = threading.Event()
        self._call = call
        self._on_end = on_end
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self._queue.put(message)
        except grpc.RpcError as e:
            self.error = e
        finally:
            if self._on_end is not None:
                self._on_end()
            self._queue.put(_END)
            self.ended.set()

    def take(self, timeout: float, what: str = "message") -> Any:
        """The next message; AssertionError if none comes in time or the stream ended (now or before)."""
        try:
            message = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {what} within {timeout:.1f}s") from None
        if message is _END:
            self._queue.put(_END)  # every later take fails the same way
            raise AssertionError(f"the stream ended before a {what}: {self.error!r}")
        return message

    def poll(self, within_s: float) -> Any | None:
        """The next message if one comes within `within_s`, else None (the end counts as none)."""
        try:
            message = self._queue.get(timeout=within_s)
        except queue.Empty:
            return None
        if message is _END:
            self._queue.put(_END)
            return None
        return message

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` for the reading thread to end (after the stream ends)."""
        self._thread.join(timeout)
