"""Grow, then compact: the removal phase the demo (``--compact``) and the frontier run after Esper's growth.

Growth is over when the run ends (no seed is live: Narset has stood down), so Emrakul gets full authority
(``x_E = 1``): fossilized seeds are merged into the host (``esper.kasmina.unwrap``), and for ``epochs`` more
epochs the model is fine-tuned while, every ``every`` epochs, Elesh scores its units (Taylor on training
batches), Emrakul plans (:func:`esper_policy.emrakul.plan_pruning`) and Tolaria cuts (lysis, the loss guard
armed). Every epoch is appended to the run's history, so the report's parameter plot rises with growth and
falls with removal; every outcome goes to the lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper.data import Batches
from esper.kasmina import unwrap
from esper.lineage import Lineage
from esper.tolaria import TrainingHistory, evaluate
from esper.tolaria.pruning import CompactionSettings, Compactor, compact
from esper_policy.emrakul import EmrakulSettings

from .tasks import TaskData


@dataclass
class CompactionResult:
    """The compacted model and what removal did."""

    model: nn.Module
    parameters_before: int
    parameters_after: int
    test_accuracy: float
    outcomes: list[Any]


def compact_grown(model: nn.Module, data: TaskData, *, learning_rate: float, batch_size: int, seed: int,
                  history: TrainingHistory | None = None, lineage: Lineage | None = None, epochs: int = 20,
                  every: int = 2, max_fraction: float = 0.3) -> CompactionResult:
    """Merge ``model``'s fossilized seeds, then fine-tune and prune it (see the module docstring)."""
    torch.manual_seed(seed)
    model = unwrap(model).requires_grad_(True)
    train = Batches(data.train, batch_size, seed=seed + 1000)
    val = Batches(data.val, 1024, shuffle=False)
    before = sum(p.numel() for p in model.parameters())
    compactor = Compactor(model, lambda ps: torch.optim.Adam(ps, lr=learning_rate), example_inputs=data.val.x[:2],
                          val_data=val, outputs=["head"], run_id=lineage.run_id if lineage else "compact",
                          lineage=lineage)
    first = int(history.epochs[-1]["epoch"]) + 1 if history and history.epochs else 1

    def record(epoch: int, row: dict[str, Any]) -> None:
        if history is not None:
            # the compaction loop does not measure training accuracy: a gap in the plot, not a made-up value
            history.epochs.append({"train_accuracy": float("nan"), **row, "phase": "compaction"})

    settings = CompactionSettings(epochs=epochs, every=every, settings=EmrakulSettings(max_fraction=max_fraction))
    outcomes = compact(compactor, train, settings, first_epoch=first, on_epoch=record)
    _, test_acc = evaluate(compactor.model, Batches(data.test, 1024, shuffle=False))
    return CompactionResult(model=compactor.model, parameters_before=before,
                            parameters_after=sum(p.numel() for p in compactor.model.parameters()),
                            test_accuracy=float(test_acc), outcomes=outcomes)
