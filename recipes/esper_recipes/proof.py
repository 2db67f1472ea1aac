"""``python -m esper_recipes.proof``: does growing a network with Esper beat not growing it?

For each task (digits, spirals, or a researcher's own: ``--task package.module:SPEC`` naming an
:class:`esper.tasks.TaskSpec`) and each of N seeds, four arms are trained for the same epochs on the
same split, and tested on the held-out test split (never seen by any controller):

* ``host``   — the weak host alone (Esper's loop, no controller);
* ``esper``  — the host grown by the heuristic Tamiyo;
* ``random`` — the host grown by a policy that germinates random slots with random kernels at random
  times and never judges a seed;
* ``static`` — the architecture Esper ended with (host + the same fossilized kernels), built up front
  and trained from scratch: same parameter count, no growth.

It prints mean ± 95% CI per arm and two-sided p-values of Esper against each other arm — Welch's
t-test, and a paired t-test (the arms of one seed share its split and host initialisation) — and
writes ``results.json`` and ``proof.png`` into ``runs/proof/``. Runs go through a process pool.

``--kernels compiled`` runs every arm on compiled artifacts from the standalone platform (as ``make demo``
does; the kernels are shared with it under ``runs/platform/``): the pool's workers fetch them from the
platform's Urza, and the static arm builds its model from the same compiled, trainable kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper.config import EsperConfig
from esper.tolaria import progress_bar_wanted
from esper_contracts import KernelStatus

from .demo import demo_config, run_experiment, task_spec

TASKS = ("digits", "spirals")
ARMS = ("host", "esper", "random", "static")
POLICY = {"host": "none", "esper": "heuristic", "random": "random", "static": "none"}


# ----------------------------------------------------------------------------------------- statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t, by bisection on the two-sided tail."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf_two_sided(mid, df) / 2.0 < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (t distribution)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, t_quantile(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's two-sample t-test: (t statistic, two-sided p-value)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0.0:
        return (0.0, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, t_sf_two_sided(t, df)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Paired t-test on per-seed differences ``a[i] - b[i]``: (t statistic, two-sided p-value).

    The arms share each seed's data split and host initialisation, so pairing removes that variance.
    """
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return math.nan, math.nan
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(len(diffs)))
    return t, t_sf_two_sided(t, len(diffs) - 1)


# ----------------------------------------------------------------------------------------- one run


def proof_config(task: str, quick: bool) -> EsperConfig:
    """The demo configuration of ``task``; ``quick`` shrinks it to a smoke run (few epochs, early growth)."""
    config = demo_config(task)
    if not quick:
        return config
    return config.model_copy(update={
        "tolaria": config.tolaria.model_copy(update={"epochs": 10}),
        "kasmina": config.kasmina.model_copy(update={"alpha_ramp_epochs": 0.5, "stabilization_epochs": 0.1,
                                                     "evaluation_epochs": 0.1, "fine_tuning_epochs": 0.25}),
        "tamiyo": config.tamiyo.model_copy(update={"warmup_epochs": 1, "plateau_patience_epochs": 1,
                                                   "plateau_min_delta": 10.0, "last_germination_epoch": None,
                                                   "fine_tuning_epochs": 2, "random_germination_probability": 0.5,
                                                   "min_improvement": -1.0, "cull_regression_tolerance": 1.0}),
    })


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and test one (task, arm, seed); runs in a worker process."""
    torch.set_num_threads(1)  # two workers on two cores; more threads only fight
    task, arm, seed = job["task"], job["arm"], job["seed"]
    config = proof_config(task, job["quick"])
    kernels = None
    if job.get("urza_url"):  # compiled kernels from the platform's Urza, validated ones only
        from esper_kernels import UrzaKernelSource

        kernels = UrzaKernelSource(job["urza_url"], cache_mb=config.kasmina.kernel_cache_mb)
        config = config.model_copy(update={"tamiyo": config.tamiyo.model_copy(
            update={"kernel_status": KernelStatus.VALIDATED})})
    try:
        result = run_experiment(
            task, config, policy=POLICY[arm], seed=seed,
            fossilized=[tuple(f) for f in job["fossilized"]] if arm == "static" else None,  # type: ignore[misc]
            run_dir=Path(job["out"]) / "runs", run_id=f"{task}-{arm}-{seed}", quiet=True, kernels=kernels,
        )
    finally:
        if kernels is not None:
            kernels.close()
    lineage = result.lineage.germinations if result.lineage is not None else []
    return {
        "task": task, "arm": arm, "seed": seed, "test_accuracy": result.test_accuracy,
        "final_val_accuracy": result.final_val_accuracy, "parameters": result.parameters,
        "seconds": round(result.seconds, 2), "outcomes": result.outcomes,
        "epochs": len(result.history.epochs) if result.history is not None else 0,
        "unfinished": result.outcomes.get("UNFINISHED", 0),  # in the tested model, not in the static twin
        "fossilized": [[g.layer_id, g.seed_index, g.kernel_artifact_id] for g in lineage
                       if g.outcome == "FOSSILIZED" and g.kernel_artifact_id],
    }


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Workers forked from a clean fork server that has already imported torch, torch._dynamo and Esper.

    Plain ``fork`` of a process that has run torch (OpenMP pools, Kasmina's loader threads) can deadlock
    the children; ``spawn`` would make every worker import torch (and torch._dynamo, which the first
    optimizer pulls in) from scratch. A preloaded fork server gets both safety and speed.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo", "esper_recipes.demo"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def run_all(tasks: Sequence[str], seeds: int, quick: bool, out: Path, workers: int,
            console: Console, urza_url: str | None = None) -> list[dict[str, Any]]:
    """Every arm of every task and seed; the static arm waits for the Esper run whose shape it copies.

    ``urza_url``: run on the compiled kernels of that Urza (the standalone platform's) instead of eager ones.
    """
    common = {"quick": quick, "out": str(out), "fossilized": [], "urza_url": urza_url}
    growing = [{"task": t, "arm": a, "seed": s, **common} for t in tasks for s in range(seeds)
               for a in ("esper", "host", "random")]
    results: list[dict[str, Any]] = []
    columns = (TextColumn("[bold]proof"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress_bar_wanted()) as progress, \
            contextlib.ExitStack() as stack:
        # One worker runs in this process (no start-up cost: used by the smoke test); more use a pool.
        run_many = map if workers == 1 else stack.enter_context(_worker_pool(workers)).map
        bar = progress.add_task("", total=len(growing) + len(tasks) * seeds)
        statics = []
        for result in run_many(run_one, growing):
            results.append(result)
            progress.update(bar, advance=1, description=f"{result['task']} {result['arm']} seed {result['seed']}")
            if result["arm"] == "esper":
                statics.append({**common, "task": result["task"], "arm": "static", "seed": result["seed"],
                                "fossilized": result["fossilized"]})
        for result in run_many(run_one, statics):
            results.append(result)
            progress.update(bar, advance=1, description=f"{result['task']} static seed {result['seed']}")
    if not progress_bar_wanted():
        console.print(f"{len(results)} runs done")
    return results


# ----------------------------------------------------------------------------------------- summary


def summarise(results: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per task and arm: accuracies, mean ± CI, parameters; p-values of Esper against every other arm."""
    summary: dict[str, Any] = {}
    for task in tasks:
        arms: dict[str, Any] = {}
        for arm in ARMS:
            runs = sorted((r for r in results if r["task"] == task and r["arm"] == arm), key=lambda r: r["seed"])
            accs = [r["test_accuracy"] for r in runs]
            if not accs:
                continue
            mean, ci = mean_ci95(accs)
            arms[arm] = {"test_accuracy": accs, "mean": mean, "ci95": ci,
                         "parameters_mean": statistics.fmean(r["parameters"] for r in runs),
                         "fossilized_mean": statistics.fmean(r["outcomes"].get("FOSSILIZED", 0) for r in runs),
                         "unfinished_mean": statistics.fmean(r["outcomes"].get("UNFINISHED", 0) for r in runs)}
        esper = arms.get("esper", {}).get("test_accuracy", [])
        for arm, stats in arms.items():
            if arm != "esper":
                stats["esper_minus_this"] = statistics.fmean(esper) - stats["mean"] if esper else math.nan
                stats["welch_t"], stats["p_value_vs_esper"] = welch(esper, stats["test_accuracy"])
                stats["paired_t"], stats["paired_p_value_vs_esper"] = paired(esper, stats["test_accuracy"])
                stats["esper_wins"] = sum(e > o for e, o in zip(esper, stats["test_accuracy"], strict=True))
                stats["ties"] = sum(e == o for e, o in zip(esper, stats["test_accuracy"], strict=True))
        summary[task] = arms
    return summary


def print_table(summary: dict[str, Any], console: Console, seeds: int) -> None:
    """The result table: one row per task and arm."""
    table = Table(title=f"Esper proof: test accuracy over {seeds} seeds (mean ± 95% CI), Esper against each arm")
    columns = ("task", "arm", "test accuracy", "Esper − arm", "p Welch", "p paired", "Esper wins/ties", "params",
               "fossilized")
    for column in columns:
        table.add_column(column, justify="left" if column in ("task", "arm") else "right")
    for task, arms in summary.items():
        for arm, s in arms.items():
            ci = "n/a" if math.isnan(s["ci95"]) else f"{s['ci95']:.4f}"
            diff = "" if arm == "esper" else f"{s['esper_minus_this']:+.4f}"
            p_welch, p_paired = (_p(s.get(k)) for k in ("p_value_vs_esper", "paired_p_value_vs_esper"))
            wins = "" if arm == "esper" else f"{s['esper_wins']}/{s['ties']} of {len(s['test_accuracy'])}"
            grown = f"{s['fossilized_mean']:.1f}" if arm in ("esper", "random") else ""
            if grown and s.get("unfinished_mean"):
                grown += f" (+{s['unfinished_mean']:.1f} unfinished)"
            table.add_row(task, arm, f"{s['mean']:.4f} ± {ci}", diff, p_welch, p_paired, wins,
                          f"{s['parameters_mean']:.0f}", grown)
    console.print(table)


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def plot(summary: dict[str, Any], path: Path) -> None:
    """One panel per task: mean ± 95% CI per arm, every seed as a dot."""
    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4.2), squeeze=False)
    colours = {"host": "#7f7f7f", "esper": "#2166ac", "random": "#fdae61", "static": "#1a9641"}
    for ax, (task, arms) in zip(axes[0], summary.items(), strict=True):
        for x, (arm, s) in enumerate(arms.items()):
            ci = 0.0 if math.isnan(s["ci95"]) else s["ci95"]
            ax.bar(x, s["mean"], yerr=ci, color=colours[arm], alpha=0.75, capsize=6)
            ax.plot([x] * len(s["test_accuracy"]), s["test_accuracy"], "o", color="black", ms=3.5, alpha=0.7)
        points = [a for s in arms.values() for a in s["test_accuracy"]]
        ax.set_ylim(max(0.0, min(points) - 0.03), min(1.0, max(points) + 0.015))
        ax.set_xticks(range(len(arms)), list(arms))
        ax.set_title(f"{task}: test accuracy (bar: mean, whiskers: 95% CI, dots: seeds)", loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.proof", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per task and arm (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few epochs, early growth")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"built-in tasks {list(TASKS)} (default: both) "
                        "or TaskSpec import paths")
    parser.add_argument("--task", action="append", default=None, dest="task_paths", metavar="TASK",
                        help="a task to prove on (repeatable): a built-in name or a researcher's TaskSpec by import "
                        "path 'package.module:SPEC' (data, host and run config)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/proof"))
    parser.add_argument("--kernels", choices=["eager", "compiled"], default="eager",
                        help="eager: interpreted blueprints (default); compiled: the standalone platform's artifacts")
    parser.add_argument("--pipeline", choices=["standard", "fast"], default="standard",
                        help="with --kernels compiled: AOTInductor (standard) or torch.export (fast)")
    parser.add_argument("--platform-dir", type=Path, default=Path("runs/platform"),
                        help="where the standalone platform keeps its kernels (shared with make demo)")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if progress_bar_wanted() else 120)  # logs: no 80-column wrap
    args.tasks = (args.tasks or []) + (args.task_paths or []) or list(TASKS)
    try:
        for task in args.tasks:
            task_spec(task)
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        console.print(f"[red]proof stopped:[/red] {exc}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    console.print(f"proof: {len(args.tasks)} task(s) × {len(ARMS)} arms × {args.seeds} seeds"
                  f"{' (quick)' if args.quick else ''}, {args.workers} workers, {args.kernels} kernels")
    with contextlib.ExitStack() as stack:
        urza_url = None
        if args.kernels == "compiled":
            from esper.standalone import LocalPlatform

            from .demo import prepare_kernels, seed_interfaces

            platform = stack.enter_context(LocalPlatform(args.platform_dir, pipelines=[args.pipeline]))
            interfaces = [i for task in args.tasks for i in seed_interfaces(task, proof_config(task, args.quick))]
            ready = prepare_kernels(platform, interfaces, console)
            if ready.ready == 0:
                console.print(f"[red]proof stopped:[/red] no kernel passed compilation and validation: {ready.failed}")
                return 2
            urza_url = platform.urza_url
        results = run_all(args.tasks, args.seeds, args.quick, args.out, args.workers, console, urza_url)
    summary = summarise(results, args.tasks)
    print_table(summary, console, args.seeds)
    plot(summary, args.out / "proof.png")
    document = {"seeds": args.seeds, "quick": args.quick, "kernels": args.kernels,
                "pipeline": args.pipeline if args.kernels == "compiled" else None,
                "seconds": round(time.perf_counter() - start, 1),
                "summary": summary, "runs": results}
    text = json.dumps(document, indent=2, default=lambda v: None)
    (args.out / "results.json").write_text(text.replace("NaN", "null") + "\n")
    console.print(f"wrote {args.out / 'results.json'} and {args.out / 'proof.png'} "
                  f"in {document['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
