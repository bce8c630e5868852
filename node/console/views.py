"""The bodies of the console's pages, rendered from the API's messages (pure functions)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

import grpc
from aiohttp import web
from jobmesh.v1 import jobs_pb2, queues_pb2, schedules_pb2, topics_pb2, topology_pb2, workers_pb2

from node.console.api import ApiError
from node.console.auth import Session
from node.console.html import button, esc, state_name, table, url, when

QUERY_TYPES = {
    "": jobs_pb2.QUERY_TYPE_ALL,
    "QUEUED": jobs_pb2.QUERY_TYPE_QUEUED,
    "ACTIVE": jobs_pb2.QUERY_TYPE_ACTIVE,
    "HISTORY": jobs_pb2.QUERY_TYPE_HISTORY,
    "SUCCEEDED": jobs_pb2.QUERY_TYPE_SUCCEEDED,
    "STOPPED": jobs_pb2.QUERY_TYPE_STOPPED,
    "GIVEN_UP": jobs_pb2.QUERY_TYPE_GIVEN_UP,
    "ERROR": jobs_pb2.QUERY_TYPE_ERROR,
    "DROPPED": jobs_pb2.QUERY_TYPE_DROPPED,
}
SETTINGS = {
    topics_pb2.CONSUMPTION_SETTING_ENABLED: "Enabled",
    topics_pb2.CONSUMPTION_SETTING_DISABLED: "Disabled",
    topics_pb2.CONSUMPTION_SETTING_EXCLUSIVE: "Exclusive",
}
INSTANCE_STATES = {
    v.number: v.name.removeprefix("INSTANCE_STATE_") for v in topology_pb2.InstanceState.DESCRIPTOR.values
}
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def http_status(error: ApiError) -> int:
    """The HTTP status for an API error."""
    return _HTTP_STATUS.get(error.code, 502)


def safe_next(target: str) -> str:
    """A same-site path to go to after sign-in (never another site)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def signin_form(csrf: str, target: str, problem: str) -> str:
    """The sign-in form."""
    error = f"<p class=error role=alert>{esc(problem)}</p>" if problem else ""
    return (
        f"{error}<form method=post action=/signin class=signin>"
        f'<input type=hidden name=csrf value="{esc(csrf)}"><input type=hidden name=next value="{esc(target)}">'
        "<label>Bearer token <input type=password name=token autocomplete=off required autofocus></label>"
        "<button type=submit>Sign in</button></form>"
        "<p class=hint>A token from <code>jobmesh token create</code> (the node's admin token is in "
        "<code>&lt;data dir&gt;/cluster/admin.token</code>). A <code>read</code> token sees everything; "
        "actions need the scope of their RPC.</p>"
    )


def query_type(state: str) -> jobs_pb2.QueryType.ValueType:
    """The FindJobs query type of a state filter."""
    return QUERY_TYPES.get(state.upper(), jobs_pb2.QUERY_TYPE_ALL)


def template(text: str) -> jobs_pb2.PropertyTemplate | None:
    """`name=value` as a one-condition property template (a string equality), or None."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        return None
    condition = jobs_pb2.PropertyCondition(
        name=name.strip(),
        operator=jobs_pb2.COMPARISON_OPERATOR_EQUAL,
        value=jobs_pb2.PropertyValue(string_value=value),
    )
    return jobs_pb2.PropertyTemplate(conditions=[condition])


def names_of(view: topology_pb2.TopologyView) -> dict[str, str]:
    return {i.id: i.name for i in view.instances}


def instance_label(instance_id: str, names: Mapping[str, str]) -> str:
    return esc(names.get(instance_id, instance_id[:8] if instance_id else ""))


def _value(value: jobs_pb2.PropertyValue) -> str:
    kind = value.WhichOneof("kind")
    if kind is None:
        return ""
    if kind == "list_value":
        return "[" + ", ".join(_value(v) for v in value.list_value.values) + "]"
    if kind == "timestamp_value":
        return when(value.timestamp_value)
    if kind == "bytes_value":
        return f"{len(value.bytes_value)} bytes"
    return str(getattr(value, kind))


# --- overview ---


def chart(series: Sequence[tuple[float, float, float, float]]) -> str:
    """The rates chart's frame; console.js draws the lines from the overview's stream."""
    del series  # drawn in the browser from the same numbers
    return (
        '<figure class=chart><svg id=rates viewBox="0 0 600 160" role=img aria-label="jobs per second, last hour">'
        '<polyline class=added points=""/><polyline class=succeeded points=""/><polyline class=failed points=""/>'
        "<text x=4 y=12 class=peak id=peak></text></svg><figcaption>Jobs per second over the last hour: "
        "<span class=added>added</span>, <span class=succeeded>succeeded</span>, <span class=failed>failed</span>"
        " <span id=totals></span></figcaption></figure>"
    )


def overview(
    series: Sequence[tuple[float, float, float, float]],
    stats: jobs_pb2.GetStatisticsResponse,
    queues: Sequence[queues_pb2.QueueInfo],
    view: topology_pb2.TopologyView,
    per_instance: Mapping[str, jobs_pb2.Statistics],
) -> str:
    """Rates, queued/active per queue and per instance, the slowest topics."""
    g = getattr(stats, "global")
    summary = (
        f"<p class=summary><span>Queued <b id=queued>{g.queued}</b></span> <span>Active <b id=active>{g.active}</b></span>"
        f" <span>Finished {g.finished}</span> <span>Failed {g.failed}</span> <span>Cancelled {g.cancelled}</span></p>"
    )
    queue_rows = [
        [esc(q.config.name), str(q.queued), str(q.active), "suspended" if q.suspended else "running"]
        for q in queues
    ]
    instances = []
    for i in view.instances:
        own = per_instance.get(i.id)
        counts = [str(own.queued), str(own.active), str(own.finished), str(own.failed)] if own else ["?"] * 4
        capacity = esc(i.properties.get("jobmesh.capacity", ""))
        instances.append([esc(i.name), *counts, capacity, INSTANCE_STATES.get(i.state, "")])
    slow = sorted(stats.topics.items(), key=lambda kv: -kv[1].average_processing.ToMicroseconds())[:10]
    topic_rows = [
        [
            f'<a href="{url("/jobs", topic=name)}">{esc(name)}</a>',
            f"{s.average_processing.ToMicroseconds() / 1e6:.3f} s",
            f"{s.average_waiting.ToMicroseconds() / 1e6:.3f} s",
            str(s.processed),
        ]
        for name, s in slow
    ]
    return (
        chart(series)
        + summary
        + "<h2>Queues (this node)</h2>"
        + table(["queue", "queued", "active", "state"], queue_rows)
        + "<h2>Instances</h2>"
        + table(["instance", "queued", "active", "finished", "failed", "capacity", "state"], instances)
        + "<h2>Slowest topics</h2>"
        + table(["topic", "average run", "average wait", "processed"], topic_rows)
    )


# --- jobs ---


def jobs(
    query: Mapping[str, str], response: jobs_pb2.FindJobsResponse, view: topology_pb2.TopologyView
) -> str:
    """The filter form, one page of jobs (newest first) and the paging link."""
    names = names_of(view)
    instance = query.get("instance", "")
    shown = [
        j
        for j in response.jobs
        if not instance or instance in (j.target_instance, j.origin_instance, names.get(j.target_instance))
    ]
    states = "".join(
        f'<option value="{s}"{" selected" if query.get("state", "") == s else ""}>{s or "any state"}</option>'
        for s in QUERY_TYPES
    )
    scope = query.get("scope", "")
    instances = "".join(
        f'<option value="{esc(i.id)}"{" selected" if instance == i.id else ""}>{esc(i.name)}</option>'
        for i in view.instances
    )
    form = (
        "<form method=get action=/jobs class=filters>"
        f"<label>State <select name=state>{states}</select></label>"
        f'<label>Topic <input name=topic value="{esc(query.get("topic", ""))}" placeholder="a/b/c"></label>'
        f'<label>Property <input name=property value="{esc(query.get("property", ""))}" placeholder="name=value"></label>'
        f'<label>Instance <select name=instance><option value="">any</option>{instances}</select></label>'
        f'<label>Where <select name=scope><option value="">the topology</option>'
        f"<option value=local{' selected' if scope == 'local' else ''}>this node</option></select></label>"
        "<button type=submit>Filter</button></form>"
    )
    rows, attrs = [], []
    for j in shown:
        progress = ""
        if j.progress.total_steps:
            progress = (
                f'<progress max="{j.progress.total_steps}" value="{j.progress.completed_steps}"></progress>'
            )
        rows.append(
            [
                f'<a href="/jobs/{esc(j.id)}">{esc(j.id)}</a>',
                esc(j.topic),
                f'<span class=state data-state="{state_name(j.state)}">{state_name(j.state)}</span>{progress}',
                esc(j.queue),
                instance_label(j.origin_instance, names),
                instance_label(j.target_instance, names),
                when(j.created_time),
                esc(j.result_message),
            ]
        )
        attrs.append(f'data-job="{esc(j.id)}"')
    more = ""
    if response.next_page_token:
        more = f'<p><a rel=next href="{url("/jobs", **{**dict(query), "page": response.next_page_token})}">Older jobs</a></p>'
    return (
        form
        + '<p class=banner id=new-jobs hidden><a href="">new jobs: show them</a></p>'
        + f"<p>{response.total_size or len(shown)} job(s).</p>"
        + table(
            ["id", "topic", "state", "queue", "origin", "target", "created (UTC)", "result"],
            rows,
            attrs,
            "no jobs match",
        )
        + more
    )


def job(
    j: jobs_pb2.Job, view: topology_pb2.TopologyView, session: Session, allowed: Mapping[str, bool], back: str
) -> str:
    """One job: progress and ETA, properties, origin and target, log, downloads, actions (its
    event history is `history.section`)."""
    names = names_of(view)
    done, total = j.progress.completed_steps, j.progress.total_steps
    eta = when(j.progress.eta) if j.progress.HasField("eta") else ""
    progress = (
        f'<div class=progress data-job="{esc(j.id)}"><progress id=progress max="{total or 1}" value="{done}"'
        f" aria-label=progress></progress> <span id=progress-text>{done} / {total}</span>"
        f" <span>ETA <span id=eta>{esc(eta or 'unknown')}</span></span></div>"
    )
    facts = [
        (
            "State",
            f'<span id=state class=state data-state="{state_name(j.state)}">{state_name(j.state)}</span>',
        ),
        ("Topic", esc(j.topic)),
        ("Queue", esc(j.queue)),
        ("Origin", instance_label(j.origin_instance, names)),
        ("Target", instance_label(j.target_instance, names)),
        ("Retries", f"{j.retry_count} of {j.max_retries}"),
        ("Created", when(j.created_time)),
        ("Started", when(j.started_time)),
        ("Finished", when(j.finished_time)),
        ("Result", f"<span id=result>{esc(j.result_message)}</span>"),
        (
            "Payload",
            f'<a href="/jobs/{esc(j.id)}/payload" download>{j.payload_size} bytes</a>'
            if j.payload_size
            else "none",
        ),
        (
            "Output",
            f'<a href="/jobs/{esc(j.id)}/output" download>{j.output_payload_size} bytes</a>'
            if j.output_payload_size
            else "none",
        ),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    props = table(["property", "value"], [[esc(k), esc(_value(v))] for k, v in sorted(j.properties.items())])
    log = "".join(f"<li><time>{when(line.time)}</time> {esc(line.message)}</li>" for line in j.log)
    controls = "".join(
        button(session, f"job-{name}", label, back, job=j.id)
        for name, label in (("stop", "Stop"), ("retry", "Retry"), ("remove", "Remove"))
        if allowed.get(name)
    )
    return (
        progress
        + f"<dl class=facts>{dl}</dl>"
        + (f'<div class="actions">{controls}</div>' if controls else "")
        + "<h2>Properties</h2>"
        + props
        + f"<h2>Log (<span id=log-count>{j.log_line_count}</span> lines)</h2><ol id=log class=log>{log}</ol>"
    )


# --- queues, schedules, workers ---


def queues(rows: Sequence[queues_pb2.QueueInfo], session: Session, allowed: Mapping[str, bool]) -> str:
    """Every queue: configuration, state, counts, actions."""
    body, attrs = [], []
    for q in rows:
        c = q.config
        controls = "".join(
            button(session, f"queue-{name}", label, "/queues", queue=c.name)
            for name, label, show in (
                ("suspend", "Suspend", not q.suspended),
                ("resume", "Resume", q.suspended),
                ("clear", "Clear", True),
            )
            if show and allowed.get(name)
        )
        kind = queues_pb2.QueueType.Name(c.type).removeprefix("QUEUE_TYPE_").lower()
        body.append(
            [
                esc(c.name),
                esc(", ".join(c.topics) or "(all others)"),
                esc(kind),
                esc(f"{c.max_parallel:g}" if c.HasField("max_parallel") else ""),
                str(q.parallelism),
                f"<span class=queue-state>{'suspended' if q.suspended else 'running'}</span>",
                str(q.queued),
                str(q.active),
                controls,
            ]
        )
        attrs.append(f'data-queue="{esc(c.name)}"')
    return table(
        ["queue", "topics", "type", "max parallel", "parallelism", "state", "queued", "active", ""],
        body,
        attrs,
    )


def schedules(rows: Sequence[schedules_pb2.Schedule], session: Session, allowed: Mapping[str, bool]) -> str:
    """Every schedule: its job, next occurrence, state, actions."""
    body = []
    for s in rows:
        controls = "".join(
            button(session, f"schedule-{name}", label, "/schedules", schedule=s.id)
            for name, label, show in (
                ("suspend", "Suspend", not s.suspended),
                ("resume", "Resume", s.suspended),
                ("remove", "Remove", True),
            )
            if show and allowed.get(name)
        )
        body.append(
            [
                esc(s.name or s.id),
                esc(s.job.topic),
                when(s.next_time),
                when(s.last_time),
                "suspended" if s.suspended else "active",
                f'<a href="/jobs/{esc(s.last_job_id)}">{esc(s.last_job_id)}</a>' if s.last_job_id else "",
                controls,
            ]
        )
    return table(
        ["schedule", "topic", "next (UTC)", "last (UTC)", "state", "last job", ""], body, empty="no schedules"
    )


def workers(rows: Sequence[workers_pb2.ConnectedWorker], since: Mapping[str, int]) -> str:
    """The connected remote workers."""
    body = [
        [
            esc(w.name),
            esc(", ".join(w.topics)),
            str(w.concurrency),
            str(w.in_flight),
            datetime.datetime.fromtimestamp(since[w.worker_id] / 1e6, datetime.UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            )
            if w.worker_id in since
            else "",
        ]
        for w in rows
    ]
    return table(
        ["worker", "patterns", "concurrency", "in flight", "connected since (UTC)"],
        body,
        empty="no remote workers connected",
    )


def not_found(message: str) -> web.HTTPNotFound:
    """A 404 with a plain message."""
    return web.HTTPNotFound(text=message)
