"""The region -> worker map: spawning, least-loaded placement, quotas, heartbeats and crash recovery."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_narset_coordinator.mapping import PoolLimits, RegionMap


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_spawns_when_load_demands_else_least_loaded() -> None:
    rmap = RegionMap(PoolLimits(seeds_per_worker=100, max_workers=3))
    assert list(rmap.workers) == ["worker-000"]
    assert rmap.assign("a", 60).worker_id == "worker-000"
    move = rmap.assign("b", 60)  # 120 > 100: a second worker
    assert move.spawned and move.worker_id == "worker-001"
    assert rmap.assign("c", 30).worker_id == "worker-000"  # both fit; ties -> lowest load (60 vs 60) -> id
    assert rmap.assign("d", 30).worker_id == "worker-001"  # now worker-001 is the least loaded
    assert rmap.assign("a", 10).previous == "worker-000"  # refreshing keeps a region where it is
    assert rmap.loads() == {"worker-000": 40, "worker-001": 90}


def test_full_pool_goes_over_quota_instead_of_dropping_a_region() -> None:
    rmap = RegionMap(PoolLimits(seeds_per_worker=10, max_workers=2))
    rmap.assign("a", 10)
    rmap.assign("b", 10)
    move = rmap.assign("c", 5)
    assert move.over_quota and not move.spawned and len(rmap.workers) == 2
    assert "c" in rmap.owner


def test_region_quota_per_worker() -> None:
    rmap = RegionMap(PoolLimits(seeds_per_worker=1000, regions_per_worker=2))
    workers = {rmap.assign(f"r{i}", 1).worker_id for i in range(5)}
    assert len(workers) == 3 and all(len(rs) <= 2 for rs in rmap.assignments().values())


def test_silent_worker_is_reaped_and_its_regions_move() -> None:
    clock = FakeClock()
    rmap = RegionMap(PoolLimits(seeds_per_worker=10, heartbeat_timeout_s=5.0), clock=clock)
    for i in range(4):
        rmap.assign(f"r{i}", 5)
    before = rmap.assignments()
    assert len(before) == 2
    clock.now = 4.0
    assert rmap.heartbeat("worker-000")
    clock.now = 8.0  # worker-001 last seen at 0.0
    moves = rmap.reap()
    assert {m.region_id for m in moves} == set(before["worker-001"])
    assert all(m.previous == "worker-001" for m in moves)
    assert "worker-001" not in rmap.workers and rmap.dead == ["worker-001"]
    assert sorted(rmap.owner) == ["r0", "r1", "r2", "r3"]  # nothing orphaned
    assert not rmap.heartbeat("worker-001")  # a dead worker stays dead


def test_last_worker_crashing_leaves_a_fresh_one() -> None:
    rmap = RegionMap()
    rmap.assign("r", 3)
    moves = rmap.crashed("worker-000")
    assert [m.worker_id for m in moves] == ["worker-001"] and rmap.owner == {"r": "worker-001"}


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        PoolLimits(min_workers=0)
    with pytest.raises(ValueError, match="min_workers"):
        PoolLimits(min_workers=5, max_workers=4)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("assign"), st.integers(0, 40), st.integers(0, 60)),
    st.tuples(st.just("crash"), st.integers(0, 12), st.just(0)),
    st.tuples(st.just("release"), st.integers(0, 40), st.just(0)),
), max_size=80), max_workers=st.integers(1, 8))
def test_every_region_has_exactly_one_live_owner(ops: list[tuple[str, int, int]], max_workers: int) -> None:
    rmap = RegionMap(PoolLimits(seeds_per_worker=50, max_workers=max_workers, regions_per_worker=5))
    regions: set[str] = set()
    for op, n, seeds in ops:
        if op == "assign":
            rmap.assign(f"r{n}", seeds)
            regions.add(f"r{n}")
        elif op == "crash":
            rmap.crashed(f"worker-{n:03d}")
        else:
            rmap.release(f"r{n}")
            regions.discard(f"r{n}")
        assert 1 <= len(rmap.workers) <= max_workers
        assert set(rmap.owner) == regions
        held = [r for w in rmap.workers.values() for r in w.regions]
        assert sorted(held) == sorted(regions)  # no region held twice, none lost
        assert all(rmap.owner[r] in rmap.workers for r in regions)
