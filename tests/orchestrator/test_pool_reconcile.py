"""reconcile_pool is pure: a table of situations and the steps they must give."""
from __future__ import annotations

from a3s_box.orchestrator.pools import Member, PoolSpec, PoolStep, reconcile_pool

SPEC = PoolSpec(min_ready=2, max=4, update="recreate", idle_timeout=60.0, spec_hash="h1")


def m(id_: str, status: str = "running", spec: str = "h1", leased: bool = False,
      since: float = 0.0) -> Member:
    return Member(id_, status, spec, leased, since)


def ops(steps: list[PoolStep]) -> list[tuple[str, str | None]]:
    return [(s.op, s.member) for s in steps]


def test_an_empty_pool_boots_min_ready() -> None:
    assert ops(reconcile_pool(SPEC, [], 100)) == [("create", None), ("create", None)]


def test_a_full_pool_needs_nothing() -> None:
    assert reconcile_pool(SPEC, [m("a"), m("b")], 100) == []


def test_leased_members_do_not_count_as_ready_but_count_toward_max() -> None:
    members = [m("a", leased=True), m("b", leased=True), m("c", leased=True), m("d")]
    # 1 idle of min 2, but 4 of max 4 exist: nothing may be booted
    assert reconcile_pool(SPEC, members, 100) == []
    members = [m("a", leased=True), m("b")]
    assert ops(reconcile_pool(SPEC, members, 100)) == [("create", None)]


def test_dead_members_are_deleted_and_replaced() -> None:
    steps = reconcile_pool(SPEC, [m("a", status="exited"), m("b")], 100)
    assert ops(steps) == [("delete", "a"), ("create", None)]
    assert steps[0].reason == "VM exited"


def test_a_dead_leased_member_is_kept_where_a_loop_restarts_it() -> None:
    members = [m("a", status="exited", leased=True), m("b"), m("c")]
    assert ops(reconcile_pool(SPEC, members, 100)) == [("delete", "a")]  # no loop: gone
    assert reconcile_pool(SPEC, members, 100, restarts_leased=True) == []  # the holder's, back soon


def test_a_changed_template_replaces_idle_members_only_with_update_recreate() -> None:
    members = [m("a", spec="h0"), m("b", spec="h0", leased=True), m("c")]
    assert ops(reconcile_pool(SPEC, members, 100)) == [("delete", "a"), ("create", None)]
    lazy = PoolSpec(2, 4, "on_replenish", 60.0, "h1")
    assert reconcile_pool(lazy, members, 100) == []


def test_surplus_idle_members_are_reclaimed_after_the_idle_timeout_oldest_first() -> None:
    members = [m("a", since=0), m("b", since=10), m("c", since=50), m("d", since=90)]
    assert ops(reconcile_pool(SPEC, members, 65)) == [("delete", "a")]
    assert ops(reconcile_pool(SPEC, members, 75)) == [("delete", "a"), ("delete", "b")]


def test_min_ready_zero_scales_to_zero() -> None:
    zero = PoolSpec(0, 4, "recreate", 30.0, "h1")
    assert ops(reconcile_pool(zero, [m("a", since=0)], 31)) == [("delete", "a")]
    assert reconcile_pool(zero, [], 31) == []


def test_a_lease_past_max_duration_is_ended() -> None:
    spec = PoolSpec(1, 4, "recreate", 60.0, "h1", max_duration=100.0)
    steps = reconcile_pool(spec, [m("a", leased=True, since=0), m("b")], 101)
    assert ops(steps) == [("delete", "a")]
    assert "max_duration" in steps[0].reason


def test_a_lease_idle_past_its_idle_timeout_is_ended_and_activity_keeps_it() -> None:
    spec = PoolSpec(1, 4, "recreate", 60.0, "h1", lease_idle_timeout=30.0)
    idle = Member("old", "running", "h1", True, since=0.0, active=10.0)
    busy = Member("busy", "running", "h1", True, since=0.0, active=95.0)
    fresh = Member("new", "running", "h1", True, since=90.0, active=0.0)  # leased just now
    steps = reconcile_pool(spec, [idle, busy, fresh, m("ready")], 100.0)
    assert ops(steps) == [("delete", "old")] and "idle_timeout" in steps[0].reason
