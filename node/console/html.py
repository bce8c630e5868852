"""HTML building blocks of the console: escaping, the page layout, tables, forms with CSRF tokens.

Everything dynamic goes through `esc`; pages carry no inline script (the Content-Security-Policy
allows scripts from /static only), and say what their live stream is in `data-` attributes.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlencode

from google.protobuf.timestamp_pb2 import Timestamp
from jobmesh.v1 import jobs_pb2

from node.console.auth import Session

NAV = (
    ("/", "Overview"),
    ("/topology", "Topology"),
    ("/offloading", "Offloading"),
    ("/jobs", "Jobs"),
    ("/queues", "Queues"),
    ("/schedules", "Schedules"),
    ("/workers", "Workers"),
)
STATE_NAMES = {v.number: v.name for v in jobs_pb2.JobState.DESCRIPTOR.values}


def esc(value: object) -> str:
    """`value` as HTML text."""
    return escape(str(value), quote=True)


def url(path: str, **query: object) -> str:
    """`path` with the non-empty query parameters (a list value repeats its name)."""
    params = [
        (k, str(item))
        for k, v in query.items()
        for item in (v if isinstance(v, list | tuple) else [v])
        if item not in (None, "")
    ]
    return path + ("?" + urlencode(params) if params else "")


def when(ts: Timestamp) -> str:
    """A timestamp as UTC text, or an empty string when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    moment = datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def state_name(state: int) -> str:
    """A JobState number as its short name (QUEUED, SUCCEEDED, ...)."""
    return STATE_NAMES.get(state, str(state)).removeprefix("JOB_STATE_")


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], row_attrs: Sequence[str] = (), empty: str = "none"
) -> str:
    """A table; cells are HTML already (escape text with `esc`)."""
    head = "".join(f"<th scope=col>{esc(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        attrs = f" {row_attrs[index]}" if index < len(row_attrs) else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    if not body:
        body.append(f"<tr><td colspan={len(header)} class=empty>{esc(empty)}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def button(session: Session, action: str, label: str, back: str, **fields: str) -> str:
    """A one-button form POSTing to `/actions/<action>` with the session's CSRF token."""
    hidden = "".join(f'<input type=hidden name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())
    return (
        f'<form method=post action="/actions/{esc(action)}" class=inline>'
        f'<input type=hidden name=csrf value="{esc(session.csrf)}">'
        f'<input type=hidden name=back value="{esc(back)}">{hidden}'
        f"<button type=submit>{esc(label)}</button></form>"
    )


def page(
    title: str, body: str, session: Session | None, active: str = "", stream: str = "", flash: str = ""
) -> str:
    """A whole page: head, navigation, the signed-in user, the body."""
    nav = "".join(
        f'<a href="{path}"{" aria-current=page" if path == active else ""}>{esc(label)}</a>'
        for path, label in NAV
    )
    user = ""
    if session is not None:
        scopes = ", ".join(sorted(session.principal.scopes))
        user = (
            f"<span class=user>{esc(session.principal.name)} ({esc(scopes)})</span>"
            f'<form method=post action="/signout" class=inline><input type=hidden name=csrf value="{esc(session.csrf)}">'
            "<button type=submit>Sign out</button></form>"
        )
    notice = f"<p class=flash role=status>{esc(flash)}</p>" if flash else ""
    data = f' data-stream="{esc(stream)}"' if stream else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Jobmesh</title>"
        '<link rel=icon href="data:,"><link rel=stylesheet href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f"<body{data}><header><strong class=brand>Jobmesh</strong><nav>{nav if session else ''}</nav>{user}</header>"
        f"<main><h1>{esc(title)}</h1>{notice}{body}</main></body></html>"
    )
