"""End to end: a crisis, a scaffold, and its departure, with Tamiyo as a service and Narset in the trainer process.

A Kasmina-wrapped MLP trains; from epoch 2 to 5 its inputs are scaled up (a real crisis: the loss explodes). Narset's
worker sees the region's windowed stability stay bad and files a ScaffoldRequest on the bus; Tamiyo's steward funds
it from the emergency pool, publishes a protected zone with its embargo ring and sends a scaffold GERMINATE; Kasmina's
supervisor trains, grafts, judges, weans and removes it. Checked: the lifecycle, the parameter count back to the
host's, the emergency pool paid and refunded, no germination in the zone or ring while it holds, and the zone lifted
one clean checkpoint after the sunset. Runs on the memory bus and on the real Pulsar broker (``integration``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import nn

import esper
from esper.kasmina import (
    KasminaConfig,
    collect_telemetry,
    kasmina_layers,
    reconstruction_loss,
    wait_for_loads,
)
from esper.kasmina.scaffold import ScaffoldGates, ScaffoldSupervisor
from esper_contracts import CommandType, SystemStatePacket, family
from esper_narset_worker import HostConfig, NarsetHost, WorkerConfig
from esper_oona import connect
from esper_policy.scaffolds import is_scaffold_command
from esper_tamiyo.service import create_service as create_tamiyo

pytestmark = pytest.mark.slow

DOMAINS = """
hierarchical_control:
  tamiyo_prime: {atp_global_budget: 20, emergency_fraction: 0.1, proposal_reserve_fraction: 0.5}
  domains:
    all: {module_paths: ["0", "2", "4"], atp_initial_budget: 2}
"""
CRISIS = range(2, 6)


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://scaffold-e2e-{uuid.uuid4().hex[:8]}"
    return str(request.getfixturevalue("pulsar_url"))


@pytest.fixture
def platform(bus_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Tamiyo serving (lifespan started), a kernel library with scaffold kernels shared with the trainer."""
    prefix = f"scaffold-{uuid.uuid4().hex[:8]}-"
    (tmp_path / "domains.yaml").write_text(DOMAINS)
    library = esper.LocalKernelLibrary()
    tamiyo = create_tamiyo(bus_url=bus_url, topic_prefix=prefix, domains_file=str(tmp_path / "domains.yaml"),
                           kernels=library, scaffold_pool=1.0, ring_radius=2,
                           policy={"warmup_epochs": 10, "plateau_patience_epochs": 1, "plateau_min_delta": 10.0,
                                   "max_concurrent_adaptations": 8, "kernel_tags_excluded": ["scaffold"]})
    bus = connect(bus_url, producer_name=f"trainer-{prefix}", topic_prefix=prefix)
    with TestClient(tamiyo.app) as api:
        try:
            yield {"bus": bus, "library": library, "tamiyo": tamiyo, "api": api}
        finally:
            bus.close()


def test_crisis_scaffold_arrives_teaches_and_leaves(platform: dict[str, Any]) -> None:
    bus, library, api = platform["bus"], platform["library"], platform["api"]
    torch.manual_seed(0)
    model = esper.wrap(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)),
                       KasminaConfig(chunks_per_layer=2, training_min_steps=2, training_max_steps=8,
                                     alpha_ramp_steps=8, stabilization_steps=2, telemetry_every=1),
                       kernels=library)
    for layer in kasmina_layers(model).values():  # Urza seeds scaffold blueprints; here the shared library holds them
        for i in range(layer.seed_state.n):
            library.register(family("scaffold_mlp").blueprint(layer.chunks.interface(i), origin="test",
                                                              ttl_epochs=16))
    host_params = sum(p.numel() for p in model.parameters())
    host = NarsetHost(model, bus, config=HostConfig(decision_timeout_s=30, heartbeat_interval_s=None),
                      worker_config=WorkerConfig(scaffold_after_windows=2))
    supervisor = ScaffoldSupervisor(model, ScaffoldGates(green_windows=2, max_jitter=0.5, max_drift=5.0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run_id = f"scaffold-e2e-{uuid.uuid4().hex[:6]}"
    germinations: list[tuple[int, str, bool]] = []  # (epoch, seed, scaffold?)
    zones_by_epoch: dict[int, list[Any]] = {}
    sunsets = []
    params: dict[int, int] = {}
    after_lift = 0
    try:
        for epoch in range(1, 26):
            inputs = x * 40.0 if epoch in CRISIS else x
            model.train()
            for b in range(0, 256, 32):
                loss = F.cross_entropy(model(inputs[b:b + 32]), y[b:b + 32])
                for extra in (reconstruction_loss(model), supervisor.loss()):
                    if extra is not None:
                        loss = loss + extra
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
            model.eval()
            with torch.no_grad():
                logits = model(inputs)
                val_loss = float(F.cross_entropy(logits, y))
                acc = float((logits.argmax(1) == y).float().mean())
            wait_for_loads(model)
            sunsets += supervisor.boundary(epoch, val_loss)
            packet = SystemStatePacket(run_id=run_id, epoch=epoch, train_loss=val_loss, val_loss=val_loss,
                                       val_accuracy=acc, seeds=collect_telemetry(model, epoch))
            signal = host.decide(packet)
            zones_by_epoch[epoch] = list(host.zones.values())
            germinations += [(epoch, c.seed_id, is_scaffold_command(c)) for c in signal.commands
                             if c.command is CommandType.GERMINATE]
            errors = supervisor.apply(signal.commands, epoch)
            assert not [e for e in errors if "scaffold" in e], errors
            params[epoch] = sum(p.numel() for p in model.parameters())
            lifted = [z for z in host.zones.values() if z.scaffold_id and z.expires_after_epoch is not None]
            after_lift += bool(sunsets and lifted)
            if after_lift > 2:  # a few boundaries past the lifting: growth may come back
                break
    finally:
        host.close()

    scaffold = [(e, sid) for e, sid, is_scaffold in germinations if is_scaffold]
    assert len(scaffold) == 1, germinations  # one request funded; the pool of 1 holds no second
    placed_at, seed_id = scaffold[0]
    assert placed_at > CRISIS.start  # it came because the crisis lasted, not at its first window
    assert [s.outcome for s in sunsets] == ["weaned"], [s.history for s in sunsets]
    stages = [h["stage"] for h in sunsets[0].history]
    assert {"TRAINING", "GRAFTING", "STABILIZATION"} <= set(stages) and "FOSSILIZED" not in stages
    assert max(params.values()) > host_params  # the scaffold added capacity while it was there ...
    assert params[sunsets[0].epoch] == params[placed_at - 1]  # ... and none is left once it is gone
    assert params[placed_at - 1] == host_params  # (the policy had not grown anything yet: its warm-up)

    # The zone, as Narset received it over the bus: the region, its ring, lifted after one clean checkpoint.
    zone = next(z for z in host.zones.values() if z.scaffold_id)
    assert zone.module_patterns == [seed_id.split("[")[0]] and zone.ring_patterns
    assert zone.expires_after_epoch is not None and zone.expires_after_epoch > sunsets[0].epoch
    # While it held (the ring of radius 2 covers the whole model), nobody germinated anything else; once it was
    # lifted, the policy, which wants to grow from its warm-up on (a permanent plateau), did.
    others = [(e, sid) for e, sid, is_scaffold in germinations if not is_scaffold]
    assert [(e, sid) for e, sid in others if zone.created_epoch <= e <= zone.expires_after_epoch] == []
    assert [e for e, _ in others if e > zone.expires_after_epoch], f"no growth after the embargo: {germinations}"

    decisions = api.get("/api/v1/decisions", params={"kind": "scaffold", "limit": 50}).json()
    granted = [d for d in decisions if d["outputs"].get("accepted")]
    assert len(granted) == 1 and granted[0]["outputs"]["energy_granted"] == 1.0
    assert granted[0]["outputs"]["emergency_left"] == 0.0  # the whole pool went to it
    (sunset,) = [d for d in decisions if "sunset" in d["outputs"]]
    assert sunset["outputs"]["sunset"] == "weaned" and 0 < sunset["outputs"]["refunded"] < 1.0
    budgets = api.get("/api/v1/budgets").json()
    assert budgets["scaffold_emergency_left"] == pytest.approx(sunset["outputs"]["refunded"])  # unused energy back
    assert budgets["scaffold_escalations"] == []
