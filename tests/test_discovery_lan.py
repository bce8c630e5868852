"""The LAN default timings meet the discovery targets, measured on real node processes.

Kept apart from test_discovery_nodes.py: its module-scoped mDNS nodes would join these.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.launcher import NodeFactory
from tests.support.topology import (
    LAN_TIMINGS,
    create,
    instance,
    names,
    start_all,
    time_until,
    view,
    wait_views,
)
from tests.support.waiting import wait_for

MDNS = {"discovery.mdns": "true"}


@pytest.mark.slow
def test_lan_timings_meet_the_targets(nodes: NodeFactory) -> None:
    """With the LAN defaults: join <= 1 s, kill -9 <= 3 s, leave <= 0.5 s, all in every view."""
    settings = {**MDNS, **LAN_TIMINGS}
    first = start_all(*(create(nodes, n, settings=settings) for n in ("a", "b")))
    wait_views(first, {"a", "b"})
    # Join (by mDNS): from the new node's start until every peer's settled view holds it
    c = create(nodes, "c", settings=settings).start()
    start_s = instance(view(c), "c").start_time.ToMicroseconds() / 1e6  # type: ignore[union-attr]
    wait_for(lambda: all("c" in names(view(n)) for n in first), 5, "c in every view")
    joined = time.time() - start_s
    everyone = [*first, c]
    wait_views(everyone, {"a", "b", "c"})
    sent = time.monotonic()
    c.kill()
    died = time_until(first, "c dead everywhere", lambda v: "c" not in names(v), since=sent)
    d = create(nodes, "d", settings=settings).start()
    wait_views([*first, d], {"a", "b", "d"})
    d.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    left = time_until(first, "d gone everywhere", lambda v: "d" not in names(v), since=sent)
    assert d.wait_exit() == 0
    print(f"LAN timings: join {joined:.3f}s, kill -9 {died:.3f}s, leave {left:.3f}s")
    assert joined <= 1.0, f"join took {joined:.2f}s"
    assert died <= 3.0, f"kill -9 took {died:.2f}s to be declared everywhere"
    assert left <= 0.5, f"a graceful leave took {left:.2f}s to be seen everywhere"
