"""What ``unwrap`` leaves behind: a host module with its fossilized seeds, as plain PyTorch.

No state tensor, no lifecycle, no telemetry: a ``GraftedModule`` runs the host, then replaces the
fossilized chunks of its output by the seeds' outputs, with the same chunk arithmetic the KasminaLayer
used, so its outputs are bit-identical to the wrapped model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blending import ChunkLayout


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
    """A host with fossilized seed modules applied to some of its output chunks."""

    def __init__(self, host: nn.Module, seeds: dict[int, nn.Module], chunks: ChunkLayout) -> None:
        super().__init__()
        self.host = host
        self.seeds = nn.ModuleDict({str(i): m for i, m in sorted(seeds.items())})
        self.chunks = chunks
        self._order = sorted(seeds)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Host output with every fossilized chunk replaced by its seed's output."""
        out = self.host(*args, **kwargs)
        replaced = {i: self.chunks.run(self.seeds[str(i)], self.chunks.take(out, i)) for i in self._order}
        return self.chunks.compose(out, replaced)
