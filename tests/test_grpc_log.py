"""grpc's own error records about calls that ended from outside become one line, no traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from node.services.grpc_log import GRPC_LOGGER, install_client_gone_filter


def emit(caplog: pytest.LogCaptureFixture, message: str, error: BaseException) -> logging.LogRecord:
    install_client_gone_filter()
    with caplog.at_level(logging.DEBUG, logger=GRPC_LOGGER):
        try:
            raise error
        except BaseException:
            logging.getLogger(GRPC_LOGGER).exception(message)
    return caplog.records[-1]


def test_a_call_cancelled_as_the_server_stops_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    record = emit(
        caplog,
        "Exception not handled by _handle_exceptions in servicer method [/jobmesh.v1.WorkerService/Work]",
        asyncio.CancelledError(),
    )
    assert (record.levelname, record.getMessage(), record.exc_info) == (
        "INFO",
        "call /jobmesh.v1.WorkerService/Work was cancelled as the server stopped",
        None,
    )


def test_any_other_unhandled_exception_keeps_its_error_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = emit(
        caplog, "Exception not handled by _handle_exceptions in servicer method [/x.Y/Z]", ValueError("bug")
    )
    assert record.levelname == "ERROR"
    assert record.exc_info is not None


def test_a_response_the_client_refused_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    record = emit(
        caplog,
        "ExecuteBatchError raised in core by servicer method [/jobmesh.v1.JobService/GetJob]",
        RuntimeError(),
    )
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("could not send the response of /jobmesh.v1.JobService/GetJob")
    assert record.exc_info is None
