"""``python -m esper_simic.evaluate`` (``make simic-eval``): learned vs heuristic vs random germination.

Every arm trains the same run for each (task, seed) — same split, host shape, initialisation and settings
(:mod:`esper_simic.runs`) — and is scored on the test split no controller ever sees. Seeds are
``0 .. --seeds-1``, disjoint from the training seeds (``TRAINING_SEED_BASE`` and up) and never used to
choose anything in training. Tasks: the three training tasks and ``circles``, which the policy never
trained on.

Learned vs heuristic is a paired t-test per task (scipy's ``ttest_rel``; the arms of one seed share
everything but the controller). It writes ``results.json``, ``table.txt`` and ``eval.png`` into ``--out``
and prints, last: ``learned_vs_heuristic_pts:`` (mean paired difference in test accuracy, in points, on
the task where the learned policy does best), ``learned_vs_heuristic_p:`` (its p-value), then one line per
task.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table
from scipy import stats

from esper_kernels import LocalKernelLibrary
from esper_policy import LearnedPolicy, TamiyoConfig, read_artifact
from esper_policy.network import PolicyNetwork

from .runs import EPOCHS, HELD_OUT_TASKS, TRAIN_TASKS, TRAINING_SEED_BASE, run_once

ARMS = ("learned", "heuristic", "random")


def evaluate(network: PolicyNetwork, tasks: Sequence[str], seeds: Sequence[int], *, epochs: int = EPOCHS,
             say: Any = print) -> dict[str, Any]:
    """Test accuracy of every arm on every (task, seed), plus the learned arm's veto counts."""
    if any(s >= TRAINING_SEED_BASE for s in seeds):
        raise ValueError(f"evaluation seeds must be below {TRAINING_SEED_BASE} (the training seeds start there)")

    def learned(config: TamiyoConfig, library: LocalKernelLibrary) -> LearnedPolicy:
        return LearnedPolicy(config, library, network=network)

    results: dict[str, Any] = {"accuracy": {t: {a: [] for a in ARMS} for t in tasks},
                               "vetoes": {t: [] for t in tasks}, "learned_actions": {t: {} for t in tasks}}
    for task in tasks:
        for seed in seeds:
            for arm in ARMS:
                acc, run = run_once(task, seed, learned if arm == "learned" else arm, epochs=epochs)
                results["accuracy"][task][arm].append(acc)
                policy = run.trainer.controller
                if isinstance(policy, LearnedPolicy):
                    results["vetoes"][task].append(policy.vetoes)
                    for step in run.trainer.lineage.germinations:
                        name = step.blueprint_name or "?"
                        results["learned_actions"][task][name] = results["learned_actions"][task].get(name, 0) + 1
                run.cleanup()
            row = "  ".join(f"{a} {results['accuracy'][task][a][-1]:.3f}" for a in ARMS)
            say(f"{task:8s} seed {seed:3d}  {row}")
    return results


def paired(learned: list[float], heuristic: list[float]) -> tuple[float, float]:
    """Mean paired difference (points of accuracy) and the paired t-test's two-sided p (1.0 when identical)."""
    diffs = [100.0 * (a - b) for a, b in zip(learned, heuristic, strict=True)]
    mean = statistics.fmean(diffs)
    if all(abs(d) < 1e-12 for d in diffs):
        return 0.0, 1.0
    p = float(stats.ttest_rel(learned, heuristic).pvalue)
    return mean, (1.0 if math.isnan(p) else p)


def report(results: dict[str, Any], out: Path, console: Console) -> list[str]:
    """The table, the plot and the closing lines (returned, also printed)."""
    tasks = list(results["accuracy"])
    table = Table(title="held-out test accuracy (mean ± sd over seeds)")
    table.add_column("task")
    for arm in ARMS:
        table.add_column(arm, justify="right")
    table.add_column("learned − heuristic (pts)", justify="right")
    table.add_column("paired p", justify="right")
    table.add_column("vetoes/run", justify="right")
    lines, best = [], None
    for task in tasks:
        acc = results["accuracy"][task]
        diff, p = paired(acc["learned"], acc["heuristic"])
        cells = [f"{statistics.fmean(acc[a]):.4f} ± {statistics.pstdev(acc[a]):.4f}" for a in ARMS]
        vetoes = statistics.fmean(results["vetoes"][task]) if results["vetoes"][task] else 0.0
        held_out = " (never trained on)" if task in HELD_OUT_TASKS else ""
        table.add_row(task + held_out, *cells, f"{diff:+.2f}", f"{p:.3g}", f"{vetoes:.1f}")
        lines.append(f"task_{task}: learned {statistics.fmean(acc['learned']):.4f} heuristic "
                     f"{statistics.fmean(acc['heuristic']):.4f} random {statistics.fmean(acc['random']):.4f} "
                     f"diff_pts {diff:+.2f} p {p:.3g} n {len(acc['learned'])}{held_out}")
        if best is None or diff > best[1]:
            best = (task, diff, p)
    console.print(table)
    with (out / "table.txt").open("w", encoding="utf-8") as f:
        Console(file=f, width=140).print(table)
    plot(results, out / "eval.png")
    assert best is not None
    return [f"learned_vs_heuristic_pts: {best[1]:+.2f} (best task: {best[0]})",
            f"learned_vs_heuristic_p: {best[2]:.3g}", *lines]


def plot(results: dict[str, Any], path: Path) -> None:
    """Mean test accuracy per task and arm, with every seed's point."""
    tasks = list(results["accuracy"])
    fig, ax = plt.subplots(figsize=(2.6 * len(tasks) + 2, 4))
    width = 0.26
    for j, arm in enumerate(ARMS):
        xs = [i + (j - 1) * width for i in range(len(tasks))]
        means = [statistics.fmean(results["accuracy"][t][arm]) for t in tasks]
        ax.bar(xs, means, width, label=arm, alpha=0.75)
        for x, t in zip(xs, tasks, strict=True):
            ax.scatter([x] * len(results["accuracy"][t][arm]), results["accuracy"][t][arm], s=6, color="black")
    ax.set_xticks(range(len(tasks)), [t + ("*" if t in HELD_OUT_TASKS else "") for t in tasks])
    ax.set(ylabel="test accuracy", title="learned vs heuristic vs random germination (* never trained on)")
    lows = [min(min(v) for v in results["accuracy"][t].values()) for t in tasks]
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policy", type=Path, default=Path("runs/simic/policy.json"))
    parser.add_argument("--out", type=Path, default=Path("runs/simic-eval"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tasks", nargs="+", default=[*TRAIN_TASKS, *HELD_OUT_TASKS])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    network = read_artifact(str(args.policy))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = evaluate(network, args.tasks, range(args.seeds), epochs=args.epochs, say=console.print)
    results["policy_version"], results["seconds"] = network.version, time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = report(results, args.out, console)
    console.print(f"policy {network.version}; {len(args.tasks)} tasks × {args.seeds} held-out seeds × {len(ARMS)} "
                  f"arms in {results['seconds']:.0f} s; table {args.out / 'table.txt'}, plot {args.out / 'eval.png'}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
