"""One small Esper run as Simic uses it: the tasks, the randomised hosts, the run settings, the controller.

Every arm Simic compares — the heuristic whose episodes it imitates, the agent it trains, the learned
policy it serves, random germination — trains through this one function, on the same task split, host
and settings for a given (task, seed), so their accuracies can be paired.

Tasks (all bundled or generated, nothing downloaded): ``spirals`` (esper's generator), ``digits``
(scikit-learn's bundled 8×8 digits), ``moons`` and ``circles`` (scikit-learn generators, noise 0.2).
Simic trains on spirals, digits and moons; circles is held out for evaluation.

Hosts are deliberately weak MLPs whose width (4, 6 or 8) and depth (2 or 3 hidden layers, so 2 or 3
seed slots) are drawn from the seed, so a policy cannot memorise one architecture.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits, make_circles, make_moons
from torch import nn

import esper
from esper.config import TolariaConfig
from esper.kasmina import KasminaConfig
from esper.tasks import TaskData, spiral_points, stratified_split
from esper.tolaria import TolariaTrainer
from esper_kernels import LocalKernelLibrary
from esper_policy import ControlPolicy, TamiyoConfig, build_policy

TRAIN_TASKS = ("spirals", "digits", "moons")
HELD_OUT_TASKS = ("circles",)
#: Seeds Simic trains on start here; evaluation uses seeds below it, never seen in training.
TRAINING_SEED_BASE = 10_000
EPOCHS = 20


def load_task(name: str, seed: int) -> TaskData:
    """A task's split for ``seed`` (generated or bundled)."""
    if name == "spirals":
        x, y = spiral_points(seed)
    elif name == "digits":
        bunch = load_digits()
        x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    elif name == "moons":
        x, y = make_moons(n_samples=800, noise=0.2, random_state=seed)
    elif name == "circles":
        x, y = make_circles(n_samples=800, noise=0.2, factor=0.5, random_state=seed)
    else:
        raise ValueError(f"unknown task {name!r}; known: {[*TRAIN_TASKS, *HELD_OUT_TASKS]}")
    return stratified_split(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64), seed, name)


@dataclass(frozen=True)
class HostShape:
    """The weak host's hidden width and depth."""

    width: int
    depth: int


def host_shape(seed: int) -> HostShape:
    """The host drawn for ``seed`` (width 4/6/8, 2 or 3 hidden layers)."""
    rng = random.Random(seed * 7919 + 1)
    return HostShape(width=rng.choice((4, 6, 8)), depth=rng.choice((2, 3)))


def build_host(task: TaskData, shape: HostShape) -> nn.Module:
    """A ReLU MLP; its hidden Linear layers get seed slots, the head does not."""
    layers: list[nn.Module] = []
    width_in = task.num_features
    for _ in range(shape.depth):
        layers += [nn.Linear(width_in, shape.width), nn.ReLU()]
        width_in = shape.width
    return nn.Sequential(nn.Sequential(*layers), nn.Linear(width_in, task.num_classes))


def settings(epochs: int = EPOCHS) -> tuple[TolariaConfig, KasminaConfig, TamiyoConfig]:
    """The run settings every Simic arm shares (short lifecycles: a seed can fossilize in about 6 epochs)."""
    tolaria = TolariaConfig(epochs=epochs, batch_size=32, optimizer="adam", learning_rate=0.01, seed_learning_rate=0.01,
                            max_loss_spike_ratio=3.0, checkpoints_kept=2, progress_bar=False, log_lines=False,
                            max_rollbacks=5)
    kasmina = KasminaConfig(exclude_modules=["1"], chunks_per_layer=1, alpha_ramp_steps=20, training_max_steps=30,
                            stabilization_steps=5, evaluation_steps=5, fine_tuning_steps=20, embargo_epochs=2)
    tamiyo = TamiyoConfig(warmup_epochs=3, plateau_patience_epochs=2, plateau_min_delta=0.01,
                          max_concurrent_adaptations=1, max_germinations=3, last_germination_epoch=max(0, epochs - 6),
                          evaluation_epochs=1, fine_tuning_epochs=2, cull_regression_tolerance=0.02,
                          blueprint_preference=["capacity"], random_germination_probability=0.15)
    return tolaria, kasmina, tamiyo


@dataclass
class Run:
    """A prepared run: the trainer (not started), its task, its kernel library and the directory it writes."""

    task: TaskData
    trainer: TolariaTrainer
    library: LocalKernelLibrary
    run_dir: Path
    owns_dir: bool

    def test_accuracy(self) -> float:
        """Accuracy on the held-out test split (never seen by any controller)."""
        _, acc = esper.tolaria.evaluate(self.trainer.model, esper.Batches(self.task.test, 1024, shuffle=False))
        return float(acc)

    def cleanup(self) -> None:
        """Remove the run directory if this run made a temporary one."""
        if self.owns_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


ControllerFactory = Callable[[TamiyoConfig, LocalKernelLibrary], ControlPolicy]


def prepare_run(task_name: str, seed: int, controller: ControllerFactory | str, *, epochs: int = EPOCHS,
                run_dir: Path | None = None, tamiyo_overrides: dict[str, Any] | None = None) -> Run:
    """Build the run for (task, seed) under ``controller`` (a policy name, or a factory over config and library).

    ``run_dir`` keeps the run's files (metrics, events, episode.jsonl); without it a temporary directory is used.
    """
    torch.set_num_threads(1)
    task = load_task(task_name, seed)
    tolaria, kasmina, tamiyo = settings(epochs)
    tamiyo = tamiyo.model_copy(update={"seed": seed, **(tamiyo_overrides or {})})
    owns = run_dir is None
    base = Path(tempfile.mkdtemp(prefix="simic-")) if run_dir is None else run_dir
    tolaria = tolaria.model_copy(update={"seed": seed, "run_dir": str(base.parent), "run_id": base.name})
    torch.manual_seed(seed)
    library = LocalKernelLibrary()
    model = esper.wrap(build_host(task, host_shape(seed)), kasmina, library)
    if isinstance(controller, str):
        policy = build_policy(tamiyo.model_copy(update={"policy": controller}), library)
    else:
        policy = controller(tamiyo, library)
    trainer = TolariaTrainer(model, policy, tolaria,
                             train_data=esper.Batches(task.train, tolaria.batch_size, seed=seed),
                             val_data=esper.Batches(task.val, 1024, shuffle=False))
    return Run(task=task, trainer=trainer, library=library, run_dir=base, owns_dir=owns)


def run_once(task_name: str, seed: int, controller: ControllerFactory | str, **kw: Any) -> tuple[float, Run]:
    """Train one run to the end; returns (test accuracy, the run). A diverged run scores its current model."""
    run = prepare_run(task_name, seed, controller, **kw)
    with contextlib.suppress(esper.tolaria.TrainingDivergedError):
        run.trainer.train()
    return run.test_accuracy(), run
