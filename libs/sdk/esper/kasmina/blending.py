"""Alpha ramps and chunk arithmetic: how a seed's output is cut from and put back into the host's.

``ChunkLayout`` knows where the feature axis is and where each chunk starts and ends; ``compose``
rebuilds a layer output from the host's chunks and the seeds' replacements. The KasminaLayer and the
plain module left by ``unwrap`` share these functions, so a fossilized seed computes the same bits in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper_contracts import GraftingStrategy, TensorInterface

STRATEGIES: tuple[GraftingStrategy, ...] = tuple(GraftingStrategy)
_SIGMOID_SHARPNESS = 10.0


def alpha_at(step: int, ramp_steps: int, strategy: GraftingStrategy) -> float:
    """Alpha after ``step`` training forwards of a ramp of ``ramp_steps``: 0 at step 0, exactly 1 from the end.

    Every shape is smooth and monotone non-decreasing in ``step``.
    """
    if ramp_steps <= 0 or step >= ramp_steps:
        return 1.0
    t = max(step, 0) / ramp_steps
    if strategy is GraftingStrategy.COSINE:
        return 0.5 - 0.5 * math.cos(math.pi * t)
    if strategy is GraftingStrategy.SIGMOID:  # a logistic rescaled to pass through (0, 0) and (1, 1)
        k = _SIGMOID_SHARPNESS
        lo, hi = 1 / (1 + math.exp(k / 2)), 1 / (1 + math.exp(-k / 2))
        return (1 / (1 + math.exp(-k * (t - 0.5))) - lo) / (hi - lo)
    return t


def blend(host_chunk: torch.Tensor, seed_chunk: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1-α)·host + α·seed, written as host + α·(seed - host) so α=0 and α=1 are exact."""
    if alpha >= 1.0:
        return seed_chunk
    return torch.lerp(host_chunk, seed_chunk, alpha)


def chunk_bounds(features: int, chunks: int) -> list[tuple[int, int]]:
    """Split ``features`` into ``chunks`` contiguous ranges whose sizes differ by at most one."""
    if chunks > features:
        raise ValueError(f"cannot split {features} features into {chunks} chunks")
    base, extra = divmod(features, chunks)
    bounds, lo = [], 0
    for i in range(chunks):
        hi = lo + base + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


@dataclass(frozen=True)
class ChunkLayout:
    """Where the chunks of a layer's output are: the feature axis, chunk ranges, and the token order.

    ``seq_first`` marks a (tokens, batch, features) output (a TransformerEncoderLayer without
    ``batch_first``), ``channels_first`` a (batch, features, tokens) one (Conv1d): seeds see both as
    (batch, tokens, features), as their BTD interface says. ``output_index`` is the element of a tuple
    output that holds the chunks (a recurrent layer's or attention's first), None when the output is the
    tensor itself.
    """

    layout: str  # "BD", "BTD" or "BCHW"
    features: int
    bounds: tuple[tuple[int, int], ...]
    seq_first: bool = False
    channels_first: bool = False
    output_index: int | None = None

    @property
    def dim(self) -> int:
        """The feature axis of the output."""
        return 1 if self.layout == "BCHW" or self.channels_first else -1

    def tensor_of(self, out: Any) -> Any:
        """The part of a host output the chunks live in (the output itself, or its tuple element)."""
        return out if self.output_index is None else out[self.output_index]

    def apply(self, out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """``out`` with its chunked tensor replaced by ``fn(tensor)``; other tuple elements are handed back as they
        are. A nested tensor (a TransformerEncoder's fast path with a padding mask) is padded for ``fn`` and
        nested again with the same lengths, so padded positions stay absent."""
        target = self.tensor_of(out)
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"a seed slot needs a tensor output, got {type(target).__name__} "
                            "(packed sequences are not supported)")
        if target.is_nested:
            lengths = [t.shape[0] for t in target.unbind()]
            padded = fn(target.to_padded_tensor(0.0))
            new = torch.nested.as_nested_tensor([padded[b, :n] for b, n in enumerate(lengths)])
        else:
            new = fn(target)
        if self.output_index is None:
            return new
        i = self.output_index
        return (*out[:i], new, *out[i + 1:])

    def interface(self, i: int) -> TensorInterface:
        """Shape contract of chunk ``i``."""
        lo, hi = self.bounds[i]
        return TensorInterface(layout=self.layout, features=hi - lo)  # type: ignore[arg-type]

    def take(self, out: torch.Tensor, i: int) -> torch.Tensor:
        """Chunk ``i`` of ``out`` (a view; the whole tensor when there is one chunk)."""
        if len(self.bounds) == 1:
            return out
        lo, hi = self.bounds[i]
        return out[:, lo:hi] if self.dim == 1 else out[..., lo:hi]

    def run(self, module: nn.Module, chunk: torch.Tensor) -> torch.Tensor:
        """Apply a seed module to a chunk in the seed's own layout."""
        if self.seq_first:
            return module(chunk.transpose(0, 1)).transpose(0, 1)
        if self.channels_first:
            return module(chunk.transpose(1, 2)).transpose(1, 2)
        return module(chunk)

    def compose(self, out: torch.Tensor, replaced: dict[int, torch.Tensor]) -> torch.Tensor:
        """``out`` with the chunks in ``replaced`` swapped for the given tensors."""
        if not replaced:
            return out
        if len(self.bounds) == 1:
            return replaced[0]
        pieces = [replaced[i] if i in replaced else self.take(out, i) for i in range(len(self.bounds))]
        return torch.cat(pieces, dim=self.dim)

    def to_rows(self, out: torch.Tensor) -> torch.Tensor:
        """The output as (rows, features): every batch/token/pixel position is one row."""
        if self.dim == 1:
            return out.transpose(0, 1).reshape(self.features, -1).t()
        return out.reshape(-1, self.features)
