"""What an adaptation costs: its risk times the share of the graph it disturbs.

    cost = risk × disruption × atp_per_full_disruption

* **risk** (0..1) comes from the kernel's Urabrask validation report: a failed validation is maximal
  risk; otherwise a base risk grows with the kernel's numerical drift against fp32 and with how unsteady
  its measurements were. A kernel with no report gets ``default_risk``.
* **disruption** (0..1) is the width of the seed's chunk over the total width of every Kasmina slot in the
  model, read directly from the wrapped model's layers.

So a risky change to a sliver of the network can be cheap, and a safe change to half of it expensive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from esper.kasmina import kasmina_layers
from esper_contracts import UrabraskValidationReport
from esper_policy import kernel_risk

__all__ = ["SlotGeometry", "adaptation_cost", "kernel_risk"]

def adaptation_cost(risk: float, disruption: float, atp_per_full_disruption: float) -> float:
    """ATP an adaptation costs (both factors clamped to [0, 1])."""
    return min(1.0, max(0.0, risk)) * min(1.0, max(0.0, disruption)) * atp_per_full_disruption


@dataclass(frozen=True)
class SlotGeometry:
    """Widths of every seed slot in a wrapped model, and a way to find each kernel's validation report."""

    widths: dict[str, tuple[int, ...]]  # layer id -> width of each chunk
    total_width: int
    report_of: Callable[[str], UrabraskValidationReport | None]

    @classmethod
    def of(cls, model: nn.Module) -> SlotGeometry:
        """Read the geometry straight from the model's Kasmina layers (same process, no copy)."""
        layers = kasmina_layers(model)
        widths = {lid: tuple(hi - lo for lo, hi in layer.chunks.bounds) for lid, layer in layers.items()}
        sources = {lid: layer.kernels for lid, layer in layers.items()}

        def report_of(kernel_id: str) -> UrabraskValidationReport | None:
            for source in sources.values():
                try:
                    return source.metadata(kernel_id).validation
                except Exception:  # this source does not know the kernel; another one may
                    continue
            return None

        return cls(widths, sum(sum(w) for w in widths.values()), report_of)

    def seed_counts(self) -> dict[str, int]:
        """Seeds per region (layer), in model order."""
        return {lid: len(w) for lid, w in self.widths.items()}

    def disruption(self, layer_id: str, seed_index: int) -> float:
        """Share of all seeded features that this seed's chunk covers (1.0 for an unknown slot: price it high)."""
        chunks = self.widths.get(layer_id)
        if not chunks or not 0 <= seed_index < len(chunks) or self.total_width <= 0:
            return 1.0
        return chunks[seed_index] / self.total_width
