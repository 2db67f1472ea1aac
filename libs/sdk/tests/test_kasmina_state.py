"""Checkpoints: state_dict / load_state_dict round-trip bit-identically with seeds in every stage."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

from esper.kasmina import collect_telemetry, kasmina_layers, wait_for_loads, wrap
from esper.kasmina.testing import Driver, advance, cmd, fast_config, kernel_for, mlp, train_steps
from esper_contracts import CommandType, SeedStage
from esper_kernels import LocalKernelLibrary

S = SeedStage


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _in_stage(stage: SeedStage) -> tuple[nn.Module, LocalKernelLibrary, torch.Tensor, Driver]:
    lib = LocalKernelLibrary()
    model = wrap(mlp(), fast_config(chunks_per_layer=2, alpha_ramp_steps=10), lib)
    x = torch.randn(16, 8)
    d = Driver(model, x)
    k = kernel_for(model, lib, "0", 1, family="bottleneck")
    if stage is S.DORMANT:
        train_steps(model, x, 3)
    elif stage in (S.CULLED, S.CANCELLED, S.ROLLED_BACK):
        d.to_stage("0", 1, k, S.TRAINING)
        command = {S.CULLED: cmd("0", 1, CommandType.CULL), S.CANCELLED: cmd("0", 1, CommandType.CANCEL),
                   S.ROLLED_BACK: advance("0", 1, S.ROLLED_BACK)}[stage]
        assert d.apply(command) == []
    else:
        d.to_stage("0", 1, k, stage)
        if stage is S.LOADING:
            wait_for_loads(model)
            collect_telemetry(model, d.epoch)  # attach the module: a LOADING seed with weights
        train_steps(model, x, 3)  # mid-ramp for GRAFTING, counters and health for everyone
    assert kasmina_layers(model)["0"].stage(1) is stage
    return model, lib, x, d


@pytest.mark.parametrize("stage", [s for s in S if s is not S.GERMINATED] + [S.GERMINATED])
def test_state_dict_round_trips_bit_identically(stage: SeedStage) -> None:
    model, lib, x, d = _in_stage(stage)
    saved = copy.deepcopy(model.state_dict())
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain tensors and containers: no unpickling of code

    fresh = wrap(mlp(seed=123), fast_config(chunks_per_layer=2, alpha_ramp_steps=10), lib)
    fresh.load_state_dict(loaded)
    restored = fresh.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        assert _same(saved[key], restored[key]), key

    # Same behaviour from here on: outputs of a training step and an eval pass, and the telemetry.
    for m in (model, fresh):
        torch.manual_seed(0)
        train_steps(m, x, 2)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    a, b = collect_telemetry(model, d.epoch), collect_telemetry(fresh, d.epoch)
    timing = {"execution_latency_us"}  # wall-clock measurements differ run to run
    assert [t.model_dump(exclude=timing) for t in a] == [t.model_dump(exclude=timing) for t in b]


def test_rollback_to_an_earlier_checkpoint_restores_seeds_and_outputs() -> None:
    model, _, x, d = _in_stage(S.TRAINING)
    checkpoint = copy.deepcopy(model.state_dict())
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    train_steps(model, x, 5)
    assert d.apply(advance("0", 1, S.GRAFTING)) == []
    train_steps(model, x, 5)
    assert d.apply(cmd("0", 1, CommandType.CULL)) == []
    model.load_state_dict(checkpoint)
    assert _same(model.state_dict(), checkpoint)
    layer = kasmina_layers(model)["0"]
    assert layer.stage(1) is S.TRAINING and "1" in layer.seeds
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_a_checkpoint_taken_while_loading_restarts_the_load() -> None:
    lib = LocalKernelLibrary()
    model = wrap(mlp(), fast_config(chunks_per_layer=2), lib)
    d = Driver(model, torch.randn(4, 8))
    d.to_stage("0", 0, kernel_for(model, lib, "0", 0), S.LOADING)  # load done but not yet picked up
    saved = model.state_dict()
    fresh = wrap(mlp(), fast_config(chunks_per_layer=2), lib)
    fresh.load_state_dict(saved)
    wait_for_loads(fresh)
    tel = collect_telemetry(fresh, d.epoch)
    assert tel[0].stage is S.LOADING and tel[0].is_ready_for_transition


def test_deepcopy_of_a_wrapped_model_is_independent() -> None:
    model, _, x, d = _in_stage(S.GRAFTING)
    clone = copy.deepcopy(model)
    model.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
    assert d.apply(cmd("0", 1, CommandType.CULL)) == []
    assert kasmina_layers(clone)["0"].stage(1) is S.GRAFTING and kasmina_layers(model)["0"].stage(1) is S.CULLED


def test_incompatible_state_is_refused() -> None:
    model, lib, _, _ = _in_stage(S.TRAINING)
    saved = model.state_dict()
    other = wrap(mlp(), fast_config(chunks_per_layer=4), lib)
    with pytest.raises(ValueError, match=r"'0'.*chunks_per_layer"):
        other.load_state_dict(saved)
