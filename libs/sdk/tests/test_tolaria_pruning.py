"""Tolaria's cuts: refusals leave the model untouched, lysis shrinks it and rebuilds the optimizer, the guard rolls
back a bad cut, and the bus link carries a request out and a plan's outcome back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import torch
from torch import nn

from esper.tolaria.pruning import CompactionSettings, Compactor, compact, train_epoch
from esper.tolaria.removal_bus import RemovalLink
from esper_contracts import (
    ImportanceRequest,
    ProtectedZone,
    PruneAction,
    PruneGranularity,
    PruneMode,
    PruningOutcome,
    PruningPlan,
    Topic,
)
from esper_oona import connect
from esper_policy.emrakul import plan_pruning
from esper_pruning.cut import parameter_count
from esper_storage import FileBlobStore


def _data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 2))


def _compactor(model: nn.Module, **kw: object) -> Compactor:
    data = _data()
    return Compactor(model, lambda ps: torch.optim.Adam(ps, lr=0.01), example_inputs=data[0][0][:2],
                     val_data=data, outputs=["4"], run_id="r1", **kw)  # type: ignore[arg-type]


def _plan(c: Compactor, path: str = "0", indices: tuple[int, ...] = (1, 2), **kw: object) -> PruningPlan:
    fields = {"epoch": 3, "importance_report_id": "rep", "checkpoint_id": c.version, "mode": PruneMode.LYSIS,
              "allowance": 0.5, "run_id": "r1",
              "actions": [PruneAction(module_path=path, granularity=PruneGranularity.NEURON, indices=list(indices))]}
    return PruningPlan(**{**fields, **kw})  # type: ignore[arg-type]


def test_bad_plans_are_refused_with_the_model_untouched() -> None:
    model = _model()
    c = _compactor(model)
    c.zones = [ProtectedZone(module_patterns=["2"], reason="scaffold", created_epoch=0)]
    x = _data()[0][0]
    before, params = model(x), parameter_count(model)
    for plan, reason in ((_plan(c, checkpoint_id="old"), "stale plan"), (_plan(c, path="9"), "no layer '9'"),
                         (_plan(c, path="2"), "protected zone"), (_plan(c, indices=(30,)), "has 24 units")):
        outcome = c.apply(plan, epoch=3)
        assert not outcome.accepted and reason in outcome.reason
        assert outcome.parameters_after == outcome.parameters_before == params
        assert parameter_count(model) == params and torch.equal(model(x), before)


def test_lysis_shrinks_the_model_rebuilds_the_optimizer_and_training_goes_on() -> None:
    model = _model()
    c = _compactor(model)
    old_version = c.version
    train_epoch(model, c.optimizer, _data())
    outcome = c.apply(_plan(c), epoch=3)
    assert outcome.accepted and outcome.units_removed == 2 and model[0].out_features == 22 == model[2].in_features
    assert outcome.parameters_after == parameter_count(model) == outcome.parameters_before - 2 * (6 + 1) - 2 * 16
    assert outcome.macs_after < outcome.macs_before and outcome.loss_after is not None
    assert {id(p) for g in c.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert c.version != old_version  # plans made on the old weights are stale now
    assert "stale" in c.apply(_plan(c, checkpoint_id=old_version), epoch=4).reason
    train_epoch(model, c.optimizer, _data())


def test_the_guard_rolls_back_a_cut_that_spikes_the_loss() -> None:
    model = _model()
    c = _compactor(model, spike_ratio=1.0001)
    for _ in range(5):
        train_epoch(model, c.optimizer, _data())
    x = _data()[0][0]
    before, params = model(x), parameter_count(model)
    outcome = c.apply(_plan(c, indices=tuple(range(20))), epoch=3)
    assert outcome.rolled_back and not outcome.accepted and "rolled back" in outcome.reason
    assert parameter_count(model) == params and torch.equal(model(x), before)
    assert {id(p) for g in c.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_a_probe_measures_and_restores() -> None:
    model = _model()
    c = _compactor(model)
    x = _data()[0][0]
    before = model(x)
    outcome = c.apply(_plan(c, mode=PruneMode.PROBE), epoch=3)
    assert outcome.accepted and outcome.loss_after is not None and outcome.parameters_after == parameter_count(model)
    assert torch.equal(model(x), before)


def test_a_model_with_nothing_to_cut_is_left_alone() -> None:
    model = nn.Sequential(nn.Linear(6, 2))  # its only layer is the output
    c = Compactor(
        model, lambda ps: torch.optim.Adam(ps, lr=0.01), example_inputs=_data()[0][0][:2], val_data=_data(),
        outputs=["0"], run_id="r1")
    assert c.score_here(1, _data()[:1]) is None
    assert compact(c, _data(), CompactionSettings(epochs=2, every=1)) == []


def test_standalone_compaction_scores_plans_and_cuts() -> None:
    model = _model()
    c = _compactor(model)
    params = parameter_count(model)
    records: list[dict[str, object]] = []
    outcomes = compact(c, _data(), CompactionSettings(epochs=6, every=2), on_epoch=lambda e, r: records.append(r))
    assert any(o.accepted and o.mode == PruneMode.LYSIS for o in outcomes)
    assert parameter_count(model) < params and records[-1]["total_params"] == parameter_count(model)


def test_the_bus_link_sends_a_request_and_reports_each_outcome(tmp_path: Path) -> None:
    bus = connect(f"memory://{uuid.uuid4().hex}", producer_name="tolaria")
    blobs = FileBlobStore(tmp_path)
    requests: list[ImportanceRequest] = []
    outcomes: list[PruningOutcome] = []
    bus.subscribe(Topic.IMPORTANCE_REQUESTS, "elesh", lambda e: requests.append(e.payload))
    bus.subscribe(Topic.PRUNING_OUTCOMES, "emrakul", lambda e: outcomes.append(e.payload))
    model = _model()
    link = RemovalLink(bus, blobs, _compactor(model), subscription="tolaria-r1")
    request = link.request_importance(2, _data()[:2])
    assert blobs.exists(request.checkpoint_key) and request.checkpoint_id == link.compactor.version
    assert {m.module_path for m in request.modules} == {"0", "2"} and request.statistics
    report = link.compactor.score_here(2, _data()[:2])
    assert report is not None
    plan = plan_pruning(report, [], 1.0)
    assert plan is not None
    bus.publish(Topic.PRUNING_PLANS, plan, key="r1")
    bus.publish(Topic.PRUNING_PLANS, plan.model_copy(update={"run_id": "another-run"}), key="another-run")
    bus.flush()
    arrived = link.next_plan(5.0)
    assert arrived == plan and link.next_plan(0.2) is None  # another run's plan is not ours
    done = link.apply(arrived, epoch=2)
    deadline = time.monotonic() + 10
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.accepted and outcomes and outcomes[0].plan_id == plan.plan_id
    assert parameter_count(model) == done.parameters_after < done.parameters_before
    link.close()
    bus.close()
