"""Tasks a run trains on, and how a run config names one.

A task is three splits of tensors (:class:`TaskData`). A run config names it either as a built-in
(``spirals``: two interleaved spirals, generated from a seed, nothing downloaded, nothing beyond numpy and
torch) or by import path, ``package.module:factory``, where ``factory(seed)`` returns a :class:`TaskData`.
The recipes (``esper_recipes.tasks``) add scikit-learn's digits and the demo's exact splits.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError
from .data import Split, standardized_splits, train_val_test_split


@dataclass(frozen=True)
class TaskData:
    """A task's three splits and its shape."""

    name: str
    train: Split
    val: Split
    test: Split
    num_features: int
    num_classes: int

    @classmethod
    def from_splits(cls, name: str, train: Split, val: Split, test: Split) -> TaskData:
        """A task from three splits (``esper.data.train_val_test_split`` makes them); shape read off the data."""
        labels = torch.cat([train.y, val.y, test.y])
        return cls(name=name, train=train, val=val, test=test, num_features=int(train.x[0].numel()),
                   num_classes=int(labels.max()) + 1)


ArrayPair = tuple[np.ndarray, np.ndarray]


def task_from_splits(name: str, train: ArrayPair, val: ArrayPair, test: ArrayPair) -> TaskData:
    """Standardise three (x, y) splits by the training split's statistics and hold them as tensors."""
    return TaskData.from_splits(name, *standardized_splits(train, val, test))


def stratified_split(x: np.ndarray, y: np.ndarray, seed: int, name: str) -> TaskData:
    """60/20/20 train/val/test, each class split in the same proportions by a seeded permutation."""
    return TaskData.from_splits(name, *train_val_test_split(x, y, seed=seed))


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


@dataclass(frozen=True)
class TaskSpec:
    """A researcher's task as the demo and the proof take it: the data, the host and the run config.

    ``data(seed)`` returns the task's :class:`TaskData` (``TaskData.from_splits`` over
    ``esper.data.train_val_test_split`` makes one from arrays); ``host(task)`` returns a freshly initialised
    host ``nn.Module`` (the caller seeds torch first); ``config`` is the run YAML (``tolaria``, ``kasmina``,
    ``tamiyo``), a path relative to the working directory or, failing that, to the module that defines the spec.
    Name it on the command line by import path: ``esper proof --task my_package.tasks:MY_TASK``.
    """

    name: str
    data: Callable[[int], TaskData]
    host: Callable[[TaskData], Any]
    config: str | Path
    description: str = ""


def load_task_spec(spec: str) -> TaskSpec:
    """The :class:`TaskSpec` the import path ``package.module:NAME`` names (an instance, or a function returning
    one); its ``config`` is resolved to an existing file. ConfigError naming what is wrong otherwise."""
    found = import_object(spec, "task")
    if callable(found) and not isinstance(found, TaskSpec) and _takes_no_arguments(found):
        found = found()
    if not isinstance(found, TaskSpec):
        raise ConfigError(f"task: {spec} is {type(found).__name__}, not an esper.tasks.TaskSpec")
    config = Path(found.config)
    if not config.is_absolute() and not config.exists():
        module_file = getattr(importlib.import_module(spec.partition(":")[0]), "__file__", None)
        if module_file is not None and (Path(module_file).parent / config).exists():
            config = Path(module_file).parent / config
    if not config.exists():
        raise ConfigError(f"task: {spec}: config file {found.config} does not exist")
    return TaskSpec(name=found.name, data=found.data, host=found.host, config=config, description=found.description)


def _takes_no_arguments(function: Callable[..., Any]) -> bool:
    try:
        inspect.signature(function).bind()
    except (TypeError, ValueError):
        return False
    return True
