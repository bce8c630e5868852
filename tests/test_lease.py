"""The target's lease on each origin (node/transfer/lease.py), alone: what the claims hold and
which origins are asked, as heard times come and go. The lease's effect on real nodes is in
test_offload_reconcile.py and test_offload_partition.py."""

from __future__ import annotations

import time

from node.journal.claims import NO_HOLD, Hold
from node.transfer.lease import Lease
from tests.support.waiting import wait_for

WINDOW_S = 10.0


def test_before_its_leases_are_loaded_a_node_holds_every_job_of_another_origin() -> None:
    lease = Lease("me", WINDOW_S)
    assert lease.hold() == Hold(local_id="me")
    assert lease.hold().sql() == (" AND origin = ?", ("me",))
    assert lease.to_confirm() == []


def test_origins_queued_before_a_restart_are_held_until_confirmed_and_again_once_the_window_passed() -> None:
    lease = Lease("me", WINDOW_S)
    lease.load({"o1", "o2"})
    assert lease.hold().origins == {"o1", "o2"}
    assert lease.to_confirm() == ["o1", "o2"]

    # A round trip alone does not lift the hold after a restart: the node was down, and what is
    # queued here may have been reassigned meanwhile; only an answered Reconcile does.
    lease.heard("o1", time.monotonic())
    assert lease.hold().origins == {"o1", "o2"}
    lease.confirmed("o1", time.monotonic())
    assert lease.hold().origins == {"o2"}
    assert lease.to_confirm() == ["o2"]

    lease.confirmed("o2", time.monotonic())
    assert lease.hold() is NO_HOLD
    assert lease.hold().sql() == ("", ())

    lease.heard("o1", time.monotonic() - 2 * WINDOW_S)  # older than the newest: ignored
    assert not lease.holds("o1")
    assert lease.holds("o1", now=time.monotonic() + WINDOW_S)  # a pause jumps the clock


def test_a_new_origin_is_held_until_a_round_trip_to_it_completes() -> None:
    lease = Lease("me", WINDOW_S)
    lease.load(set())
    lease.arrived("o1")
    assert lease.hold().origins == {"o1"}
    lease.heard("o1", time.monotonic())  # its first round trip: nothing of it can be stale
    assert lease.hold() is NO_HOLD


def test_a_lapse_stands_until_confirmed_even_when_another_round_trip_renews_the_lease_first() -> None:
    # Given a lease renewed normally
    lease = Lease("me", WINDOW_S)
    lease.load(set())
    lease.arrived("o1")
    before = time.monotonic() - 3 * WINDOW_S
    lease.heard("o1", before)
    # When the next round trip (a report frame acknowledged after a heal) comes after a gap
    # longer than the window
    lease.heard("o1", time.monotonic())
    # Then the origin stays held, and is asked, until a Reconcile about its jobs is answered
    assert lease.holds("o1")
    assert lease.to_confirm() == ["o1"]
    lease.confirmed("o1", time.monotonic())
    assert not lease.holds("o1")


def test_a_lease_past_half_its_window_is_renewed_before_it_lapses() -> None:
    lease = Lease("me", WINDOW_S)
    lease.load({"o1"})
    lease.confirmed("o1", time.monotonic() - 0.6 * WINDOW_S)
    assert not lease.holds("o1")
    assert lease.to_confirm() == ["o1"]


def test_an_origin_with_nothing_queued_stays_held_but_is_asked_again_only_when_a_job_of_it_arrives() -> None:
    lease = Lease("me", WINDOW_S)
    lease.load(set())
    lease.arrived("o1")
    lease.arrived("me")  # this node's own jobs are never held
    assert lease.hold().origins == {"o1"}
    lease.nothing_queued("o1")
    assert lease.hold().origins == {"o1"}, "a retry may queue one of its jobs again"
    assert lease.to_confirm() == []
    lease.arrived("o1")
    assert lease.to_confirm() == ["o1"]


def test_an_origin_with_nothing_queued_is_asked_again_after_a_few_windows() -> None:
    lease = Lease("me", 0.01)
    lease.load({"o1"})
    lease.nothing_queued("o1")
    assert lease.to_confirm() == []
    wait_for(lambda: lease.to_confirm() == ["o1"], 5.0, "o1 to be asked about again")


def test_every_hold_that_lifts_tells_the_runners_and_nothing_else_does() -> None:
    # Given a lease whose releases are counted (the offloader passes JobManager.wake_runners)
    releases: list[None] = []
    lease = Lease("me", WINDOW_S, on_release=lambda: releases.append(None))
    lease.load(set())
    lease.arrived("o1")

    # A first round trip lifts the hold of a new origin; another one lifts nothing
    lease.heard("o1", time.monotonic() - 1.2 * WINDOW_S)
    assert lease.holds("o1"), "a round trip older than the window holds"
    assert not releases
    lease.heard("o1", time.monotonic() - 0.5 * WINDOW_S)
    assert not lease.holds("o1")
    assert len(releases) == 1, "a report frame's round trip lifted a hold by time: runners must look again"
    lease.heard("o1", time.monotonic())
    assert len(releases) == 1

    # A lapse lifts only with a confirmation, which tells the runners
    lease.heard("o1", time.monotonic() + 2 * WINDOW_S)
    assert lease.holds("o1")
    assert len(releases) == 1
    lease.confirmed("o1", time.monotonic())
    assert not lease.holds("o1")
    assert len(releases) == 2
