"""Small classification tasks for the demo, the proof and tests — no downloads.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 64 features, 10 classes).
* ``spirals``: two interleaved spirals in the plane (2 features, 2 classes), generated from a seed.

Both are split train/val/test (60/20/20, stratified) by a seed, standardised with the training
split's statistics, and held as tensors (:class:`esper.tasks.TaskData`); :class:`esper.data.Batches`
iterates a split in shuffled minibatches whose order depends only on its seed and how many epochs it
has served.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from esper.tasks import TaskData, spiral_points, task_from_splits


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> TaskData:
    """Stratified 60/20/20 split (scikit-learn's, the demo's exact splits), standardised by the training split."""
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return task_from_splits(name, (x_train, y_train), (x_val, y_val), (x_test, y_test))


def digits(seed: int = 0) -> TaskData:
    """scikit-learn's 8×8 digits (bundled with the package; nothing is downloaded)."""
    bunch = load_digits()
    return _split("digits", bunch.data.astype(np.float64), bunch.target.astype(np.int64), seed)


def two_spirals(seed: int = 0, points_per_class: int = 500, turns: float = 2.0, noise: float = 0.15) -> TaskData:
    """Two interleaved spirals (``esper.tasks.spiral_points``), split as the demo always has."""
    return _split("spirals", *spiral_points(seed, points_per_class, turns, noise), seed)


TASKS = {"digits": digits, "spirals": two_spirals}


def load_task(name: str, seed: int = 0) -> TaskData:
    """A task by name ("digits" or "spirals")."""
    try:
        return TASKS[name](seed)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
