"""What Tolaria trains on: a split of tensors and reproducible minibatches over it.

``train_data`` and ``val_data`` of :class:`esper.TolariaTrainer` may be any re-iterable of ``(inputs,
labels)`` batches (a ``torch.utils.data.DataLoader`` works); :class:`Batches` is a small one over a
:class:`Split` held in memory, whose order depends only on its seed and how many epochs it has served.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, F) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])



class Batches:
    """Minibatches of one split; shuffled with a generator seeded once, so the sequence is reproducible.

    With ``world_size`` > 1 this is rank ``rank``'s shard: every rank draws the same order (same seed) and
    takes every ``world_size``-th example of it from position ``rank``, after cutting the order to a multiple
    of ``world_size``, so the shards are disjoint and every rank gets as many batches (DDP needs that).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self._generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Draw the next epochs' order from ``seed`` (Tolaria does so after a rollback, so that the retried epoch
        does not replay the same batches); every rank that reseeds alike keeps the same order."""
        self._generator.manual_seed(seed)

    def _shard_size(self) -> int:
        return len(self.split) // self.world_size

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            order = order[: self._shard_size() * self.world_size][self.rank :: self.world_size]
            n = len(order)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.split.x[idx], self.split.y[idx]
