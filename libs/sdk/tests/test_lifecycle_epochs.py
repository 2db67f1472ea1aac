"""Lifecycle lengths in epochs mean the same on any dataset, and seeds the run's end cut short are UNFINISHED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from esper import ConfigError, KasminaConfig, LocalKernelLibrary, TolariaConfig, wrap
from esper.data import Batches, Split
from esper.kasmina import kasmina_layers
from esper.tolaria import TolariaTrainer
from esper_policy import HeuristicPolicy, NullPolicy, TamiyoConfig

EPOCHS = KasminaConfig(exclude_modules=["2"], alpha_ramp_epochs=2.0, training_max_epochs=1.0,
                       stabilization_epochs=0.5, evaluation_epochs=0.5, fine_tuning_epochs=3.0, training_min_steps=1)


def _split(n: int) -> Split:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 2, generator=g)
    return Split(x, (x[:, 0] * x[:, 1] > 0).long())


def _trainer(tmp_path: Path, n: int, batch_size: int, epochs: int = 1, controller: object = None,
             train_data: object = None) -> TolariaTrainer:
    torch.manual_seed(0)
    library = LocalKernelLibrary()
    model = wrap(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), EPOCHS, library)
    config = TolariaConfig(epochs=epochs, run_dir=str(tmp_path), run_id=f"n{n}", progress_bar=False,
                           log_lines=False, learning_rate=1e-2)
    return TolariaTrainer(model, controller or NullPolicy(), config,  # type: ignore[arg-type]
                          train_data=train_data if train_data is not None else Batches(_split(n), batch_size),
                          val_data=Batches(_split(64), 64, shuffle=False))  # type: ignore[arg-type]


def test_lengths_in_epochs_become_steps_of_each_datasets_batches(tmp_path: Path) -> None:
    (few,) = kasmina_layers(_trainer(tmp_path, 64, 16).model).values()  # 4 batches per epoch
    (many,) = kasmina_layers(_trainer(tmp_path, 640, 16).model).values()  # 40 batches per epoch
    assert (few.config.alpha_ramp_steps, few.config.fine_tuning_steps, few.config.stabilization_steps) == (8, 12, 2)
    steps = (many.config.alpha_ramp_steps, many.config.fine_tuning_steps, many.config.training_max_steps)
    assert steps == (80, 120, 40)
    with pytest.raises(ValueError, match="not both: alpha_ramp_epochs and alpha_ramp_steps"):
        KasminaConfig(alpha_ramp_epochs=1.0, alpha_ramp_steps=5)
    assert KasminaConfig(alpha_ramp_steps=7).in_steps(4).alpha_ramp_steps == 7  # lengths in steps still work
    with pytest.raises(ConfigError, match="has no len"):
        _trainer(tmp_path, 64, 16, train_data=Unsized(Batches(_split(64), 16)))


class Unsized:
    """Iterable every epoch, but with no len()."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)


def test_a_one_pass_generator_is_refused_up_front(tmp_path: Path) -> None:
    spent_after_one_epoch = (batch for batch in Batches(_split(64), 16))
    with pytest.raises(TypeError, match="train_data is a one-pass iterator"):
        _trainer(tmp_path, 64, 16, train_data=spent_after_one_epoch)


def test_seeds_still_live_when_training_ends_are_reported_unfinished(tmp_path: Path) -> None:
    library = LocalKernelLibrary()
    tamiyo = TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=100.0)
    trainer = _trainer(tmp_path, 64, 16, epochs=3, controller=HeuristicPolicy(tamiyo, library))
    _, history = trainer.train()  # a seed germinates at epoch 1 and needs ~7 epochs: the run ends first
    assert history.unfinished == [g.seed_id for g in trainer.lineage.unfinished()] != []
    assert trainer.lineage.summary().get("UNFINISHED") == len(history.unfinished)
    assert "FOSSILIZED" not in trainer.lineage.summary()
    assert any(e["kind"] == "unfinished" for e in history.events)
