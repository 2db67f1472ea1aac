"""``python -m esper_recipes.headroom``: a task with no headroom, where the heuristic Tamiyo must decline to grow.

Four well-separated Gaussian blobs in 8 dimensions: the demo's spirals host (a 2-8-8 ReLU MLP, widened to the
task's inputs) already classifies them perfectly, so a validation plateau means "converged", not "starved".
The heuristic sees a training error under ``tamiyo.min_train_error`` with validation as good and germinates
nothing; the host alone and Esper end with the same parameters. ``BLOBS`` is also a :class:`esper.TaskSpec`, so
``esper proof --task esper_recipes.headroom:BLOBS`` runs the proof's four arms on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from esper.data import train_val_test_split
from esper.tasks import TaskData, TaskSpec
from esper.tolaria import progress_bar_wanted

from .demo import CONFIGS, NarrowMLP, demo_config, run_experiment


def blobs(seed: int = 0, per_class: int = 200, classes: int = 4, features: int = 8) -> TaskData:
    """``classes`` Gaussian blobs (unit variance) whose centres are 8 standard deviations apart on each axis pair."""
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, features) * 8.0
    x = np.concatenate([rng.normal(c, 1.0, size=(per_class, features)) for c in centres])
    y = np.repeat(np.arange(classes), per_class)
    return TaskData.from_splits("blobs", *train_val_test_split(x, y, seed=seed))


def _host(data: TaskData) -> torch.nn.Module:
    return NarrowMLP(data.num_features, (8, 8), data.num_classes)


BLOBS = TaskSpec("blobs", blobs, _host, CONFIGS / "demo-spirals.yaml", "ReLU MLP 8-8-8-4 (the spirals host)")
TASK = "esper_recipes.headroom:BLOBS"


def main(argv: list[str] | None = None) -> int:
    """Host alone and Esper on the blobs; prints both, and whether anything was grown."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.headroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/headroom"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(highlight=False, width=None if progress_bar_wanted() else 120)
    config = demo_config(TASK)
    config = config.model_copy(update={"tolaria": config.tolaria.model_copy(update={"epochs": args.epochs})})
    grown = 0
    for seed in range(args.seeds):
        host = run_experiment(TASK, config, policy="none", seed=seed, run_dir=args.out, run_id=f"host-{seed}",
                              quiet=True)
        esper = run_experiment(TASK, config, policy="heuristic", seed=seed, run_dir=args.out, run_id=f"esper-{seed}",
                               quiet=True)
        germinated = sum(esper.outcomes.values())
        grown += germinated
        console.print(f"seed {seed}: host {host.parameters} params, test acc {host.test_accuracy:.4f} | Esper "
                      f"{esper.parameters} params, test acc {esper.test_accuracy:.4f} | germinations {germinated}")
    verdict = "nothing grown" if grown == 0 else f"{grown} germination(s)"
    console.print(f"no headroom: {verdict} over {args.seeds} seeds")
    return 0 if grown == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
