"""The topology and offloading pages' bodies (pure functions of the API's messages)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence

from jobmesh.v1 import topics_pb2, topology_pb2

from node.console.auth import Session
from node.console.html import esc, table, when
from node.console.views import INSTANCE_STATES, SETTINGS, instance_label, names_of
from node.discovery.events import TopologyEvent

# --- topology ---


def topology(view: topology_pb2.TopologyView, timeline: Sequence[TopologyEvent]) -> str:
    """Every instance with its details, the cluster views, a drawing and the event timeline."""
    rows, attrs = [], []
    for i in view.instances:
        props = "<br>".join(f"{esc(k)}={esc(v)}" for k, v in sorted(i.properties.items()))
        rows.append(
            [
                esc(i.name) + (" (this node)" if i.local else ""),
                f"<code>{esc(i.id)}</code>",
                "<br>".join(esc(e) for e in i.endpoints),
                esc(i.cluster or "(default)"),
                "leader" if i.leader else "",
                INSTANCE_STATES.get(i.state, ""),
                when(i.last_heard) or ("now" if i.local else ""),
                when(i.start_time),
                esc(i.properties.get("jobmesh.topics", "")),
                esc(i.properties.get("jobmesh.capacity", "")),
                f"<details><summary>{len(i.properties)}</summary>{props}</details>",
            ]
        )
        attrs.append(f'data-instance="{esc(i.name)}"')
    clusters = [
        [
            esc(c.cluster or "(default)"),
            instance_label(c.leader_id, names_of(view)),
            ", ".join(instance_label(m, names_of(view)) for m in c.instance_ids),
        ]
        for c in view.clusters
    ]
    events = [
        [
            datetime.datetime.fromtimestamp(e.time_us / 1e6, datetime.UTC).strftime("%H:%M:%S.%f")[:-3],
            esc(e.type.value),
            esc(", ".join(i.name for i in (e.new_view.instances if e.new_view else ()))),
        ]
        for e in timeline
    ]
    return (
        f"<p>View {'current' if view.current else 'changing'}, {len(view.instances)} instance(s).</p>"
        + drawing(view)
        + table(
            [
                "name",
                "id",
                "addresses",
                "cluster",
                "leader",
                "state",
                "last heard",
                "started",
                "topics",
                "capacity",
                "properties",
            ],
            rows,
            attrs,
        )
        + "<h2>Cluster views</h2>"
        + table(["cluster", "leader", "instances"], clusters)
        + "<h2>Timeline</h2>"
        + table(["time (UTC)", "event", "instances after"], events, empty="no events yet")
    )


def drawing(view: topology_pb2.TopologyView) -> str:
    """An SVG of the instances on a circle, grouped by cluster, the leaders marked."""
    instances = list(view.instances)
    if not instances:
        return ""
    size, radius = 320, 110
    nodes, lines = [], []
    points = []
    for n, i in enumerate(instances):
        angle = 2 * math.pi * n / len(instances) - math.pi / 2
        x, y = size / 2 + radius * math.cos(angle), size / 2 + radius * math.sin(angle)
        points.append((x, y))
        cls = "leader" if i.leader else "member"
        nodes.append(
            f'<g class="{cls}{" local" if i.local else ""}"><circle cx="{x:.0f}" cy="{y:.0f}" r=18></circle>'
            f'<text x="{x:.0f}" y="{y + 34:.0f}" text-anchor=middle>{esc(i.name)}</text></g>'
        )
    for a in range(len(points)):
        for b in range(a + 1, len(points)):
            lines.append(
                f'<line x1="{points[a][0]:.0f}" y1="{points[a][1]:.0f}" x2="{points[b][0]:.0f}" y2="{points[b][1]:.0f}"></line>'
            )
    return f'<svg class=topology viewBox="0 0 {size} {size + 20}" role=img aria-label="topology drawing">{"".join(lines)}{"".join(nodes)}</svg>'


# --- offloading ---


def offloading(rows: Sequence[topics_pb2.InstanceConsumption], session: Session | None, back: str) -> str:
    """The topic x instance matrix; with `session` (allowed to change it) each cell is a button."""
    topics = sorted(
        {t for r in rows for t in r.consumer_topics} | {s.topic for r in rows for s in r.settings}
    )
    header = ["topic", *(r.name for r in rows)]
    body = []
    for topic in topics:
        cells = [f"<code>{esc(topic)}</code>"]
        for r in rows:
            settings = {s.topic: s.setting for s in r.settings}
            current = settings.get(topic, topics_pb2.CONSUMPTION_SETTING_ENABLED)
            consumes = topic in r.consumer_topics
            label = SETTINGS.get(current, "Enabled")
            if session is None:
                cells.append(f'<span class="setting {label.lower()}">{label}</span>')
                continue
            choices = "".join(
                f'<option value="{int(value)}"{" selected" if value == current else ""}>{name}</option>'
                for value, name in SETTINGS.items()
            )
            cells.append(
                f'<form method=post action=/actions/consumption class="inline setting {label.lower()}" '
                f'data-instance="{esc(r.name)}" data-topic="{esc(topic)}">'
                f'<input type=hidden name=csrf value="{esc(session.csrf)}"><input type=hidden name=back value="{esc(back)}">'
                f'<input type=hidden name=instance value="{esc(r.instance_id)}"><input type=hidden name=topic value="{esc(topic)}">'
                f'<select name=setting aria-label="{esc(topic)} on {esc(r.name)}" data-autosubmit>{choices}</select>'
                f"<noscript><button type=submit>Set</button></noscript></form>"
                + ("" if consumes else ' <small title="no consumer here">(no consumer)</small>')
            )
        body.append(cells)
    return table(header, body, empty="no topics are consumed anywhere") + (
        "<p class=hint>Enabled: the instance takes the topic's jobs. Disabled: it takes none. "
        "Exclusive: only instances with Exclusive take them. A change applies on that instance at once.</p>"
    )
