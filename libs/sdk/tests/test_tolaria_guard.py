"""The loss-spike guard tells noise from divergence: a noisy easy task never dies, a real divergence rolls back
to before the spike began, an explosion rolls back at once, and a rollback reshuffles the training data."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from esper import TolariaConfig
from esper.data import Batches, Split
from esper.tolaria import TolariaTrainer, TrainerHooks
from esper.tolaria.guard import LossSpikeGuard
from esper_policy import NullPolicy
from esper_recipes.tasks import two_spirals


def test_isolated_jumps_of_a_tiny_loss_are_tolerated_and_a_persistent_rise_rolls_back() -> None:
    rng = random.Random(0)
    guard = LossSpikeGuard()
    verdicts = []
    previous_jumped = False
    for _ in range(2000):  # a converged loss of a few thousandths, jumping to 0.1-0.4 on one epoch in ten
        jump = not previous_jumped and rng.random() < 0.1
        previous_jumped = jump
        verdicts.append(guard.judge(rng.uniform(0.1, 0.4) if jump else rng.uniform(0.002, 0.006)).action)
    assert "rollback" not in verdicts and verdicts.count("tolerated") > 100

    guard = LossSpikeGuard(losses=[0.30, 0.28, 0.29, 0.27, 0.28])
    assert guard.judge(1.5).action == "tolerated"
    second = guard.judge(1.6)
    assert second.action == "rollback" and second.streak == 2 and "2 epoch(s) in a row" in second.reason
    guard.reset([0.3, 0.3])
    assert guard.streak == 0 and guard.judge(0.31).action == "ok"


def test_explosions_and_non_finite_losses_roll_back_at_once() -> None:
    guard = LossSpikeGuard(losses=[0.004, 0.003, 0.005])
    assert guard.judge(0.4).action == "tolerated"  # 100x a tiny median, but under 10 x the floor: not an explosion
    explosion = LossSpikeGuard(losses=[0.3, 0.3, 0.3]).judge(3.5)
    assert explosion.action == "rollback" and "explosion" in explosion.reason
    assert LossSpikeGuard().judge(float("nan")).action == "rollback"


class Recording(Batches):
    """Batches that remember the seeds a rollback reshuffled them with."""

    def __init__(self, split: Split, batch_size: int) -> None:
        super().__init__(split, batch_size, seed=0)
        self.reseeds: list[int] = []

    def reseed(self, seed: int) -> None:
        self.reseeds.append(seed)
        super().reseed(seed)


def _blobs(n: int, seed: int) -> Split:
    """Two well-separated Gaussian blobs: an easy task whose loss falls to a few thousandths."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return Split(torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 2.0, y)


def _trainer(tmp_path: Path, epochs: int, loss_fn: object, hooks: TrainerHooks | None = None, *,
             easy: bool = False, **tolaria: object) -> TolariaTrainer:
    torch.manual_seed(0)
    data = two_spirals(seed=0, points_per_class=64)
    if easy:
        data = replace(data, train=_blobs(128, 0), val=_blobs(64, 1))
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    config = TolariaConfig(epochs=epochs, run_dir=str(tmp_path), run_id="guard", progress_bar=False,
                           log_lines=False, learning_rate=1e-2, **tolaria)  # type: ignore[arg-type]
    return TolariaTrainer(model, NullPolicy(), config, train_data=Recording(data.train, 16),
                          val_data=Batches(data.val, 256, shuffle=False), loss_fn=loss_fn,  # type: ignore[arg-type]
                          hooks=hooks)


def test_a_noisy_easy_task_trains_to_the_end(tmp_path: Path) -> None:
    """Single noisy epochs (the loss jumps by 0.1-0.4 for a whole epoch) are tolerated, not rolled back."""
    noise = {"epoch": 0, "add": 0.0}
    rng = random.Random(1)

    def noisy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) + (noise["add"] if torch.is_grad_enabled() else 0.0)

    def on_epoch_end(t: TolariaTrainer) -> None:  # decide the next epoch's noise: never two noisy epochs in a row
        noise["add"] = rng.uniform(0.1, 0.4) if noise["add"] == 0.0 and rng.random() < 0.4 else 0.0

    trainer = _trainer(tmp_path, 20, noisy, TrainerHooks(on_epoch_end=on_epoch_end), easy=True,
                       max_rollbacks=0)
    _, history = trainer.train()  # max_rollbacks=0: any rollback would raise TrainingDivergedError
    assert len(history.epochs) == 20 and not history.rollbacks
    assert history.epochs[-1]["val_accuracy"] == 1.0
    assert sum(e["kind"] == "loss_spike_tolerated" for e in history.events) >= 3


def test_a_persistent_spike_rolls_back_to_before_it_began_and_reshuffles(tmp_path: Path) -> None:
    scale = {"value": 1.0}
    restored: list[str] = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) * scale["value"]

    def on_epoch_end(t: TolariaTrainer) -> None:
        if t.epoch == 6 and not restored:
            scale["value"] = 5.0  # epochs 7 and 8 diverge: five times the loss, not yet an explosion

    def on_restore(t: TolariaTrainer, path: Path) -> None:
        restored.append(path.name)
        scale["value"] = 1.0

    trainer = _trainer(tmp_path, 10, loss_fn, TrainerHooks(on_epoch_end, on_restore))
    _, history = trainer.train()
    (rollback,) = history.rollbacks
    assert rollback["epoch"] == 8 and "2 epoch(s) in a row" in rollback["reason"]
    assert restored == ["epoch-00006.pt"]  # the tolerated epoch 7 was discarded with the spike
    assert [e["epoch"] for e in history.epochs] == list(range(1, 11))
    assert max(e["train_loss"] for e in history.epochs) < 1.0  # no spiking epoch survives in the history
    assert isinstance(trainer.train_data, Recording) and len(trainer.train_data.reseeds) == 1
