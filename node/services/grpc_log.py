"""grpc's own log lines about calls a client gave up on: one warning line, not a traceback.

When a client closes a call before the node's response is sent (it went away, or the response
exceeds the client's receive limit: a payload over gRPC's default 4 MiB), grpc's C core fails
the send and grpc logs "ExecuteBatchError raised in core by servicer method [...]" at ERROR with
a traceback. Nothing is wrong in the node; the operator should see why the client got nothing.
"""

from __future__ import annotations

import logging
import re

GRPC_LOGGER = "grpc._cython.cygrpc"
_SEND_FAILED = re.compile(r"ExecuteBatchError raised in core by servicer method \[(?P<method>[^\]]*)\]")


class ClientGoneFilter(logging.Filter):
    """Rewrites grpc's failed-send record into one WARNING line (no traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _SEND_FAILED.search(record.getMessage())
        if match is None:
            return True
        record.msg = (
            "could not send the response of %s: the client closed the call first (it went away, or the "
            "response exceeds its receive limit; see the README on message sizes)"
        )
        record.args = (match["method"],)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def install_client_gone_filter() -> None:
    """Install the filter on grpc's logger once per process (idempotent)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, ClientGoneFilter) for f in logger.filters):
        logger.addFilter(ClientGoneFilter())
