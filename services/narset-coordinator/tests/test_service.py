"""The coordinator service: registration, heartbeats, crash reassignment, one summary per domain to Tamiyo."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import AllocationCommand, HealthSummaryReport
from esper_narset_coordinator.service import create_service
from esper_oona import connect


def report(region: str, domain: str, window: int, seeds: int = 10) -> dict[str, Any]:
    return HealthSummaryReport(region_id=region, domain_id=domain, window=window, epoch=window, seed_count=seeds,
                               mean_gradient_norm=1.0, max_gradient_norm=2.0, budget_spent=1.0).model_dump(mode="json")


@pytest.fixture
def coordinator() -> Iterator[tuple[Any, Any, list[HealthSummaryReport], TestClient]]:
    url = f"memory://coord-{uuid.uuid4().hex[:8]}"
    service = create_service(bus_url=url, seeds_per_worker=20, fan_in=2, heartbeat_timeout_s=60, max_workers=5)
    bus = connect(url, producer_name="probe")
    got: list[HealthSummaryReport] = []
    lock = threading.Lock()

    def collect(envelope: Any) -> None:
        with lock:
            got.append(envelope.payload)

    bus.subscribe("telemetry.health.summaries", "probe", collect)
    with TestClient(service.app) as client:
        yield service, bus, got, client
    bus.close()


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_registration_spawns_workers_by_load(coordinator: Any) -> None:
    _service, _bus, _got, client = coordinator
    regions = [{"region_id": f"layer{i}", "seed_count": 10} for i in range(5)]
    assignment = client.post("/api/v1/regions", json={"regions": regions}).json()
    assert len(assignment["workers"]) == 3  # 20 seeds per worker: 10+10, 10+10, 10
    assert sorted(r for w in assignment["workers"].values() for r in w["regions"]) == [f"layer{i}" for i in range(5)]
    assert all(w["quota"]["max_seeds"] == 20 for w in assignment["workers"].values())
    bad = client.post("/api/v1/regions", json={"regions": [{"region_id": "", "seed_count": -1}]})
    assert bad.status_code == 422


def test_window_of_reports_becomes_one_summary_per_domain(coordinator: Any) -> None:
    _service, _bus, got, client = coordinator
    regions = [{"region_id": f"layer{i}", "seed_count": 10} for i in range(6)]
    workers = list(client.post("/api/v1/regions", json={"regions": regions}).json()["workers"])
    reports = [report(f"layer{i}", "early" if i < 3 else "late", window=1) for i in range(6)]
    client.post("/api/v1/heartbeat", json={"window": 1, "epoch": 1, "workers": workers, "reports": reports})
    wait_for(lambda: len(got) == 2)
    assert sorted(r.domain_id for r in got) == ["early", "late"]
    assert all(r.seed_count == 30 and r.source_reports == 3 and r.budget_spent == 3.0 for r in got)
    pool = client.get("/api/v1/workers").json()
    assert pool["windows_folded"] == 1 and pool["last_tree_levels"][-1] == 2


def test_crashed_worker_regions_move_and_quota_follows_allocations(coordinator: Any) -> None:
    service, bus, _got, client = coordinator
    regions = [{"region_id": f"layer{i}", "seed_count": 10} for i in range(4)]
    before = client.post("/api/v1/regions", json={"regions": regions}).json()["workers"]
    victim = sorted(before)[0]
    for i in range(4):
        bus.publish("control.budget.allocations", AllocationCommand(cycle=1, region_id=f"layer{i}", atp_budget=2.5))
    wait_for(lambda: len(service._budgets) == 4)
    after = client.post("/api/v1/heartbeat", json={"window": 1, "epoch": 1, "workers": sorted(before),
                                                    "crashed": [victim], "complete": False}).json()["workers"]
    assert victim not in after
    assert sorted(r for w in after.values() for r in w["regions"]) == [f"layer{i}" for i in range(4)]
    assert sum(w["quota"]["atp_per_cycle"] for w in after.values()) == pytest.approx(10.0)
    assert client.get("/api/v1/workers").json()["dead"] == [victim]


def test_silent_worker_is_reaped_by_the_background_reaper() -> None:
    url = f"memory://coord-{uuid.uuid4().hex[:8]}"
    service = create_service(bus_url=url, seeds_per_worker=10, heartbeat_timeout_s=0.3, reap_interval_s=0.05)
    with TestClient(service.app) as client:
        regions = [{"region_id": f"layer{i}", "seed_count": 10} for i in range(2)]
        workers = sorted(client.post("/api/v1/regions", json={"regions": regions}).json()["workers"])
        assert len(workers) == 2
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # only the first worker keeps beating
            client.post("/api/v1/heartbeat", json={"window": 0, "epoch": 0, "workers": workers[:1], "complete": False})
            if workers[1] in client.get("/api/v1/workers").json()["dead"]:
                break
            time.sleep(0.05)
        assignment = client.get("/api/v1/assignments").json()["workers"]
        assert workers[1] not in assignment
        assert sorted(r for w in assignment.values() for r in w["regions"]) == ["layer0", "layer1"]


def test_metrics_show_the_pool_the_heartbeats_and_the_folded_windows(coordinator: Any) -> None:
    _service, _bus, got, client = coordinator
    regions = [{"region_id": f"layer{i}", "seed_count": 10} for i in range(4)]
    workers = sorted(client.post("/api/v1/regions", json={"regions": regions}).json()["workers"])
    reports = [report(f"layer{i}", "early" if i < 2 else "late", window=1) for i in range(4)]
    client.post("/api/v1/heartbeat", json={"window": 1, "epoch": 1, "workers": workers[1:], "crashed": workers[:1],
                                           "reports": reports})
    wait_for(lambda: len(got) == 2)
    text = client.get("/metrics").text
    assert "esper_narset_heartbeats_total 1.0" in text
    assert "esper_narset_worker_crashes_total 1.0" in text
    assert "esper_narset_windows_folded_total 1.0" in text
    assert "esper_narset_summaries_published_total 2.0" in text
    live = len(client.get("/api/v1/workers").json()["workers"])  # the crashed worker's regions spawned another
    assert f'esper_narset_workers{{state="live"}} {live}.0' in text and 'esper_narset_workers{state="dead"} 1.0' in text
    assert "esper_narset_regions 4.0" in text
    assert 'esper_narset_tree_messages{level="0"} 4.0' in text and 'esper_narset_tree_messages{level="2"} 2.0' in text
