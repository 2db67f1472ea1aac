"""Kasmina's scaffold supervisor: a scaffold trains and grafts like a seed, is judged by stability gates, is weaned
(alpha down, host distilled towards the blend, L1 anchor), converts to a no-op and leaves; TTL expiry; never kept."""

from __future__ import annotations

import torch

from esper.kasmina import (
    host_parameter_count,
    kasmina_layers,
    reconstruction_loss,
    seed_parameter_count,
    wait_for_loads,
    wrap,
)
from esper.kasmina.scaffold import ScaffoldGates, ScaffoldSupervisor
from esper.kasmina.testing import advance, fast_config, mlp
from esper_contracts import CommandType, KasminaControlCommand, SeedStage, family
from esper_kernels import LocalKernelLibrary
from esper_policy.scaffolds import SCAFFOLD_TAG

LAYER = "0"  # the 8 -> 16 Linear


def scaffolded(ttl: int = 12) -> tuple[torch.nn.Module, ScaffoldSupervisor, LocalKernelLibrary, str]:
    lib = LocalKernelLibrary()
    model = wrap(mlp(), fast_config(target_modules=[LAYER]), kernels=lib)
    iface = kasmina_layers(model)[LAYER].chunks.interface(0)
    kernel = lib.register(family("scaffold_mlp").blueprint(iface, origin="test", ttl_epochs=ttl)).artifact_id
    return model, ScaffoldSupervisor(model, ScaffoldGates(green_windows=2, max_jitter=0.5)), lib, kernel


def germinate(kernel: str) -> KasminaControlCommand:
    return KasminaControlCommand(layer_id=LAYER, seed_index=0, command=CommandType.GERMINATE,
                                 kernel_artifact_id=kernel, selected_for_tags=[SCAFFOLD_TAG, "scaffold_mlp"])


def epoch_of_training(model: torch.nn.Module, sup: ScaffoldSupervisor, x: torch.Tensor, y: torch.Tensor,
                      steps: int = 8) -> float:
    """SGD steps on the task loss + reconstruction + the supervisor's weaning loss; returns the last task loss."""
    model.train()
    task = torch.tensor(0.0)
    for _ in range(steps):
        task = torch.nn.functional.mse_loss(model(x), y)
        loss = task
        for extra in (reconstruction_loss(model), sup.loss()):
            if extra is not None:
                loss = loss + extra
        model.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(0.02 * p.grad)
    return float(task.detach())


def test_request_to_no_op_lifecycle_and_params_back_to_the_hosts() -> None:
    torch.manual_seed(0)
    model, sup, _lib, kernel = scaffolded(ttl=30)
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    host_params = host_parameter_count(model)
    assert sup.apply([germinate(kernel)], epoch=0) == []
    layer = kasmina_layers(model)[LAYER]
    assert layer.stage(0) is SeedStage.LOADING  # in crisis it loads at once
    stages, alphas, distilled = [], [], False
    for epoch in range(1, 30):
        loss = epoch_of_training(model, sup, x, y)
        distilled = distilled or layer.distillation_loss() is not None
        wait_for_loads(model)
        sunsets = sup.boundary(epoch, loss)
        stages.append(layer.stage(0))
        alphas.append(layer.alpha(0))
        if sunsets:
            break
    assert [s.outcome for s in sunsets] == ["weaned"] and not sunsets[0].escalate
    seen = list(dict.fromkeys(stages))
    assert seen[:3] == [SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.STABILIZATION]
    assert SeedStage.FOSSILIZED not in stages and stages[-1] is SeedStage.DORMANT
    weaning = [a for a, s in zip(alphas, stages, strict=True) if s is SeedStage.STABILIZATION and 0 < a < 1]
    assert weaning and weaning == sorted(weaning, reverse=True)  # alpha ramps down
    assert distilled  # the host learned the blended output while alpha came down
    assert seed_parameter_count(model) == 0 and sum(p.numel() for p in model.parameters()) == host_params
    assert layer.scaffold_seeds == set() and sup.scaffolds == {}
    assert any(h.get("gates") and all(h["gates"].values()) for h in sunsets[0].history)


def test_ttl_expiry_sunsets_anyway_and_escalates() -> None:
    model, sup, _lib, kernel = scaffolded(ttl=2)
    sup.apply([germinate(kernel)], epoch=0)
    x = torch.randn(16, 8)
    sunsets = []
    for epoch in (1, 2):
        epoch_of_training(model, sup, x, torch.zeros(16, 4), steps=2)
        wait_for_loads(model)
        sunsets = sup.boundary(epoch, 1.0)
    assert [(s.outcome, s.escalate) for s in sunsets] == [("ttl_expired", True)]
    assert kasmina_layers(model)[LAYER].stage(0) is SeedStage.DORMANT and seed_parameter_count(model) == 0


def test_a_scaffold_is_never_kept() -> None:
    model, sup, _lib, kernel = scaffolded()
    sup.apply([germinate(kernel)], epoch=0)
    layer = kasmina_layers(model)[LAYER]
    errors = layer.apply_command(advance(LAYER, 0, SeedStage.FOSSILIZED), 1)
    assert errors is not None and "never goes to FOSSILIZED" in errors
    state = model.state_dict()
    copy, _sup, _lib2, _k = scaffolded()
    copy.load_state_dict(state)  # the scaffold mark survives a checkpoint
    assert kasmina_layers(copy)[LAYER].scaffold_seeds == {0}
