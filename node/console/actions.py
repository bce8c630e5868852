"""The console's actions: each a form POST with the session's CSRF token, allowed when the
session's scopes allow the RPC it calls (the scope table of every client), then that RPC on the
node's own API. Refusals are 403; after success the browser goes back to the page it came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from jobmesh.v1 import jobs_pb2, queues_pb2, schedules_pb2, topics_pb2

from node.console.api import JOBS, QUEUES, SCHEDULES, TOPICS
from node.console.auth import Session
from node.console.html import url
from node.console.views import SETTINGS, safe_next
from node.security.scopes import REQUIRED_SCOPE

if TYPE_CHECKING:
    from node.console.console import Console

VISIBLE_WAIT_S = 3.0
SET_CONSUMPTION = TOPICS + "SetTopicConsumption"
JOB_METHODS = {"stop": JOBS + "StopJob", "retry": JOBS + "RetryJob", "remove": JOBS + "RemoveJob"}
QUEUE_METHODS = {
    "suspend": QUEUES + "SuspendQueue",
    "resume": QUEUES + "ResumeQueue",
    "clear": QUEUES + "ClearQueue",
}
SCHEDULE_METHODS = {
    "suspend": SCHEDULES + "SuspendSchedule",
    "resume": SCHEDULES + "ResumeSchedule",
    "remove": SCHEDULES + "RemoveSchedule",
}

Form = Any  # aiohttp's MultiDictProxy of the posted form
Build = Callable[[Form], Any]


def _field(form: Form, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def _consumption(form: Form) -> topics_pb2.SetTopicConsumptionRequest:
    try:
        setting = int(_field(form, "setting"))
    except ValueError:
        raise web.HTTPBadRequest(text="setting must be a ConsumptionSetting number\n") from None
    if setting not in SETTINGS:
        raise web.HTTPBadRequest(text="setting must be Enabled, Disabled or Exclusive\n")
    return topics_pb2.SetTopicConsumptionRequest(
        instance=_field(form, "instance"),
        topic=_field(form, "topic"),
        setting=topics_pb2.ConsumptionSetting.ValueType(setting),
    )


# action -> (RPC method for the scope check, service, method name, request builder, message)
ACTIONS: dict[str, tuple[str, str, str, Build, str]] = {
    "consumption": (SET_CONSUMPTION, "topics", "SetTopicConsumption", _consumption, "consumption changed"),
    **{
        f"job-{name}": (
            method,
            "jobs",
            method.rsplit("/", 1)[1],
            (lambda cls: lambda f: cls(job_id=_field(f, "job")))(
                {
                    "stop": jobs_pb2.StopJobRequest,
                    "retry": jobs_pb2.RetryJobRequest,
                    "remove": jobs_pb2.RemoveJobRequest,
                }[name]
            ),
            f"job {name} requested"
            if name == "stop"
            else f"job {name}d"
            if name == "remove"
            else "job retried",
        )
        for name, method in JOB_METHODS.items()
    },
    **{
        f"queue-{name}": (
            method,
            "queues",
            method.rsplit("/", 1)[1],
            (lambda cls: lambda f: cls(name=_field(f, "queue")))(
                {
                    "suspend": queues_pb2.SuspendQueueRequest,
                    "resume": queues_pb2.ResumeQueueRequest,
                    "clear": queues_pb2.ClearQueueRequest,
                }[name]
            ),
            {"suspend": "queue suspended", "resume": "queue resumed", "clear": "queue cleared"}[name],
        )
        for name, method in QUEUE_METHODS.items()
    },
    **{
        f"schedule-{name}": (
            method,
            "schedules",
            method.rsplit("/", 1)[1],
            (lambda cls: lambda f: cls(id=_field(f, "schedule")))(
                {
                    "suspend": schedules_pb2.SuspendScheduleRequest,
                    "resume": schedules_pb2.ResumeScheduleRequest,
                    "remove": schedules_pb2.RemoveScheduleRequest,
                }[name]
            ),
            {"suspend": "schedule suspended", "resume": "schedule resumed", "remove": "schedule removed"}[
                name
            ],
        )
        for name, method in SCHEDULE_METHODS.items()
    },
}


class Actions:
    """POST /actions/{action}."""

    def __init__(self, console: Console) -> None:
        self._console = console

    async def _until_visible(self, change: topics_pb2.SetTopicConsumptionRequest) -> None:
        """Wait (briefly) until this node's view shows a consumption change, so the page the
        browser goes back to shows it: instance properties reach the view a moment later."""
        deadline = time.monotonic() + VISIBLE_WAIT_S
        while time.monotonic() < deadline:
            for row in await self._console.api.consumption():
                if change.instance in (row.instance_id, row.name):
                    settings = {s.topic: s.setting for s in row.settings}
                    if settings.get(change.topic, topics_pb2.CONSUMPTION_SETTING_ENABLED) == (
                        change.setting or topics_pb2.CONSUMPTION_SETTING_ENABLED
                    ):
                        return
            await asyncio.sleep(0.05)

    async def handle(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Check CSRF and scope, call the RPC, go back."""
        action = ACTIONS.get(request.match_info["action"])
        if action is None:
            raise web.HTTPNotFound(text="no such action\n")
        method, service, rpc, build, message = action
        form = await request.post()
        if not self._console.auth.csrf_ok(session, _field(form, "csrf")):
            return web.Response(status=403, text="CSRF token missing or wrong; reload the page\n")
        if not self._console.auth.may(session, method):
            missing = session.principal.missing(REQUIRED_SCOPE.get(method, "admin"))
            return web.Response(
                status=403, text=f"{session.principal.name} may not call {method} (needs {missing})\n"
            )
        request_message = build(form)
        await self._console.api.call(service, rpc, request_message, token=session.bearer)
        if isinstance(request_message, topics_pb2.SetTopicConsumptionRequest):
            await self._until_visible(request_message)
        back = safe_next(_field(form, "back") or "/")
        path, _, _ = back.partition("?")
        if request.match_info["action"] == "job-remove":
            path = "/jobs"
        raise web.HTTPSeeOther(url(path, done=message))
