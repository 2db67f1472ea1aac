"""Helpers for testing code that drives Kasmina: small models, command shorthands, a stage driver."""

from __future__ import annotations

import torch
from torch import nn

from esper.kasmina import KasminaConfig, apply_commands, kasmina_layers, reconstruction_loss, wait_for_loads
from esper_contracts import CommandType, KasminaControlCommand, KernelQuery, SeedStage
from esper_kernels import LocalKernelLibrary

#: Step counts small enough that a seed crosses every stage in a handful of forwards.
FAST = dict(alpha_ramp_steps=4, training_min_steps=2, training_max_steps=6, stabilization_steps=2,
            evaluation_steps=2, fine_tuning_steps=2, embargo_epochs=2, telemetry_every=1)

#: The success path, after GERMINATED.
SUCCESS_PATH = [SeedStage.LOADING, SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.STABILIZATION,
                SeedStage.EVALUATING, SeedStage.FINE_TUNING, SeedStage.FOSSILIZED]


def fast_config(**overrides: object) -> KasminaConfig:
    """A KasminaConfig whose stages finish in a few steps."""
    return KasminaConfig(**{**FAST, **overrides})  # type: ignore[arg-type]


class TinyMLP(nn.Module):
    """2 -> 8 -> 8 -> 2 with named layers (``fc1``, ``fc2``, ``head``): the trainer tests' two-spirals host."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp(seed: int = 0) -> nn.Sequential:
    """8 -> 16 -> 4 MLP."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def cmd(layer: str, i: int, command: CommandType, target: SeedStage | None = None,
        kernel: str | None = None, **kw: object) -> KasminaControlCommand:
    """A KasminaControlCommand in one line."""
    return KasminaControlCommand(layer_id=layer, seed_index=i, command=command, target_stage=target,
                                 kernel_artifact_id=kernel, **kw)  # type: ignore[arg-type]


def advance(layer: str, i: int, target: SeedStage) -> KasminaControlCommand:
    """ADVANCE shorthand."""
    return cmd(layer, i, CommandType.ADVANCE, target)


def kernel_for(model: nn.Module, lib: LocalKernelLibrary, layer: str, i: int = 0,
               family: str = "low_rank_adapter") -> str:
    """Artifact id of a built-in family fitting seed ``i`` of ``layer``."""
    iface = kasmina_layers(model)[layer].chunks.interface(i)
    found = lib.query(KernelQuery(interface=iface, tags_required=[family])).artifacts
    assert found, f"no {family} kernel for {iface}"
    return found[0].artifact_id


def train_steps(model: nn.Module, x: torch.Tensor, n: int, lr: float = 0.01) -> None:
    """``n`` SGD steps on mean-square output plus the reconstruction loss."""
    model.train()
    for _ in range(n):
        loss = model(x).pow(2).mean()
        recon = reconstruction_loss(model)
        if recon is not None:
            loss = loss + recon
        model.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # plain SGD by hand: torch.optim's first use imports torch._dynamo (seconds)
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)


class Driver:
    """Moves one seed along the success path, an epoch boundary per command."""

    def __init__(self, model: nn.Module, x: torch.Tensor, epoch: int = 0) -> None:
        self.model, self.x, self.epoch = model, x, epoch

    def apply(self, *commands: KasminaControlCommand) -> list[str]:
        """Apply commands at the current boundary, then move to the next epoch."""
        errors = apply_commands(self.model, list(commands), self.epoch)
        self.epoch += 1
        return errors

    def to_stage(self, layer: str, i: int, kernel: str, stage: SeedStage, steps: int = 8) -> None:
        """Germinate and advance seed ``i`` until it is in ``stage`` (training ``steps`` forwards per epoch)."""
        assert self.apply(cmd(layer, i, CommandType.GERMINATE, kernel=kernel)) == []
        if stage is SeedStage.GERMINATED:
            return
        slot = kasmina_layers(self.model)[layer]
        while slot.stage(i) is not stage:
            current = slot.stage(i)
            if current is SeedStage.FOSSILIZED:
                raise AssertionError(f"never reached {stage}")
            if current is SeedStage.GERMINATED:
                target = SeedStage.LOADING
            else:
                target = SUCCESS_PATH[SUCCESS_PATH.index(current) + 1]
            if target is SeedStage.LOADING:
                assert self.apply(advance(layer, i, target)) == []
                wait_for_loads(self.model)
            else:
                ramp = slot.config.alpha_ramp_steps if current is SeedStage.GRAFTING else 0  # finish the ramp
                train_steps(self.model, self.x, max(steps, ramp))
                errors = self.apply(advance(layer, i, target))
                assert errors == [], errors
