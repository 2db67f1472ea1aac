"""Removal through the bus: Elesh and Emrakul as processes on the real broker cut a model while it trains.

``esper serve elesh`` and ``esper serve emrakul`` run as OS processes on Pulsar (topics under a prefix of this
test's own). The test plays the trainer (Tolaria with a :class:`~esper.tolaria.removal_bus.RemovalLink`) and
Narset (one allocation with ``x_E = 1``) and Tamiyo (one protected zone). The trainer trains an MLP, stores its
weights in the blob store and asks for importance; Elesh scores them, Emrakul plans lysis outside the zone,
the trainer cuts at its next boundary and trains on. The plan applied twice is refused as stale; malformed
messages go to the dead-letter topics.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from esper.tolaria.pruning import Compactor, train_epoch
from esper.tolaria.removal_bus import RemovalLink
from esper_contracts import (
    AllocatorInputs,
    ControlMode,
    NarsetAllocationDecision,
    ProtectedZone,
    PruneMode,
    PruningOutcome,
    Topic,
)
from esper_devtools.processes import Proc, free_port
from esper_oona import connect
from esper_oona.testing import Collector
from esper_pruning.cut import parameter_count
from esper_storage import FileBlobStore


def _spirals(n: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    t = torch.rand(n, generator=g) * 3 * torch.pi
    label = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * torch.pi)
    sign = 1 - 2 * label.float()
    x = torch.stack([sign * r * torch.cos(t), sign * r * torch.sin(t)], dim=1)
    return [(x[i:i + 64], label[i:i + 64]) for i in range(0, n, 64)]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_elesh_and_emrakul_cut_a_training_model_through_the_bus(tmp_path: Path, pulsar_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    prefix = f"removal-{run}-"
    blobs_dir = tmp_path / "blobs"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    base |= {"ESPER_BUS_URL": pulsar_url, "ESPER_TOPIC_PREFIX": prefix, "ESPER_LOG_FORMAT": "text",
             "PYTHONUNBUFFERED": "1", "ESPER_NACK_DELAY_MS": "500"}
    elesh = Proc("elesh", base | {"ESPER_PORT": str(free_port()), "ESPER_BLOB_URL": blobs_dir.as_uri()}, tmp_path)
    emrakul_port = free_port()
    emrakul = Proc("emrakul", base | {"ESPER_PORT": str(emrakul_port)}, tmp_path)
    bus = connect(pulsar_url, producer_name="tolaria", topic_prefix=prefix)
    try:
        elesh.start()
        emrakul.start()
        outcomes = Collector(bus, Topic.PRUNING_OUTCOMES)
        inputs = AllocatorInputs(progress=0.0, stability=1.0, efficiency=0.3)
        bus.publish(Topic.NARSET_ALLOCATIONS, NarsetAllocationDecision(
            region_id="host", window=1, mode=ControlMode.CONSOLIDATION, x_T=0.1, x_E=1.0, c_T=0.1, c_E=1.0, pool=1.5,
            total_spent=1.1, raw_inputs=inputs, smoothed_inputs=inputs))
        bus.publish(Topic.PROTECTED_ZONES, ProtectedZone(module_patterns=["2"], reason="scaffold nearby",
                                                         created_epoch=0))
        bus.publish_raw(Topic.IMPORTANCE, b"{broken")  # Emrakul's subscription sets it aside
        bus.flush()

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32),
                              nn.ReLU(), nn.Linear(32, 2))
        data = _spirals()
        compactor = Compactor(model, lambda ps: torch.optim.Adam(ps, lr=0.01), example_inputs=data[0][0][:2],
                              val_data=data[-2:], outputs=["6"], run_id=f"run-{run}")
        compactor.zones = [ProtectedZone(module_patterns=["2"], reason="scaffold nearby", created_epoch=0)]
        link = RemovalLink(bus, FileBlobStore(blobs_dir), compactor, subscription=f"tolaria-{run}")
        for _ in range(4):
            train_epoch(model, compactor.optimizer, data)
        params = parameter_count(model)
        time.sleep(2.0)  # Emrakul's subscriptions read the allocation and the zone from the oldest message held
        request = link.request_importance(4, data[:4])
        assert {m.module_path for m in request.modules} == {"0", "2", "4"}

        plan = link.next_plan(180)
        assert plan is not None, f"no plan arrived\nelesh:\n{elesh.tail()}\nemrakul:\n{emrakul.tail()}"
        assert plan.mode == PruneMode.LYSIS and plan.checkpoint_id == request.checkpoint_id
        assert plan.actions and all(a.module_path != "2" for a in plan.actions)  # never in the zone
        width_in_zone = model[2].out_features
        outcome = link.apply(plan, epoch=5)
        assert outcome.accepted, outcome.reason
        assert parameter_count(model) == outcome.parameters_after < params
        assert outcome.macs_after < outcome.macs_before and model[2].out_features == width_in_zone
        losses = [train_epoch(model, compactor.optimizer, data) for _ in range(2)]
        assert all(torch.isfinite(torch.tensor(losses)))

        stale = link.apply(plan, epoch=6)  # computed on the weights before the cut
        assert not stale.accepted and "stale" in stale.reason and stale.parameters_after == parameter_count(model)
        bus.publish_raw(Topic.PRUNING_PLANS, b"not a plan")
        bus.flush()

        seen: list[PruningOutcome] = outcomes.wait_for(2, timeout_s=60)
        assert [o.accepted for o in seen[:2]] == [True, False]
        deadline = time.monotonic() + 60
        status: dict[str, int] = {}
        while time.monotonic() < deadline and status.get("outcomes", 0) < 2:
            status = httpx.get(f"http://127.0.0.1:{emrakul_port}/api/v1/status", timeout=5).json()
            time.sleep(0.5)
        assert status["outcomes"] == 2 and status["applied"] == 1 and status["plans"] >= 1
        assert any(d.data == b"{broken" for d in bus.read_dead_letters(Topic.IMPORTANCE, timeout_s=10))
        assert any(d.data == b"not a plan" for d in bus.read_dead_letters(Topic.PRUNING_PLANS, timeout_s=10))
        link.close()
    except BaseException:
        print(f"elesh:\n{elesh.tail()}\nemrakul:\n{emrakul.tail()}")
        raise
    finally:
        for proc in (elesh, emrakul):
            proc.stop()
        bus.close()
