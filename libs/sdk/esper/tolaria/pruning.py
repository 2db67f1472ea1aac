"""Tolaria's side of removal: apply Emrakul's plans at a safe boundary, with a rollback point, or refuse them.

:class:`Compactor` holds the model being compacted and its *version* (the id of the checkpoint a plan must have
been computed on: it changes with every cut). For each plan it:

1. **refuses** (the model untouched, the reason in the outcome) a plan computed on an older version, a plan naming
   a layer the model does not have, a unit index out of range, or a module inside an active protected zone or
   its embargo ring;
2. takes a **rollback point** (a copy of the model and the optimizer's state) and measures the validation loss;
3. applies it: a *probe* masks the units for its window (the loss measured, then the mask removed), *lysis*
   removes them through Torch-Pruning's dependency graph and **rebuilds the optimizer** over the new tensors
   (Adam's moments of the surviving units are dropped with the rest: a fresh optimizer, as after a germination);
4. **guards**: a NaN loss or one above ``spike_ratio`` × the loss before rolls the cut back;
5. reports a :class:`~esper_contracts.PruningOutcome` (parameters and MACs before and after, losses) and
   keeps it in :attr:`outcomes` (and the run's lineage, when given).

Standalone, :func:`compact` runs the whole loop in process (Elesh's scoring, Emrakul's planner, the cut) for
a number of fine-tuning epochs; distributed, :mod:`esper.tolaria.removal_bus` carries requests and plans over Oona.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import (
    ImportanceReport,
    ImportanceRequest,
    ProtectedZone,
    PrunableModule,
    PruneMode,
    PruningOutcome,
    PruningPlan,
    new_id,
)
from esper_policy.emrakul import EmrakulSettings, plan_pruning
from esper_pruning.cut import CutError, Probe, check_actions, count_macs, lysis, parameter_count
from esper_pruning.importance import score_state
from esper_pruning.model import prunable_modules, slot_hosts, state_bytes, unit_statistics

from .trainer import evaluate

Batch = tuple[torch.Tensor, torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class Compactor:
    """Applies pruning plans to one model at safe boundaries (see the module docstring)."""

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, *, example_inputs: torch.Tensor,
                 val_data: Iterable[Batch], run_id: str = "run", region_id: str = "host",
                 outputs: Sequence[str] = (), spike_ratio: float = 1.5, lineage: Any = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> None:
        self.model = model
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.example_inputs = example_inputs
        self.val_data = val_data
        self.run_id, self.region_id = run_id, region_id
        #: layers whose outputs are the model's (never cut): with the seed-slot hosts, Torch-Pruning's guard
        self.outputs = list(outputs)
        self.spike_ratio = spike_ratio
        self.loss_fn = loss_fn
        self.lineage = lineage
        self.zones: list[ProtectedZone] = []
        self.version = f"{run_id}-v0-{new_id()[:8]}"
        self.outcomes: list[PruningOutcome] = []

    # ------------------------------------------------------------------ what Elesh is given

    def modules(self) -> list[PrunableModule]:
        """The modules whose units may be scored and cut now."""
        return prunable_modules(self.model, exclude=self.outputs, example_inputs=self.example_inputs)

    def request(self, epoch: int, checkpoint_key: str, train_batches: Iterable[Batch]) -> ImportanceRequest:
        """An importance request for the current version, with Taylor and activation statistics on ``train_batches``."""
        modules = self.modules()
        stats = unit_statistics(self.model, modules, train_batches, self.loss_fn)
        return ImportanceRequest(run_id=self.run_id, region_id=self.region_id, epoch=epoch,
                                 checkpoint_id=self.version, checkpoint_key=checkpoint_key, modules=modules,
                                 statistics=stats)

    def checkpoint_bytes(self) -> bytes:
        """The current weights as safetensors bytes (what the blob store keeps for Elesh)."""
        return state_bytes(self.model)

    def score_here(self, epoch: int, train_batches: Iterable[Batch]) -> ImportanceReport | None:
        """Elesh in process: the same scoring the service runs, on the live model's state (None: nothing to cut)."""
        if not self.modules():
            return None
        request = self.request(epoch, "in-process", train_batches)
        return score_state(self.model.state_dict(), request.modules, request.statistics, zones=self.zones,
                           epoch=epoch, checkpoint_id=self.version, run_id=self.run_id, region_id=self.region_id,
                           request_id=request.job_id)

    # ------------------------------------------------------------------ the cut

    def refusal(self, plan: PruningPlan) -> str | None:
        """Why ``plan`` must not be applied now, or None."""
        if plan.checkpoint_id != self.version:
            return (f"stale plan: computed on checkpoint {plan.checkpoint_id}, the model has changed since "
                    f"(now {self.version})")
        for action in plan.actions:
            zone = next((z for z in self.zones if z.covers(action.module_path, plan.epoch)), None)
            if zone is not None:
                return f"{action.module_path} is inside protected zone {zone.zone_id} ({zone.reason})"
        try:
            check_actions(self.model, plan.actions)
        except CutError as exc:
            return str(exc)
        return None

    def apply(self, plan: PruningPlan, epoch: int) -> PruningOutcome:
        """Apply ``plan`` (or refuse it, or roll it back); the outcome is returned and kept."""
        params, macs = parameter_count(self.model), count_macs(self.model, self.example_inputs)
        base = {"plan_id": plan.plan_id, "run_id": self.run_id, "region_id": self.region_id, "epoch": epoch,
                "mode": plan.mode, "parameters_before": params, "parameters_after": params, "macs_before": macs,
                "macs_after": macs}
        reason = self.refusal(plan)
        if reason is not None:
            return self._keep(PruningOutcome(**base, accepted=False, reason=f"rejected: {reason}"))
        loss_before = self._val_loss()
        if plan.mode == PruneMode.PROBE:
            probe = Probe(self.model, plan.actions)
            try:
                loss_after = self._val_loss()
            finally:
                probe.remove()
            return self._keep(PruningOutcome(
                **base, accepted=True, loss_before=_finite(loss_before), loss_after=_finite(loss_after),
                units_removed=0, reason=f"probe: {sum(len(a.indices) for a in plan.actions)} units masked and "
                                        "restored"))
        snapshot = copy.deepcopy(self.model)
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        try:
            cut = lysis(self.model, plan.actions, self.example_inputs,
                        protected=[*self.outputs, *slot_hosts(self.model)])
        except CutError as exc:
            return self._keep(PruningOutcome(**base, accepted=False, reason=f"rejected: {exc}"))
        loss_after = self._val_loss()
        if not math.isfinite(loss_after) or loss_after > self.spike_ratio * loss_before:
            self._restore(snapshot, optimizer_state)
            return self._keep(PruningOutcome(
                **base, accepted=False, rolled_back=True, loss_before=_finite(loss_before),
                loss_after=_finite(loss_after), reason=f"rolled back: validation loss {loss_before:.4f} -> "
                                                       f"{loss_after:.4f} exceeds {self.spike_ratio}x"))
        self.optimizer = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        self.version = f"{self.run_id}-v{len(self.outcomes) + 1}-{new_id()[:8]}"
        return self._keep(PruningOutcome(
            **{**base, "parameters_after": cut.parameters_after, "macs_after": cut.macs_after}, accepted=True,
            loss_before=_finite(loss_before), loss_after=_finite(loss_after), units_removed=cut.units_removed,
            reason=f"lysis: {cut.units_removed} units removed"))

    def _restore(self, snapshot: nn.Module, optimizer_state: dict[str, Any]) -> None:
        """Put the rollback point back in place (the model object itself is kept: callers hold it)."""
        for name, child in snapshot.named_children():
            setattr(self.model, name, child)
        for name, p in snapshot.named_parameters(recurse=False):
            setattr(self.model, name, p)
        self.optimizer = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        self.optimizer.load_state_dict(optimizer_state)

    def _val_loss(self) -> float:
        loss, _ = evaluate(self.model, self.val_data, self.loss_fn)
        return float(loss)

    def _keep(self, outcome: PruningOutcome) -> PruningOutcome:
        self.outcomes.append(outcome)
        if self.lineage is not None and hasattr(self.lineage, "removals"):
            self.lineage.removals.append(outcome.model_dump(mode="json"))
        return outcome


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class CompactionSettings:
    """The standalone compaction phase: fine-tuning epochs, when to cut, and Emrakul's intensity."""

    epochs: int = 20
    every: int = 2  # a boundary (score, plan, cut) every this many epochs
    intensity: float = 1.0  # x_E: Narset has stood down (growth is over), so Emrakul has full authority
    settings: EmrakulSettings = field(default_factory=EmrakulSettings)
    stats_batches: int = 8


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch],
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> float:
    """One plain training epoch; returns the mean training loss."""
    model.train()
    total, n = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total, n = total + float(loss.detach()) * len(y), n + len(y)
    return total / max(n, 1)


def compact(compactor: Compactor, train_data: Iterable[Batch], settings: CompactionSettings, *, first_epoch: int = 1,
            on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> list[PruningOutcome]:
    """Fine-tune ``compactor.model`` for ``settings.epochs``, scoring, planning and cutting every ``every`` epochs.

    Elesh's scoring and Emrakul's planner run in process. ``on_epoch(epoch, record)`` is told of every epoch
    (its training loss, validation loss and accuracy, parameters and the outcome of that boundary's plan).
    """
    for k in range(settings.epochs):
        epoch = first_epoch + k
        train_loss = train_epoch(compactor.model, compactor.optimizer, train_data, compactor.loss_fn)
        outcome = None
        if (k + 1) % settings.every == 0 and k + 1 < settings.epochs:
            batches = [b for _, b in zip(range(settings.stats_batches), train_data, strict=False)]
            report = compactor.score_here(epoch, batches)
            plan = None if report is None else plan_pruning(report, compactor.zones, settings.intensity,
                                                            settings=settings.settings)
            if plan is not None:
                outcome = compactor.apply(plan, epoch)
        val_loss, val_acc = evaluate(compactor.model, compactor.val_data, compactor.loss_fn)
        if on_epoch is not None:
            on_epoch(epoch, {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
                             "total_params": parameter_count(compactor.model),
                             "pruning": outcome.model_dump(mode="json") if outcome else None})
    return compactor.outcomes
