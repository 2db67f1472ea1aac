"""``python -m esper_recipes.frontier``: capability per parameter, Esper against the static frontier.

On digits, spirals and wine (scikit-learn's bundled 178-sample wine data; nothing is downloaded), for each seed:

* the static frontier: the host architecture at 5 widths, trained from scratch;
* Esper grow-only (the demo's configuration, eager kernels) and Esper grow-then-prune (the same run compacted
  by Elesh/Emrakul/Tolaria, ``esper_recipes.compact``);
* Torch-Pruning's MagnitudePruner on the widest static model, cut to Esper's final parameter count and
  fine-tuned for as many epochs as the compaction.

Rule (said in the table): static arms train until validation accuracy has not improved for ``PATIENCE`` epochs
(at most ``MAX_EPOCHS``); Esper runs its configured schedule (the demo's epochs) and then the compaction epochs.
Compute is parameter-samples: parameters × training samples, summed over epochs. Writes ``runs/frontier/``
(two plots, a table) and prints the three figures as its last lines.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from sklearn.datasets import load_wine
from torch import nn

from esper.data import Batches
from esper.tasks import TaskSpec
from esper.tolaria import evaluate
from esper.tolaria.pruning import train_epoch

from .compact import compact_grown
from .demo import BUILTIN_TASKS, CONFIGS, NarrowMLP, TinyCNN, demo_config, run_experiment
from .tasks import TASKS, TaskData, _split

PATIENCE, MAX_EPOCHS, COMPACT_EPOCHS = 10, 80, 20
WIDTHS = {"digits": (2, 4, 8, 16, 32), "spirals": (4, 8, 16, 32, 64), "wine": (2, 4, 8, 16, 32)}


def wine(seed: int = 0) -> TaskData:
    """scikit-learn's bundled wine data (13 features, 3 classes), split like the other tasks."""
    bunch = load_wine()
    return _split("wine", bunch.data.astype(np.float64), bunch.target.astype(np.int64), seed)


def _wine_host(data: TaskData) -> nn.Module:
    return NarrowMLP(data.num_features, (4, 4), data.num_classes)


TASKS.setdefault("wine", wine)
# Wine runs under the spirals config (see run_arms), so its spec names that file.
BUILTIN_TASKS.setdefault("wine", TaskSpec("wine", wine, _wine_host, CONFIGS / "demo-spirals.yaml", "ReLU MLP 13-4-4-3"))


def static_model(task: str, width: int, data: TaskData) -> nn.Module:
    """The host architecture at ``width``."""
    if task == "digits":
        return TinyCNN(width, data.num_classes)
    return NarrowMLP(data.num_features, (width, width), data.num_classes)


def n_params(model: nn.Module) -> int:
    """Parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def train_static(model: nn.Module, data: TaskData, seed: int, lr: float, batch: int,
                 max_epochs: int = MAX_EPOCHS) -> tuple[float, int]:
    """Early-stopped training (best validation weights kept); returns (test accuracy, compute)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train, val = Batches(data.train, batch, seed=seed), Batches(data.val, 1024, shuffle=False)
    best, best_state, stale, compute = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    for _ in range(max_epochs):
        train_epoch(model, opt, train)
        compute += n_params(model) * len(data.train)
        _, acc = evaluate(model, val)
        if acc > best:
            best, best_state, stale = acc, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    model.load_state_dict(best_state)
    return float(evaluate(model, Batches(data.test, 1024, shuffle=False))[1]), compute


def torch_pruning_arm(widest: nn.Module, target: int, data: TaskData, seed: int, lr: float, batch: int) -> float:
    """Torch-Pruning's magnitude pruner on ``widest`` down to ``target`` parameters, fine-tuned; test accuracy."""
    model = copy.deepcopy(widest)
    example = data.val.x[:2]
    head = model.head
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.9, iterative_steps=40, ignored_layers=[head])
    for _ in range(40):
        if n_params(model) <= target:
            break
        pruner.step()
    train_static(model, data, seed, lr, batch, max_epochs=COMPACT_EPOCHS)
    return float(evaluate(model, Batches(data.test, 1024, shuffle=False))[1])


def run_seed(task: str, seed: int) -> dict[str, Any]:
    """Every arm on one task and seed."""
    data = TASKS[task](seed)
    cfg = demo_config("spirals" if task == "wine" else task)
    lr, batch = cfg.tolaria.learning_rate, cfg.tolaria.batch_size
    static = []
    widest = None
    for w in WIDTHS[task]:
        torch.manual_seed(seed)
        model = static_model(task, w, data)
        acc, compute = train_static(model, data, seed, lr, batch)
        static.append({"width": w, "params": n_params(model), "acc": acc, "compute": compute})
        widest = model
    grown = run_experiment(task, cfg, policy="heuristic", seed=seed, run_dir=Path("runs/frontier/runs"),
                           run_id=f"{task}-{seed}", quiet=True, data=data)
    assert grown.history is not None and grown.model is not None and widest is not None
    grow_compute = sum(int(e["total_params"]) * len(data.train) for e in grown.history.epochs)
    n_grow_epochs = len(grown.history.epochs)
    result = compact_grown(grown.model, data, learning_rate=lr, batch_size=batch, seed=seed,
                           history=grown.history, epochs=COMPACT_EPOCHS)
    prune_compute = grow_compute + sum(int(e["total_params"]) * len(data.train)
                                       for e in grown.history.epochs[n_grow_epochs:])
    tp_acc = torch_pruning_arm(widest, result.parameters_after, data, seed, lr, batch)
    return {"task": task, "seed": seed, "static": static,
            "grow": {"params": grown.parameters, "acc": grown.test_accuracy, "compute": grow_compute},
            "prune": {"params": result.parameters_after, "acc": result.test_accuracy, "compute": prune_compute},
            "torch_pruning": {"params": result.parameters_after, "acc": tp_acc, "widest_acc": static[-1]["acc"]}}


def frontier_at(static: list[dict[str, Any]], params: float) -> float:
    """Static accuracy interpolated at ``params`` (log scale; the end values beyond the widths measured)."""
    pts = sorted(static, key=lambda s: s["params"])
    return float(np.interp(math.log(params), [math.log(s["params"]) for s in pts], [s["acc"] for s in pts]))


def compute_at(static: list[dict[str, Any]], acc: float) -> float:
    """Static compute needed for ``acc``: interpolated along the frontier's best-so-far accuracy."""
    pts = sorted(static, key=lambda s: s["params"])
    best, xs, ys = -1.0, [], []
    for s in pts:
        if s["acc"] > best:
            best = s["acc"]
            xs.append(s["acc"])
            ys.append(s["compute"])
    return float(np.interp(acc, xs, ys))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval."""
    from scipy import stats

    m = statistics.fmean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def plots(rows: list[dict[str, Any]], out: Path) -> None:
    """Accuracy against final parameters and against training compute, every arm, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    for key, name in (("params", "frontier_params.png"), ("compute", "frontier_compute.png")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4))
        for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
            for r in (r for r in rows if r["task"] == task):
                s = sorted(r["static"], key=lambda s: s["params"])
                ax.plot([p[key] for p in s], [p["acc"] for p in s], "o-", color="grey", alpha=0.5)
                ax.plot(r["grow"][key], r["grow"]["acc"], "s", color="#4daf4a")
                ax.plot(r["prune"][key], r["prune"]["acc"], "*", color="#2166ac", ms=11)
                if key == "params":
                    ax.plot(r["torch_pruning"]["params"], r["torch_pruning"]["acc"], "x", color="#d6604d")
            ax.set_xscale("log")
            ax.set_title(task)
            ax.set_xlabel("final parameters" if key == "params" else "training compute (parameter-samples)")
            ax.set_ylabel("test accuracy")
        fig.legend(["static widths", "Esper grow-only", "Esper grow+prune", "Torch-Pruning"], loc="lower center",
                   ncol=4)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=["digits", "spirals", "wine"])
    parser.add_argument("--out", type=Path, default=Path("runs/frontier"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        for seed in range(args.seeds):
            rows.append(run_seed(task, seed))
            r = rows[-1]
            print(f"{task} seed {seed}: static widest {r['static'][-1]['acc']:.3f} ({r['static'][-1]['params']} p); "
                  f"grow {r['grow']['acc']:.3f} ({r['grow']['params']} p); prune {r['prune']['acc']:.3f} "
                  f"({r['prune']['params']} p); torch-pruning {r['torch_pruning']['acc']:.3f}", flush=True)
    (args.out / "frontier.json").write_text(json.dumps(rows, indent=1))
    gains = [100 * (r["prune"]["acc"] - frontier_at(r["static"], r["prune"]["params"])) for r in rows]
    ratios = [r["prune"]["compute"] / compute_at(r["static"], r["prune"]["acc"]) for r in rows]
    esper_drop = statistics.fmean(r["grow"]["acc"] - r["prune"]["acc"] for r in rows)
    tp_drop = statistics.fmean(r["torch_pruning"]["widest_acc"] - r["torch_pruning"]["acc"] for r in rows)
    lines = ["| task | seed | static widest (acc, params) | grow-only | grow+prune | Torch-Pruning | gain pts |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['seed']} | {r['static'][-1]['acc']:.3f}, {r['static'][-1]['params']} | "
              f"{r['grow']['acc']:.3f}, {r['grow']['params']} | {r['prune']['acc']:.3f}, {r['prune']['params']} | "
              f"{r['torch_pruning']['acc']:.3f} | {g:+.1f} |" for r, g in zip(rows, gains, strict=True)]
    lines.append(f"\nRule: static arms and Torch-Pruning's fine-tuning early-stop (patience {PATIENCE}, at most "
                 f"{MAX_EPOCHS} / {COMPACT_EPOCHS} epochs); Esper runs its configured epochs, then {COMPACT_EPOCHS} "
                 "compaction epochs. Compute: parameters x training samples, summed over epochs.")
    (args.out / "frontier.md").write_text("\n".join(lines) + "\n")
    plots(rows, args.out)
    print("\n".join(lines))
    m, lo, hi = mean_ci(gains)
    print(f"compute_ratio_at_equal_accuracy: {statistics.median(ratios):.2f}")
    print(f"frontier_gain_pts: {m:+.2f} (95% CI {lo:+.2f} .. {hi:+.2f})")
    drop_ratio = esper_drop / tp_drop if tp_drop != 0 else float("nan")
    print(f"prune_drop_vs_torch_pruning: {drop_ratio:.2f} (Emrakul drop {100 * esper_drop:+.2f} pts, "
          f"Torch-Pruning drop {100 * tp_drop:+.2f} pts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
