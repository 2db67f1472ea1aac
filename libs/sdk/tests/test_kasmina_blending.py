"""What each stage does to the forward and backward pass: identity, gradient isolation, the alpha ramp."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from esper.kasmina import (
    EventKind,
    alpha_at,
    chunk_bounds,
    collect_telemetry,
    drain_events,
    kasmina_layers,
    reconstruction_loss,
    seed_parameters,
    unwrap,
    wrap,
)
from esper.kasmina.testing import Driver, advance, fast_config, kernel_for, mlp, train_steps
from esper_contracts import GraftingStrategy, SeedStage
from esper_kernels import LocalKernelLibrary

S = SeedStage


def _wrapped(chunks: int = 2, **overrides: object) -> tuple[nn.Module, nn.Module, LocalKernelLibrary, torch.Tensor]:
    bare = mlp()
    lib = LocalKernelLibrary()
    model = wrap(copy.deepcopy(bare), fast_config(chunks_per_layer=chunks, include_head=True, **overrides), lib)
    return bare, model, lib, torch.randn(16, 8)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.sampled_from(list(GraftingStrategy)))
def test_alpha_ramp_is_monotone_bounded_and_reaches_one(ramp: int, strategy: GraftingStrategy) -> None:
    values = [alpha_at(k, ramp, strategy) for k in range(ramp + 3)]
    assert values[0] == (1.0 if ramp == 0 else 0.0)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[ramp] == 1.0 and values[-1] == 1.0


def test_chunk_bounds_cover_the_features() -> None:
    assert chunk_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        chunk_bounds(2, 3)


def test_dormant_is_an_exact_identity() -> None:
    bare, model, _, x = _wrapped()
    host0 = kasmina_layers(model)["0"].host
    assert torch.equal(model(x), bare(x))
    out = host0(x)
    assert kasmina_layers(model)["0"](x) is not out and torch.equal(kasmina_layers(model)["0"](x), out)
    # the layer returns the host's output object itself
    captured = {}
    host0.register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    assert kasmina_layers(model)["0"](x) is captured["o"]


def test_training_has_no_effect_on_output_and_no_gradient_into_the_host() -> None:
    bare, model, lib, x = _wrapped()
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, lib, "0", 0, family="bottleneck"), S.TRAINING, steps=0)
    d.to_stage("2", 1, kernel_for(model, lib, "2", 1, family="residual_mlp"), S.TRAINING, steps=0)
    model.train()
    out = model(x)
    assert torch.equal(out, bare(x))
    recon = reconstruction_loss(model)
    assert recon is not None and recon.item() > 0
    recon.backward()
    host_params = [p for n, p in model.named_parameters() if ".host." in n]
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in host_params)
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in seed_parameters(model))
    # the task loss gives the host exactly the gradients of the bare model
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    bare(x).pow(2).mean().backward()
    for (name, p), q in zip([(n, p) for n, p in model.named_parameters() if ".host." in n], bare.parameters(),
                            strict=True):
        assert torch.equal(p.grad, q.grad), name
    assert all(p.grad is None for p in seed_parameters(model))


def test_grafting_blends_with_the_ramped_alpha_and_keeps_the_host_detached_from_the_seed() -> None:
    _, model, lib, x = _wrapped(alpha_ramp_steps=4)
    layer = kasmina_layers(model)["0"]
    d = Driver(model, x)
    d.to_stage("0", 1, kernel_for(model, lib, "0", 1, family="bottleneck"), S.GRAFTING, steps=0)
    seed = layer.seeds["1"]
    model.train()
    seen = []
    for k in range(1, 6):
        h = layer.host(x).detach()
        out = layer(x)
        alpha = alpha_at(k, 4, GraftingStrategy.LINEAR)
        lo, hi = layer.chunks.bounds[1]
        expected = torch.lerp(h[:, lo:hi], seed(h[:, lo:hi]), alpha)
        assert torch.allclose(out[:, lo:hi], expected)
        assert torch.equal(out[:, :lo], h[:, :lo])
        seen.append(layer.alpha(1))
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0]
    # gradient of the output into the host weights is (1-α) on the blended chunk: 0 at α=1
    layer.zero_grad(set_to_none=True)
    layer(x)[:, lo:hi].sum().backward()
    assert torch.count_nonzero(layer.host.weight.grad) == 0
    assert any(p.grad is not None for p in seed.parameters())


def test_stabilization_freezes_the_seed_and_fine_tuning_trains_it_on_the_task_loss() -> None:
    _, model, lib, x = _wrapped()
    layer = kasmina_layers(model)["0"]
    d = Driver(model, x)
    k = kernel_for(model, lib, "0", 0, family="bottleneck")
    d.to_stage("0", 0, k, S.STABILIZATION)
    assert not any(p.requires_grad for p in layer.seeds["0"].parameters()) and seed_parameters(model) == []
    for target in (S.EVALUATING, S.FINE_TUNING):
        train_steps(model, x, 3)
        assert d.apply(advance("0", 0, target)) == []
    params = seed_parameters(model)
    assert params and all(p.requires_grad for p in params)
    model(x).pow(2).mean().backward()
    assert all(p.grad is not None for p in params)
    assert layer.host.weight.grad is not None and torch.count_nonzero(layer.host.weight.grad) > 0  # not detached


def test_kernel_runtime_error_falls_back_to_identity_and_the_seed_is_culled() -> None:
    bare, model, lib, x = _wrapped()
    layer = kasmina_layers(model)["0"]
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, lib, "0", 0, family="low_rank_adapter"), S.GRAFTING, steps=0)

    def explode(*_: object) -> None:
        raise RuntimeError("illegal memory access")

    layer.seeds["0"].register_forward_pre_hook(explode)
    drain_events(model)
    model.train()
    out = model(x)  # the step completes
    out.pow(2).mean().backward()
    assert torch.equal(out, bare(x))  # identity for the failing seed, the others are dormant
    events = drain_events(model)
    assert [e.kind for e in events] == [EventKind.RUNTIME_ERROR] and "illegal memory access" in events[0].message
    model(x)  # not called again: no second error
    tel = collect_telemetry(model, d.epoch)
    assert tel[0].stage is S.CULLED and tel[0].error_count == 1
    assert lib.cache.get(layer.kernel_id(0) or "") is None  # evicted from the cache


def test_unwrap_keeps_fossilized_seeds_and_outputs() -> None:
    _, model, lib, x = _wrapped(chunks=2)
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, lib, "0", 0, family="bottleneck"), S.FOSSILIZED)
    d.to_stage("2", 1, kernel_for(model, lib, "2", 1, family="bottleneck"), S.GRAFTING)
    train_steps(model, x, 2)  # alpha > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
    with pytest.warns(UserWarning, match=r"drops live seeds: 2\[1\] \(GRAFTING\)"):
        unwrap(model, live_seeds="drop")
    assert not kasmina_layers(model)
    assert type(model[2]) is nn.Linear  # a layer with no fossilized seed is its host again
    with torch.no_grad():
        after = model(x)
    # Layer "2" lost its grafting seed (chunk 1 = features 2:4): chunk 0 is unchanged, bit for bit.
    assert torch.equal(before[:, 0:2], after[:, 0:2])
    assert not torch.equal(before[:, 2:4], after[:, 2:4])
    assert all(not p.requires_grad for p in model[0].seeds.parameters())
