"""End to end: a tiny Kasmina-wrapped MLP trains under Tolaria while Tamiyo and the Narset coordinator run as
services (uvicorn on 127.0.0.1, real HTTP) and Narset's workers live in the trainer process.

The budget is set so that a germination costs more than a region's allocation: the worker waits, files a
strategic opportunity proposal, Tamiyo funds it from the unallocated reserve, and the germination goes
through the next cycle. Runs on the memory bus and on a real Pulsar broker (``integration``).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from torch import nn

import esper
from esper.kasmina import KasminaConfig
from esper_contracts import StrategicOpportunityProposal
from esper_narset_coordinator.service import create_service as create_coordinator
from esper_narset_worker import HostConfig, HttpCoordinator, NarsetHost, replay
from esper_oona import connect
from esper_tamiyo.service import create_service as create_tamiyo

# Each test trains a model and serves two services: seconds, not milliseconds.
pytestmark = pytest.mark.slow

DOMAINS = """
hierarchical_control:
  tamiyo_prime: {atp_global_budget: 20, emergency_fraction: 0.1, proposal_reserve_fraction: 0.5}
  domains:
    hidden: {module_paths: ["0", "2"], atp_initial_budget: 2}
    head: {module_paths: ["4"], atp_initial_budget: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A FastAPI app served by uvicorn in a thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def tiny_task(n: int = 256, seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[Any]]:
    """Two noisy blobs with an XOR twist: quick to learn partly, then it plateaus."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    batches = [(x[i: i + 64], y[i: i + 64]) for i in range(0, n, 64)]
    return batches, batches[:2]


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://control-e2e-{uuid.uuid4().hex[:8]}"
    return str(request.getfixturevalue("pulsar_url"))


@pytest.fixture
def platform(bus_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Tamiyo and the coordinator serving over HTTP, sharing one kernel library with the trainer."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}-"
    (tmp_path / "domains.yaml").write_text(DOMAINS)
    library = esper.LocalKernelLibrary()
    tamiyo = create_tamiyo(bus_url=bus_url, topic_prefix=prefix, domains_file=str(tmp_path / "domains.yaml"),
                           kernels=library,
                           policy={"warmup_epochs": 1, "plateau_patience_epochs": 1, "plateau_min_delta": 10.0,
                                   "protected_regions": ["4"], "stage_timeout_epochs": 2})
    coordinator = create_coordinator(bus_url=bus_url, topic_prefix=prefix, seeds_per_worker=2, fan_in=2)
    served = [Served(tamiyo.app), Served(coordinator.app)]
    bus = connect(bus_url, producer_name=f"trainer-{prefix}", topic_prefix=prefix)
    try:
        yield {"bus": bus, "library": library, "tamiyo": tamiyo, "coordinator": coordinator,
               "tamiyo_url": served[0].url, "coordinator_url": served[1].url, "tmp": tmp_path}
    finally:
        bus.close()
        for s in served:
            s.stop()


def test_training_run_spends_budget_and_tamiyo_funds_a_proposal(platform: dict[str, Any]) -> None:
    bus, library = platform["bus"], platform["library"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    model = esper.wrap(model, KasminaConfig(chunks_per_layer=2, include_head=True, training_min_steps=2,
                                            training_max_steps=8, stabilization_steps=2, evaluation_steps=2,
                                            fine_tuning_steps=4),
                       kernels=library)
    host = NarsetHost(model, bus, coordinator=HttpCoordinator(platform["coordinator_url"]),
                      config=HostConfig(decision_timeout_s=30))
    train, val = tiny_task()
    config = esper.TolariaConfig(epochs=7, learning_rate=1e-3, run_dir=str(platform["tmp"] / "runs"),
                                 run_id="e2e", log_lines=False, progress_bar=False)
    try:
        _model, history = esper.TolariaTrainer(model, host, config, train_data=train, val_data=val).train()
    finally:
        host.close()

    assert len(history.epochs) == 7
    # Three Kasmina layers (regions) over two domains; the coordinator spread them over several workers.
    assert set(host.owner) == {"0", "2", "4"} and len(host.workers) >= 2
    decisions = host.proposal_decisions()
    funded = [d for d in decisions if d.approved]
    assert funded, f"no proposal was funded: {decisions}"
    assert host.spent_total > 0  # Narset paid for at least one germination
    germinated = [e for e in history.events if e.get("kind") == "transition" and e.get("new") == "GERMINATED"]
    assert germinated, "the funded germination never reached Kasmina"

    with httpx.Client(base_url=platform["tamiyo_url"], timeout=10) as api:
        status = api.get("/api/v1/system/status").json()
        assert status["status"] == "TRAINING" and status["current_epoch"] == 7 and status["run_id"] == "e2e"
        assert status["validation_accuracy"] is not None
        assert status["active_adaptations"] == len(status["active_seed_ids"])
        seeds = api.get("/api/v1/seeds", params={"region": "0", "page_size": 1}).json()
        assert seeds["total"] == 2 and len(seeds["items"]) == 1 and seeds["items"][0]["domain_id"] == "hidden"
        budgets = api.get("/api/v1/budgets").json()
        assert budgets["cycle"]["allocated"] <= budgets["cycle"]["pool"] + 1e-9
        assert budgets["health_summaries_received"] > 0  # the coordinator's domain summaries arrived
        proposals = api.get("/api/v1/decisions", params={"kind": "proposal"}).json()
        assert any(p["outputs"]["approved"] and p["inputs"]["region_id"] in {"0", "2"} for p in proposals)
        refused = api.post("/api/v1/policy", json={"risk_thresholds": {"max_loss_spike_ratio": 0.5}})
        assert refused.status_code == 400 and "max_loss_spike_ratio" in refused.json()["detail"]
        assert api.get("/api/v1/policy").json()["risk_thresholds"]["max_loss_spike_ratio"] == 2.0

    # Region summaries reached Tamiyo only as one report per domain and window.
    summaries = platform["tamiyo"].controller.economy.prime.latest()
    assert set(summaries) == {"hidden", "head"} and summaries["hidden"].source_reports == 2
    pool = httpx.get(platform["coordinator_url"] + "/api/v1/workers").json()
    assert pool["windows_folded"] >= 6 and pool["last_tree_levels"][-1] == 2


def test_unknown_region_proposal_is_rejected_on_the_bus(platform: dict[str, Any]) -> None:
    bus = platform["bus"]
    answers: list[Any] = []
    got = threading.Event()

    def on_decision(envelope: Any) -> None:
        answers.append(envelope.payload)
        got.set()

    bus.subscribe("control.proposals.decisions", "probe", on_decision)
    bus.publish("control.proposals", StrategicOpportunityProposal(
        proposal_id="nowhere-1", region_id="decoder.h.99", epoch=1, opportunity="bottleneck", plan=["grow"],
        ask=1.0, expected_roi=2.0))
    assert got.wait(20), "no answer to the proposal"
    (answer,) = answers
    assert answer.proposal_id == "nowhere-1" and not answer.approved and answer.granted == 0.0
    assert "unknown region 'decoder.h.99'" in answer.reason


def test_crashed_worker_regions_move_and_strategic_control_carries_on(platform: dict[str, Any]) -> None:
    bus, library = platform["bus"], platform["library"]
    allocations: list[Any] = []
    narset: list[Any] = []
    lock = threading.Lock()

    def keep(into: list[Any]) -> Any:
        def handle(envelope: Any) -> None:
            with lock:
                into.append(envelope.payload)
        return handle

    bus.subscribe("control.budget.allocations", "crash-probe", keep(allocations))
    bus.subscribe("telemetry.narset.allocations", "crash-probe", keep(narset))
    torch.manual_seed(1)
    model = esper.wrap(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)),
                       KasminaConfig(chunks_per_layer=2, include_head=True), kernels=library)
    host = NarsetHost(model, bus, coordinator=HttpCoordinator(platform["coordinator_url"]))
    victim = host.owner["0"]
    original = host.workers[victim].step

    def crash_at_epoch_3(boundary: Any, *args: Any, **kwargs: Any) -> Any:
        if boundary.epoch == 3:
            raise RuntimeError("simulated worker crash")
        return original(boundary, *args, **kwargs)

    host.workers[victim].step = crash_at_epoch_3  # type: ignore[method-assign]
    train, val = tiny_task(seed=1)
    config = esper.TolariaConfig(epochs=5, run_dir=str(platform["tmp"] / "runs"), run_id="crash", log_lines=False,
                                 progress_bar=False)
    try:
        _model, history = esper.TolariaTrainer(model, host, config, train_data=train, val_data=val).train()
    finally:
        host.close()

    assert len(history.epochs) == 5 and host.crashed == [victim]
    assert victim not in host.workers and host.owner["0"] != victim  # the region moved to a live worker
    pool = httpx.get(platform["coordinator_url"] + "/api/v1/workers").json()
    assert pool["dead"] == [victim] and victim not in {w["worker_id"] for w in pool["workers"]}
    assert sorted(r for w in pool["workers"] for r in w["regions"]) == ["0", "2", "4"]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len({(a.cycle, a.region_id) for a in allocations}) < 15:
        time.sleep(0.05)
    with lock:
        # Tamiyo allocated every region in every cycle, crash or not, and answered every epoch.
        assert {(a.cycle, a.region_id) for a in allocations} == {(e, r) for e in range(1, 6) for r in ("0", "2", "4")}
        # Region 0 was allocated by its new worker in the very boundary its old one crashed, resuming the
        # old worker's last good state: replaying the whole log reproduces every decision exactly.
        assert sorted(d.window for d in narset if d.region_id == "0") == [1, 2, 3, 4, 5]
        assert replay(narset) == narset
    status = httpx.get(platform["tamiyo_url"] + "/api/v1/system/status").json()
    assert status["current_epoch"] == 5 and status["run_id"] == "crash"


def test_liveness_beats_keep_workers_alive_through_long_epochs() -> None:
    url = f"memory://control-beats-{uuid.uuid4().hex[:8]}"
    coordinator = create_coordinator(bus_url=url, seeds_per_worker=2, heartbeat_timeout_s=0.5, reap_interval_s=0.05)
    served = Served(coordinator.app)
    bus = connect(url, producer_name="trainer-beats")
    model = esper.wrap(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)),
                       KasminaConfig(chunks_per_layer=2, include_head=True))
    host = NarsetHost(model, bus, coordinator=HttpCoordinator(served.url), config=HostConfig(heartbeat_interval_s=0.1))
    try:
        time.sleep(1.5)  # an "epoch" three times longer than the timeout, with no boundary
        pool = httpx.get(served.url + "/api/v1/workers").json()
        assert pool["dead"] == [] and len(pool["workers"]) == 2
        host.close()  # the trainer process is gone: nothing beats any more
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not httpx.get(served.url + "/api/v1/workers").json()["dead"]:
            time.sleep(0.1)
        assert sorted(httpx.get(served.url + "/api/v1/workers").json()["dead"]) == sorted(host.workers)
    finally:
        host.close()
        bus.close()
        served.stop()
