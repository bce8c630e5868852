"""grpc's own log lines about calls that ended from outside: one line each, not a traceback.

- When a client closes a call before the node's response is sent (it went away, or the response
  exceeds the client's receive limit: a payload over gRPC's default 4 MiB), grpc's C core fails
  the send and grpc logs "ExecuteBatchError raised in core by servicer method [...]" at ERROR with
  a traceback. Nothing is wrong in the node; the operator should see why the client got nothing.
- When the server stops, grpc cancels its own task of a call that is just finishing and logs
  "Exception not handled ... CancelledError" at ERROR, with a traceback of grpc's frames only.
  The node ended that call itself (streams end at shutdown, see shutdown.py); it is not an error.
"""

from __future__ import annotations

import asyncio
import logging
import re

GRPC_LOGGER = "grpc._cython.cygrpc"
_SEND_FAILED = re.compile(r"ExecuteBatchError raised in core by servicer method \[(?P<method>[^\]]*)\]")
_NOT_HANDLED = re.compile(
    r"Exception not handled by _handle_exceptions in servicer method \[(?P<method>[^\]]*)\]"
)


class ClientGoneFilter(logging.Filter):
    """Rewrites those two grpc records into one line each (no traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if match := _SEND_FAILED.search(message):
            _rewrite(
                record,
                logging.WARNING,
                "could not send the response of %s: the client closed the call first (it went away, or "
                "the response exceeds its receive limit; see the README on message sizes)",
                match["method"],
            )
        elif (match := _NOT_HANDLED.search(message)) and _is_cancellation(record):
            _rewrite(record, logging.INFO, "call %s was cancelled as the server stopped", match["method"])
        return True


def _is_cancellation(record: logging.LogRecord) -> bool:
    return record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)


def _rewrite(record: logging.LogRecord, level: int, text: str, method: str) -> None:
    record.msg, record.args = text, (method,)
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.exc_info = record.exc_text = None


def install_client_gone_filter() -> None:
    """Install the filter on grpc's logger once per process (idempotent)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, ClientGoneFilter) for f in logger.filters):
        logger.addFilter(ClientGoneFilter())
