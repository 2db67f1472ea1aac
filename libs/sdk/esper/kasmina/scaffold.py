"""ScaffoldSupervisor: Kasmina's side of a scaffold — arrive, stabilise, teach the host, leave.

A scaffold (seed 002 §7) is a seed whose kernel is a ``scaffold``-class blueprint, germinated by Tamiyo's
scaffold steward (its GERMINATE carries the ``scaffold`` tag). The supervisor takes it from there:

1. **Like a seed**: LOADING → TRAINING (isolated, reconstruction) → GRAFTING (alpha ramps up) →
   STABILIZATION, each move made when Kasmina reports the seed ready (the same readiness rules as any seed).
2. **Judged by stability gates** at every boundary in STABILIZATION: loss jitter (relative standard deviation
   of the window-to-window validation-loss changes), drift (relative change of the chunk's output variance
   since the last window) and feature diversity (1 - |mean feature correlation| and the live share of units).
3. **Weaned** once the gates have been green ``green_windows`` boundaries in a row: alpha ramps from 1 down to 0
   over ``wean_epochs`` boundaries while the host chunk is distilled towards the blended output and a small L1
   anchor holds the host's weights near where they were when weaning began (:meth:`ScaffoldSupervisor.loss`,
   added to the task loss by the training loop).
4. **Leaves**: at alpha 0 it converts to a no-op — the seed goes back to DORMANT and its module is deleted, so
   the model's parameter count is the host's again. If its TTL runs out first it leaves anyway and the sunset
   is marked for escalation to Tamiyo. It never fossilizes (Kasmina refuses the command).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from esper_contracts import CommandType, KasminaControlCommand, SeedStage
from esper_policy.scaffolds import is_scaffold_command

from .layer import KasminaLayer
from .model import apply_commands, kasmina_layers
from .state import StateField

#: The next stage of a scaffold on its way in, once Kasmina reports it ready.
_NEXT = {SeedStage.GERMINATED: SeedStage.LOADING, SeedStage.LOADING: SeedStage.TRAINING,
         SeedStage.TRAINING: SeedStage.GRAFTING, SeedStage.GRAFTING: SeedStage.STABILIZATION}


@dataclass(frozen=True)
class ScaffoldGates:
    """When a scaffold counts as having stabilised its region, and how it is weaned."""

    green_windows: int = 2  # K: consecutive green boundaries before weaning starts
    max_jitter: float = 0.08
    max_drift: float = 0.5
    min_diversity: float = 0.05
    wean_epochs: int = 3  # used when the blueprint carries no sunset metadata
    ttl_epochs: int = 20  # likewise
    distill_weight: float = 0.5
    anchor_weight: float = 1e-4


@dataclass
class Scaffold:
    """One supervised scaffold."""

    layer_id: str
    index: int
    started_epoch: int
    ttl_epochs: int
    wean_epochs: int
    green: int = 0
    weaning_since: int | None = None
    losses: list[float] = field(default_factory=list)
    last_variance: float | None = None
    anchor: list[torch.Tensor] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed_id(self) -> str:
        """The seed the scaffold lives in."""
        return f"{self.layer_id}[{self.index}]"


@dataclass(frozen=True)
class ScaffoldSunset:
    """A scaffold that left: weaned off, or out of time (then Tamiyo must try something else)."""

    seed_id: str
    epoch: int
    outcome: str  # "weaned" | "ttl_expired"
    escalate: bool
    history: tuple[dict[str, Any], ...] = ()


class ScaffoldSupervisor:
    """Drives every scaffold of a wrapped model through arrive → stabilise → wean → leave."""

    def __init__(self, model: nn.Module, gates: ScaffoldGates | None = None) -> None:
        self.model = model
        self.gates = gates or ScaffoldGates()
        self.scaffolds: dict[str, Scaffold] = {}
        self.sunsets: list[ScaffoldSunset] = []

    # ------------------------------------------------------------------------------------------ arrival

    def apply(self, commands: Sequence[KasminaControlCommand], epoch: int) -> list[str]:
        """Apply commands to the model (as :func:`apply_commands`) and supervise every scaffold germinated."""
        errors = apply_commands(self.model, list(commands), epoch)
        refused = {e.split(":", 1)[0] for e in errors}
        for cmd in commands:
            if is_scaffold_command(cmd) and cmd.seed_id not in refused:
                self.adopt(cmd.layer_id, cmd.seed_index, epoch)
                # In crisis there is no queue to wait in: start loading at once (the policy does the same).
                self._layer(cmd.layer_id).apply_command(KasminaControlCommand(
                    layer_id=cmd.layer_id, seed_index=cmd.seed_index, command=CommandType.ADVANCE,
                    target_stage=SeedStage.LOADING, reason="scaffold supervisor: load now"), epoch)
        return errors

    def adopt(self, layer_id: str, index: int, epoch: int) -> Scaffold:
        """Supervise the scaffold germinated in ``layer_id[index]``; TTL and weaning from its blueprint's sunset."""
        layer = self._layer(layer_id)
        layer.mark_scaffold(index)
        ttl, wean = self.gates.ttl_epochs, self.gates.wean_epochs
        kernel = layer.kernel_id(index)
        blueprint = getattr(layer.kernels, "blueprint", None)
        if kernel is not None and blueprint is not None:
            sunset = blueprint(kernel).sunset
            if sunset is not None:
                ttl, wean = sunset.ttl_epochs, sunset.wean_epochs
        scaffold = Scaffold(layer_id, index, epoch, ttl, max(1, wean))
        self.scaffolds[scaffold.seed_id] = scaffold
        return scaffold

    def _layer(self, layer_id: str) -> KasminaLayer:
        layers = kasmina_layers(self.model)
        if layer_id not in layers:
            raise KeyError(f"no Kasmina layer {layer_id!r}")
        return layers[layer_id]

    # ------------------------------------------------------------------------------------------ boundaries

    def boundary(self, epoch: int, val_loss: float) -> list[ScaffoldSunset]:
        """One epoch boundary for every scaffold: advance, judge, wean, retire. Returns the sunsets."""
        done: list[ScaffoldSunset] = []
        for s in list(self.scaffolds.values()):
            layer = self._layer(s.layer_id)
            layer.begin_boundary(epoch)
            s.losses.append(val_loss)
            stage = layer.stage(s.index)
            if stage not in _NEXT and stage is not SeedStage.STABILIZATION:  # culled, failed, rolled back: gone
                done.append(self._leave(s, layer, epoch, f"left in {stage.value}", escalate=True, retire=False))
                continue
            if epoch >= s.started_epoch + s.ttl_epochs:
                done.append(self._leave(s, layer, epoch, "ttl_expired", escalate=True))
                continue
            if stage in _NEXT:
                if layer.is_ready(s.index) or stage is SeedStage.GERMINATED:
                    layer.apply_command(KasminaControlCommand(
                        layer_id=s.layer_id, seed_index=s.index, command=CommandType.ADVANCE,
                        target_stage=_NEXT[stage], reason="scaffold supervisor: ready"), epoch)
                self._note(s, layer, epoch, gates=None)
                continue
            if s.weaning_since is None:
                gates = self._gates(s, layer)
                s.green = s.green + 1 if all(gates.values()) else 0
                self._note(s, layer, epoch, gates)
                if s.green >= self.gates.green_windows:
                    s.weaning_since = epoch
                    s.anchor = [p.detach().clone() for p in layer.host.parameters()]
                    layer.set_wean_alpha(s.index, 1.0 - 1.0 / (s.wean_epochs + 1))
                continue
            alpha = 1.0 - (epoch - s.weaning_since + 1) / (s.wean_epochs + 1)
            if alpha <= 1e-9:
                done.append(self._leave(s, layer, epoch, "weaned", escalate=False))
                continue
            layer.set_wean_alpha(s.index, alpha)
            self._note(s, layer, epoch, gates=None)
        self.sunsets += done
        return done

    def _gates(self, s: Scaffold, layer: KasminaLayer) -> dict[str, bool]:
        """Loss jitter, drift and feature diversity of the scaffold's region this window."""
        st, i = layer.seed_state, s.index
        recent = s.losses[-(self.gates.green_windows + 1):]
        changes = [(b - a) / a for a, b in itertools.pairwise(recent) if a > 0]
        jitter = statistics.pstdev(changes) if len(changes) >= 2 else 0.0
        variance = st.get(StateField.VARIANCE, i)
        drift = abs(variance - s.last_variance) / s.last_variance if s.last_variance else 0.0
        s.last_variance = variance if variance > 0 else s.last_variance
        diversity = min(1.0 - abs(st.get(StateField.CORRELATION, i)), 1.0 - st.get(StateField.DEAD_RATIO, i))
        rising = len(recent) >= 2 and recent[-1] > recent[0] * (1 + self.gates.max_jitter)
        return {"jitter": jitter <= self.gates.max_jitter and not rising, "drift": drift <= self.gates.max_drift,
                "diversity": diversity >= self.gates.min_diversity}

    def _note(self, s: Scaffold, layer: KasminaLayer, epoch: int, gates: dict[str, bool] | None) -> None:
        s.history.append({"epoch": epoch, "stage": layer.stage(s.index).value, "alpha": layer.alpha(s.index),
                          "green": s.green, "gates": gates})

    def _leave(self, s: Scaffold, layer: KasminaLayer, epoch: int, outcome: str, *, escalate: bool,
               retire: bool = True) -> ScaffoldSunset:
        if retire:
            layer.retire_scaffold(s.index, epoch, f"scaffold sunset: {outcome}")
        else:
            layer.scaffold_seeds.discard(s.index)
        s.history.append({"epoch": epoch, "stage": layer.stage(s.index).value, "alpha": 0.0, "green": s.green,
                          "gates": None, "sunset": outcome})
        del self.scaffolds[s.seed_id]
        return ScaffoldSunset(s.seed_id, epoch, outcome, escalate, tuple(s.history))

    # ------------------------------------------------------------------------------------------ training

    def loss(self) -> torch.Tensor | None:
        """Weaning's extra loss: distillation of the host towards the blended output plus the L1 anchor."""
        terms: list[torch.Tensor] = []
        for s in self.scaffolds.values():
            if s.weaning_since is None:
                continue
            layer = self._layer(s.layer_id)
            kd = layer.distillation_loss()
            if kd is not None:
                terms.append(self.gates.distill_weight * kd)
            params = list(layer.host.parameters())
            if s.anchor and len(s.anchor) == len(params):
                l1 = torch.stack([(p - a).abs().sum() for p, a in zip(params, s.anchor, strict=True)]).sum()
                terms.append(self.gates.anchor_weight * l1)
        return torch.stack(terms).sum() if terms else None

    def alphas(self) -> dict[str, float]:
        """Current alpha of every supervised scaffold."""
        return {sid: self._layer(s.layer_id).alpha(s.index) for sid, s in self.scaffolds.items()}

    # ------------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The supervised scaffolds for a checkpoint: ``records`` JSON-able, ``anchors`` tensors (weights_only-safe).

        A rollback or resume restores them with the model, so weaning goes on from the same alpha and anchor.
        """
        records = [{"layer_id": s.layer_id, "index": s.index, "started_epoch": s.started_epoch,
                    "ttl_epochs": s.ttl_epochs, "wean_epochs": s.wean_epochs, "green": s.green,
                    "weaning_since": s.weaning_since, "losses": list(s.losses), "last_variance": s.last_variance,
                    "history": list(s.history)} for s in self.scaffolds.values()]
        anchors = {sid: [a.detach().clone() for a in s.anchor] for sid, s in self.scaffolds.items() if s.anchor}
        return {"records": records, "anchors": anchors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the supervised scaffolds with those of :meth:`state_dict` (the model is restored separately)."""
        anchors = state.get("anchors", {})
        self.scaffolds = {}
        for r in state.get("records", []):
            s = Scaffold(r["layer_id"], int(r["index"]), int(r["started_epoch"]), int(r["ttl_epochs"]),
                         int(r["wean_epochs"]), green=int(r["green"]), weaning_since=r["weaning_since"],
                         losses=[float(x) for x in r["losses"]], last_variance=r["last_variance"],
                         history=list(r["history"]))
            s.anchor = list(anchors.get(s.seed_id, []))
            self.scaffolds[s.seed_id] = s
