"""Small classification tasks for the demo, the proof and tests — no downloads.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 64 features, 10 classes).
* ``spirals``: two interleaved spirals in the plane (2 features, 2 classes), generated from a seed.

Both are split train/val/test (60/20/20, stratified) by a seed, standardised with the training
split's statistics, and held as tensors (:class:`esper.data.Split`); :class:`esper.data.Batches`
iterates a split in shuffled minibatches whose order depends only on its seed and how many epochs it
has served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from esper.data import Split


@dataclass(frozen=True)
class TaskData:
    """A task's three splits and its shape."""

    name: str
    train: Split
    val: Split
    test: Split
    num_features: int
    num_classes: int


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> TaskData:
    """Stratified 60/20/20 split, standardised by the training split."""
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0  # pixels blank in every training image: centre them, do not blow them up

    def to_split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.as_tensor((xs - mean) / std, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.int64))

    return TaskData(
        name=name,
        train=to_split(x_train, y_train),
        val=to_split(x_val, y_val),
        test=to_split(x_test, y_test),
        num_features=int(x.shape[1]),
        num_classes=int(y.max()) + 1,
    )


def digits(seed: int = 0) -> TaskData:
    """scikit-learn's 8×8 digits (bundled with the package; nothing is downloaded)."""
    bunch = load_digits()
    return _split("digits", bunch.data.astype(np.float64), bunch.target.astype(np.int64), seed)


def two_spirals(seed: int = 0, points_per_class: int = 500, turns: float = 2.0, noise: float = 0.15) -> TaskData:
    """Two interleaved spirals: class 1 is class 0 rotated by half a turn; Gaussian noise on both.

    The radius grows with the angle, so the arms get further apart outwards; sampling the angle as
    sqrt(uniform) spreads points evenly along the arms instead of crowding the centre.
    """
    rng = np.random.default_rng(seed)
    angle = np.sqrt(rng.uniform(0.0, 1.0, size=points_per_class)) * turns * 2 * math.pi
    radius = angle / (turns * 2 * math.pi)  # in (0, 1]
    arm = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise / (2 * turns), size=(2 * points_per_class, 2))
    y = np.concatenate([np.zeros(points_per_class, np.int64), np.ones(points_per_class, np.int64)])
    return _split("spirals", x, y, seed)


TASKS = {"digits": digits, "spirals": two_spirals}


def load_task(name: str, seed: int = 0) -> TaskData:
    """A task by name ("digits" or "spirals")."""
    try:
        return TASKS[name](seed)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
