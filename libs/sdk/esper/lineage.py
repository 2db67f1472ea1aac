"""The architectural lineage of an evolved model, and ``save_model`` which writes it beside the weights.

Tolaria records every lifecycle transition it observes into a :class:`Lineage` attached to the model:
each germination (slot, blueprint, kernel id), the stage history with epochs, the validation metrics
just before germination and at the outcome, and the final outcome. ``save_model`` writes the weights
(``model.pt``, with its sha256) and this record as ``lineage.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper_contracts import SeedStage

from .model_io import describe_structure

TERMINAL = frozenset({SeedStage.FOSSILIZED.value, SeedStage.CULLED.value, SeedStage.CANCELLED.value,
                      SeedStage.ROLLED_BACK.value})
_ATTR = "_esper_lineage"
#: What a report calls an adaptation that has no outcome yet (the run ended before its lifecycle did).
UNFINISHED = "UNFINISHED"


@dataclass
class Germination:
    """One adaptation of one seed, from GERMINATED to its outcome."""

    seed_id: str
    layer_id: str
    seed_index: int
    blueprint_id: str | None
    blueprint_name: str | None
    kernel_artifact_id: str | None
    germinated_epoch: int
    reason: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)  # [{"stage": ..., "epoch": ..., "reason": ...}]
    metrics_before: dict[str, float | None] = field(default_factory=dict)
    metrics_after: dict[str, float | None] = field(default_factory=dict)
    outcome: str | None = None  # FOSSILIZED / CULLED / CANCELLED / ROLLED_BACK; None while live
    outcome_epoch: int | None = None


@dataclass
class Lineage:
    """Every germination of a run, in order."""

    run_id: str
    germinations: list[Germination] = field(default_factory=list)
    #: every pruning outcome (PruningOutcome as JSON): probes, cuts, refusals and rollbacks
    removals: list[dict[str, Any]] = field(default_factory=list)

    def live(self, seed_id: str) -> Germination | None:
        """The seed's adaptation that has no outcome yet, if any."""
        for g in reversed(self.germinations):
            if g.seed_id == seed_id:
                return g if g.outcome is None else None
        return None

    def record(
        self,
        *,
        seed_id: str,
        layer_id: str,
        seed_index: int,
        old: str,
        new: str,
        epoch: int,
        metrics: dict[str, float | None],
        blueprint_id: str | None = None,
        blueprint_name: str | None = None,
        kernel_artifact_id: str | None = None,
        reason: str = "",
    ) -> None:
        """Note a transition ``old -> new`` of one seed at ``epoch`` with that boundary's metrics."""
        if new == SeedStage.DORMANT.value:
            return  # the slot returning to DORMANT after an embargo is not part of any adaptation
        g = self.live(seed_id)
        if g is None or new == SeedStage.GERMINATED.value:
            g = Germination(seed_id=seed_id, layer_id=layer_id, seed_index=seed_index, blueprint_id=blueprint_id,
                            blueprint_name=blueprint_name, kernel_artifact_id=kernel_artifact_id,
                            germinated_epoch=epoch, reason=reason, metrics_before=dict(metrics))
            self.germinations.append(g)
        g.blueprint_id = g.blueprint_id or blueprint_id
        g.blueprint_name = g.blueprint_name or blueprint_name
        g.kernel_artifact_id = g.kernel_artifact_id or kernel_artifact_id
        g.stages.append({"stage": new, "epoch": epoch, "reason": reason})
        if new in TERMINAL:
            g.outcome, g.outcome_epoch, g.metrics_after = new, epoch, dict(metrics)

    def unfinished(self) -> list[Germination]:
        """Adaptations with no outcome (not fossilized, culled, cancelled or rolled back) yet."""
        return [g for g in self.germinations if g.outcome is None]

    def summary(self) -> dict[str, int]:
        """How many adaptations ended in each outcome; ``UNFINISHED`` counts those with none yet (at the end of a
        run: seeds still blending or under evaluation, in the model's parameters but never fossilized)."""
        counts: dict[str, int] = {}
        for g in self.germinations:
            key = g.outcome or UNFINISHED
            counts[key] = counts.get(key, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"run_id": self.run_id, "germinations": [asdict(g) for g in self.germinations],
                "removals": list(self.removals)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        """Inverse of :meth:`to_dict`."""
        return cls(run_id=data["run_id"], germinations=[Germination(**g) for g in data["germinations"]],
                   removals=list(data.get("removals", [])))


def attach_lineage(model: nn.Module, lineage: Lineage) -> None:
    """Keep ``lineage`` with ``model`` so that ``save_model`` finds it."""
    object.__setattr__(model, _ATTR, lineage)  # a plain attribute: not a parameter, buffer or submodule


def lineage_of(model: nn.Module) -> Lineage | None:
    """The lineage attached to ``model`` by Tolaria, if any."""
    return getattr(model, _ATTR, None)


def save_model(model: nn.Module, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` (the state dict, seeds included), its sha256, and ``lineage.json`` into ``path``.

    The state dict loads back into the same host wrapped with the same Kasmina config. ``extra`` is
    merged into lineage.json (e.g. final test metrics). Returns the directory.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    (out / "model.pt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (out / "model.pt.sha256").write_text(f"{digest}  model.pt\n")
    lineage = lineage_of(model) or Lineage(run_id="unknown")
    document = {
        "format": 1,
        "saved_at": datetime.now(UTC).isoformat(),
        "weights": {"file": "model.pt", "sha256": digest},
        "parameters": sum(p.numel() for p in model.parameters()),
        "outcomes": lineage.summary(),
        "structure": describe_structure(model),  # what esper.load_model rebuilds around a fresh host
        **lineage.to_dict(),
        **(extra or {}),
    }
    (out / "lineage.json").write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    return out
