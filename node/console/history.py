"""The job page's event history: one job's retained events, newest first, a page at a time.

The lifecycle events (every type but PROGRESS: a job may report millions of steps, and its
progress bar shows where it is), `HISTORY_PAGE` at a time with a link to the next older page,
keyed by the last shown event's seq (`?events_before=SEQ`), read from the journal's
`job_events_job` index (node/journal/events.py `job_history`): a page costs the same whatever
the number of events in the journal. A job retried forever still has a bounded page.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from aiohttp import web

from node.console.html import esc, table, url
from node.journal.events import MAX_SEQ
from node.model.events import JobEvent

HISTORY_PAGE = 50
"""Events on one page of a job's history."""
BEFORE_PARAM = "events_before"


def before_seq(query: Mapping[str, str]) -> int:
    """The `events_before` query parameter: 0 (the newest page) or a seq; 400 when malformed."""
    text = query.get(BEFORE_PARAM, "")
    if not text:
        return 0
    # ASCII digits only and at most 19 of them: int() accepts other digits, and a long string
    # would cost (or exceed Python's digit limit) before the range check could refuse it.
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not 0 < int(text) <= MAX_SEQ:
        raise web.HTTPBadRequest(
            text=f"{BEFORE_PARAM} must be an event sequence number (1 to 2^63-1), not {text!r}\n"
        )
    return int(text)


def _time(time_us: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_us / 1e6, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def section(
    events: Sequence[JobEvent],
    job_path: str,
    newest: bool,
    names: Mapping[str, str],
    page_size: int = HISTORY_PAGE,
) -> str:
    """The Events section: the live list (on the newest page) and a page of `events`, read
    with `page_size + 1` rows so that the link to older events appears only when there are some."""
    shown = list(events[:page_size])
    rows = [
        [
            str(e.seq),
            f"<time>{_time(e.time_us)}</time>",
            e.type.name,
            e.state.name,
            str(e.retry_count),
            esc(names.get(e.target, e.target[:8]) if e.target else ""),
            esc(e.message),
        ]
        for e in shown
    ]
    attrs = [f'data-seq="{e.seq}"' for e in shown]
    links = []
    if not newest:
        links.append(f'<a href="{esc(job_path)}">Newest events</a>')
    if len(events) > page_size:
        older = url(job_path, **{BEFORE_PARAM: shown[-1].seq})
        links.append(f'<a rel=next href="{esc(older)}">Older events</a>')
    heading = "Events" if newest else "Events (older)"
    live = "<ol id=events class=log></ol>" if newest else ""  # console.js adds live changes here
    return (
        f"<h2>{heading}</h2>{live}"
        + "<div id=history><p class=note>Newest first; PROGRESS events are not listed (a job may"
        + " report millions): the bar above shows the progress.</p>"
        + table(
            ["seq", "time (UTC)", "event", "state", "retries", "target", "message"],
            rows,
            attrs,
            "no events retained",
        )
        + (f"<p class=pager>{' · '.join(links)}</p>" if links else "")
        + "</div>"
    )
