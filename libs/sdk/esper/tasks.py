"""Tasks a run trains on, and how a run config names one.

A task is three splits of tensors (:class:`TaskData`). A run config names it either as a built-in
(``spirals``: two interleaved spirals, generated from a seed, nothing downloaded, nothing beyond numpy and
torch) or by import path, ``package.module:factory``, where ``factory(seed)`` returns a :class:`TaskData`.
The recipes (``esper_recipes.tasks``) add scikit-learn's digits and the demo's exact splits.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import ConfigError
from .data import Split


@dataclass(frozen=True)
class TaskData:
    """A task's three splits and its shape."""

    name: str
    train: Split
    val: Split
    test: Split
    num_features: int
    num_classes: int


ArrayPair = tuple[np.ndarray, np.ndarray]


def task_from_splits(name: str, train: ArrayPair, val: ArrayPair, test: ArrayPair) -> TaskData:
    """Standardise three (x, y) splits by the training split's statistics and hold them as tensors."""
    x_train = train[0]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0  # features constant in every training row: centre them, do not blow them up

    def to_split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.as_tensor((xs - mean) / std, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.int64))

    labels = np.concatenate([train[1], val[1], test[1]])
    return TaskData(name=name, train=to_split(*train), val=to_split(*val), test=to_split(*test),
                    num_features=int(x_train.shape[1]), num_classes=int(labels.max()) + 1)


def stratified_split(x: np.ndarray, y: np.ndarray, seed: int, name: str) -> TaskData:
    """60/20/20 train/val/test, each class split in the same proportions by a seeded permutation."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        a, b = round(0.6 * len(rows)), round(0.8 * len(rows))
        for part, chosen in zip(parts, (rows[:a], rows[a:b], rows[b:]), strict=True):
            part.append(chosen)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return task_from_splits(name, (x[train], y[train]), (x[val], y[val]), (x[test], y[test]))


def spiral_points(seed: int = 0, points_per_class: int = 500, turns: float = 2.0,
                  noise: float = 0.15) -> ArrayPair:
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
    return x, y


def spirals(seed: int = 0) -> TaskData:
    """The two-spirals task (1,000 points, 2 features, 2 classes), split 60/20/20 by ``seed``."""
    return stratified_split(*spiral_points(seed), seed, "spirals")


#: Tasks a run config can name without an import path.
BUILTIN_TASKS: dict[str, Callable[[int], TaskData]] = {"spirals": spirals}


def import_object(spec: str, what: str) -> Any:
    """The object ``package.module:attribute`` names; ConfigError naming ``what`` and the spec otherwise."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what}: {spec!r} is not an import path of the form 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what}: cannot import {module_name!r} ({err})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{what}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


def load_task(spec: str, seed: int = 0) -> TaskData:
    """A built-in task by name, or ``factory(seed)`` of the import path ``spec``; ConfigError when neither."""
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec](seed)
    if ":" not in spec:
        raise ConfigError(f"task: unknown task {spec!r}; built-in: {sorted(BUILTIN_TASKS)}, or name one by "
                          f"import path 'package.module:factory'")
    task = import_object(spec, "task")(seed)
    if not isinstance(task, TaskData):
        raise ConfigError(f"task: {spec}({seed}) returned {type(task).__name__}, not esper.tasks.TaskData")
    return task
