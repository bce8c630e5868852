"""The console's pages: server-rendered HTML from the node's own API, one bookmarkable URL each.

Every page needs a signed-in session (`read` sees everything); a page shows an action's
control only when the session's scopes allow the RPC behind it. The POST side is
`node.console.actions`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from jobmesh.v1 import jobs_pb2

from node.console import actions, cluster_views, history, views
from node.console.api import ApiError
from node.console.auth import SESSION_COOKIE, SIGNIN_COOKIE, Session
from node.console.html import esc, page, state_name, url, when
from node.console.live import MAX_STREAM_JOBS
from node.journal.events import EventStore
from node.security import tokens

if TYPE_CHECKING:
    from node.console.console import Console

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE = 25
Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def add_pages(app: web.Application, console: Console) -> None:
    """Add every page's route, the static files, sign-in and the event streams."""
    pages = Pages(console)
    app.router.add_static("/static", STATIC_DIR, append_version=False)
    app.router.add_get("/signin", pages.signin_form)
    app.router.add_post("/signin", pages.signin)
    app.router.add_post("/signout", pages.signout)
    for path, handler in (
        ("/", pages.overview),
        ("/topology", pages.topology),
        ("/offloading", pages.offloading),
        ("/jobs", pages.jobs),
        ("/jobs/{id}", pages.job),
        ("/jobs/{id}/payload", pages.payload),
        ("/jobs/{id}/output", pages.payload),
        ("/queues", pages.queues),
        ("/schedules", pages.schedules),
        ("/workers", pages.workers),
        ("/streams/jobs", pages.job_stream),
        ("/streams/topology", pages.topology_stream),
        ("/streams/overview", pages.overview_stream),
    ):
        app.router.add_get(path, pages.signed_in(handler))
    app.router.add_post("/actions/{action}", pages.signed_in(actions.Actions(console).handle))


class Pages:
    """GET handlers."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.auth = console.auth
        self.api = console.api
        self.events = EventStore(console.parts.journal)

    def signed_in(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """`handler` for signed-in sessions; others are sent to the sign-in page."""

        async def run(request: web.Request) -> web.StreamResponse:
            session = self.auth.session(request)
            if session is None:
                if request.method != "GET" or request.path.startswith("/streams/"):
                    return web.Response(status=401, text="sign in first\n")
                raise web.HTTPSeeOther(f"/signin?next={request.path_qs}")
            try:
                return await handler(request, session)
            except ApiError as e:
                return web.Response(
                    status=views.http_status(e),
                    text=page("Error", f"<p>{esc(e.message)}</p>", session),
                    content_type="text/html",
                )

        return run

    # --- sign-in ---

    async def signin_form(self, request: web.Request) -> web.Response:
        csrf = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(24)
        response = html(page("Sign in", views.signin_form(csrf, request.query.get("next", "/"), ""), None))
        self.auth.set_cookie(response, SIGNIN_COOKIE, csrf, 3600)
        return response

    async def signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        csrf, target = str(form.get("csrf", "")), views.safe_next(str(form.get("next", "/")))
        expected = request.cookies.get(SIGNIN_COOKIE, "")
        if not expected or not hmac.compare_digest(expected, csrf):
            return web.Response(status=403, text="the sign-in form expired; load it again\n")
        try:
            bearer = str(form.get("token", "")).strip()
            principal, token_id = self.auth.verify(bearer)
        except tokens.InvalidToken as e:
            return html(page("Sign in", views.signin_form(csrf, target, str(e)), None), status=401)
        session = self.auth.open_session(principal, token_id, bearer)
        response = web.HTTPSeeOther(target)
        self.auth.set_cookie(
            response, SESSION_COOKIE, session.id, self.console.parts.config.http.session_ttl_s
        )
        response.del_cookie(SIGNIN_COOKIE, path="/")
        raise response

    async def signout(self, request: web.Request) -> web.Response:
        session = self.auth.session(request)
        form = await request.post()
        if session is not None and not self.auth.csrf_ok(session, str(form.get("csrf", ""))):
            return web.Response(status=403, text="CSRF token missing or wrong\n")
        self.auth.close_session(request)
        response = web.HTTPSeeOther("/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # --- pages ---

    async def overview(self, request: web.Request, session: Session) -> web.StreamResponse:
        stats = await self.api.statistics()
        queues = await self.api.queues()
        view = await self.api.topology()
        per_instance = await self.api.statistics_of(view)
        body = views.overview(self.console.live.rate_series(), stats, queues, view, per_instance)
        return html(page("Overview", body, session, "/", stream="/streams/overview"))

    async def topology(self, request: web.Request, session: Session) -> web.StreamResponse:
        view = await self.api.topology()
        body = cluster_views.topology(view, list(self.console.live.timeline))
        return html(page("Topology", body, session, "/topology", stream="/streams/topology"))

    async def offloading(self, request: web.Request, session: Session) -> web.StreamResponse:
        rows = await self.api.consumption()
        may = self.auth.may(session, actions.SET_CONSUMPTION)
        body = cluster_views.offloading(rows, session if may else None, request.path_qs)
        return html(page("Offloading", body, session, "/offloading", flash=request.query.get("done", "")))

    async def jobs(self, request: web.Request, session: Session) -> web.StreamResponse:
        q = request.query
        find = jobs_pb2.FindJobsRequest(
            type=views.query_type(q.get("state", "")),
            topic=q.get("topic", ""),
            page_size=PAGE_SIZE,
            page_token=q.get("page", ""),
            newest_first=True,
            scope=jobs_pb2.QUERY_SCOPE_LOCAL if q.get("scope") == "local" else jobs_pb2.QUERY_SCOPE_TOPOLOGY,
        )
        template = views.template(q.get("property", ""))
        if template is not None:
            find.templates.append(template)
        response = await self.api.find_jobs(find)
        view = await self.api.topology()
        body = views.jobs(q, response, view)
        stream = url("/streams/jobs", job=[j.id for j in response.jobs])
        return html(page("Jobs", body, session, "/jobs", stream=stream, flash=q.get("done", "")))

    async def job(self, request: web.Request, session: Session) -> web.StreamResponse:
        before = history.before_seq(request.query)
        job = await self.api.get_job(request.match_info["id"])
        view = await self.api.topology()
        allowed = {name: self.auth.may(session, method) for name, method in actions.JOB_METHODS.items()}
        # GetJob reads this node's journal, so its events are here too (mirrored from the target).
        events = await self.events.job_history(job.id, before, history.HISTORY_PAGE + 1)
        body = views.job(job, view, session, allowed, request.path) + history.section(
            events, request.path, before == 0, views.names_of(view)
        )
        stream = f"/streams/jobs?job={job.id}"
        return html(
            page(
                f"Job {job.topic}", body, session, "/jobs", stream=stream, flash=request.query.get("done", "")
            )
        )

    async def payload(self, request: web.Request, session: Session) -> web.StreamResponse:
        """A payload download, streamed piece by piece from GetPayload (none held whole here)."""
        job_id = request.match_info["id"]
        output = request.path.endswith("/output")
        pieces = aiter(self.api.payload(job_id, output))
        first = await anext(pieces)  # an ApiError here (NOT_FOUND, DATA_LOSS) is an error page
        name = f"{job_id}-{'output' if output else 'payload'}.bin"
        response = web.StreamResponse(
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
        response.content_type = "application/octet-stream"
        response.content_length = first.total_size
        await response.prepare(request)
        try:
            await response.write(first.data)
            async for piece in pieces:
                await response.write(piece.data)
        except ApiError as e:  # too late for an error page: cut the download short
            log.warning("console: download of job %s's payload failed: %s", job_id, e.message)
            response.force_close()
            return response
        await response.write_eof()
        return response

    async def queues(self, request: web.Request, session: Session) -> web.StreamResponse:
        rows = await self.api.queues()
        allowed = {name: self.auth.may(session, method) for name, method in actions.QUEUE_METHODS.items()}
        body = views.queues(rows, session, allowed)
        return html(page("Queues", body, session, "/queues", flash=request.query.get("done", "")))

    async def schedules(self, request: web.Request, session: Session) -> web.StreamResponse:
        rows = await self.api.schedules()
        allowed = {name: self.auth.may(session, method) for name, method in actions.SCHEDULE_METHODS.items()}
        body = views.schedules(rows, session, allowed)
        return html(page("Schedules", body, session, "/schedules", flash=request.query.get("done", "")))

    async def workers(self, request: web.Request, session: Session) -> web.StreamResponse:
        rows = await self.api.workers()
        since = {w.id: w.connected_us for w in self.console.parts.workers.workers}
        return html(page("Workers", views.workers(rows, since), session, "/workers"))

    # --- streams ---

    async def job_stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        wanted = frozenset(j for j in request.query.getall("job", [])[:MAX_STREAM_JOBS] if j)
        single = len(wanted) == 1

        async def current() -> list[dict[str, object]]:
            rows: list[dict[str, object]] = []
            for job_id in wanted:
                try:
                    job = await self.api.get_job(job_id)
                except ApiError:
                    continue
                p = job.progress
                rows.append(
                    {
                        "id": job.id,
                        "state": state_name(job.state),
                        "message": job.result_message,
                        "log": [[when(line.time), line.message] for line in job.log],
                        "log_count": job.log_line_count,
                    }
                )
                if p.total_steps:
                    eta = p.eta.ToMicroseconds() if p.HasField("eta") else 0
                    rows[-1].update(done=p.completed_steps, total=p.total_steps, eta_us=eta)
            return rows

        return await self.console.live.job_stream(request, wanted, current if single else None)

    async def topology_stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        return await self.console.live.topology_stream(request)

    async def overview_stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        return await self.console.live.overview_stream(request)


def html(text: str, status: int = 200) -> web.Response:
    """An HTML response that no cache keeps."""
    return web.Response(
        text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def now_s() -> float:
    """Unix time."""
    return time.time()
