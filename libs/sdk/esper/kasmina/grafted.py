"""What ``unwrap`` leaves behind: a host module with its fossilized seeds, as plain PyTorch.

No state tensor, no lifecycle, no telemetry: a ``GraftedModule`` runs the host, then replaces the
fossilized chunks of its output by the seeds' outputs, with the same chunk arithmetic the KasminaLayer
used, so its outputs are bit-identical to the wrapped model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blending import ChunkLayout, blend


class HostAttributeFallback(nn.Module):
    """Attributes a wrapper does not have are looked up on its ``host`` module.

    PyTorch containers read attributes of their children directly (``TransformerEncoder`` inspects
    ``layers[0].self_attn``); with this fallback a wrapped child still answers them.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            host = self.__dict__.get("_modules", {}).get("host")
            if host is None or name == "host":
                raise
            return getattr(host, name)


class GraftedModule(HostAttributeFallback):
    """A host with fossilized seed modules applied to some of its output chunks.

    ``alphas`` blends a seed that was kept mid-ramp (``unwrap(..., live_seeds="keep")`` of a GRAFTING seed)
    at its last weight; a seed without one replaces its chunk. ``kernel_ids`` records which kernel each seed
    was built from, so that ``esper.load_model`` can rebuild the module from a saved model.
    """

    def __init__(self, host: nn.Module, seeds: dict[int, nn.Module], chunks: ChunkLayout,
                 alphas: dict[int, float] | None = None, kernel_ids: dict[int, str] | None = None) -> None:
        super().__init__()
        self.host = host
        self.seeds = nn.ModuleDict({str(i): m for i, m in sorted(seeds.items())})
        self.chunks = chunks
        self.alphas = {i: a for i, a in (alphas or {}).items() if a < 1.0}
        self.kernel_ids = dict(kernel_ids or {})
        self._order = sorted(seeds)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Host output with every fossilized chunk replaced by its seed's output."""
        return self.chunks.apply(self.host(*args, **kwargs), self._graft)

    def _graft(self, out: torch.Tensor) -> torch.Tensor:
        replaced = {}
        for i in self._order:
            chunk = self.chunks.take(out, i)
            y = self.chunks.run(self.seeds[str(i)], chunk)
            replaced[i] = blend(chunk, y, self.alphas[i]) if i in self.alphas else y
        return self.chunks.compose(out, replaced)
