"""What Tolaria trains on: a split of tensors, a seeded train/val/test splitter and reproducible minibatches.

``train_data`` and ``val_data`` of :class:`esper.TolariaTrainer` may be any re-iterable of ``(inputs,
labels)`` batches that can be iterated once per epoch: a ``torch.utils.data.DataLoader``, a list of
``(x, y)`` tensor pairs, or :class:`Batches`, a small one over a :class:`Split` held in memory whose order
depends only on its seed and how many epochs it has served. Lifecycle lengths given in epochs need
``len(train_data)`` (batches per epoch); all three have it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, F) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _as_numpy(values: Any) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def standardized_splits(train: tuple[Any, Any], val: tuple[Any, Any], test: tuple[Any, Any]) -> tuple[Split, Split,
                                                                                                          Split]:
    """Three (x, y) pairs as Splits, every x standardised by the training split's per-feature mean and std."""
    x_train = _as_numpy(train[0])
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0  # features constant in every training row: centre them, do not blow them up

    def to_split(xs: Any, ys: Any) -> Split:
        return Split(torch.as_tensor((_as_numpy(xs) - mean) / std, dtype=torch.float32),
                     torch.as_tensor(_as_numpy(ys), dtype=torch.int64))

    return to_split(*train), to_split(*val), to_split(*test)


def train_val_test_split(x: Any, y: Any, *, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
                         stratify: bool = True, standardize: bool = True) -> tuple[Split, Split, Split]:
    """Split examples ``x`` (N, ...) and integer labels ``y`` (N,) into train/val/test Splits by a seeded permutation.

    Numpy arrays or tensors. With ``stratify`` each class is split in the same proportions; with ``standardize``
    every split is scaled by the training split's per-feature statistics (nothing of val/test leaks into them).
    """
    xs, ys = _as_numpy(x), _as_numpy(y).astype(np.int64)
    if xs.shape[0] != ys.shape[0] or ys.ndim != 1:
        raise ValueError(f"x has {xs.shape[0]} rows and y has shape {ys.shape}; y must be (N,) labels of x's N rows")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must leave a training split")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    groups = [np.flatnonzero(ys == label) for label in np.unique(ys)] if stratify else [np.arange(len(ys))]
    for group in groups:
        rows = rng.permutation(group)
        a, b = round((1 - val_fraction - test_fraction) * len(rows)), round((1 - test_fraction) * len(rows))
        for part, chosen in zip(parts, (rows[:a], rows[a:b], rows[b:]), strict=True):
            part.append(chosen)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    pairs = (xs[train], ys[train]), (xs[val], ys[val]), (xs[test], ys[test])
    if standardize:
        return standardized_splits(*pairs)
    return tuple(Split(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b)) for a, b in pairs)  # type: ignore[return-value]


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
