"""``python -m esper_recipes.demo``: watch Esper grow a deliberately weak network, on digits and on two spirals.

For each task a weak host is wrapped by Kasmina and trained by Tolaria under the heuristic Tamiyo;
when validation loss plateaus, seeds germinate in the sickest slots, graft, and are kept or culled.
The same host is also trained alone (same seed, same epochs) for comparison. Everything a run leaves
goes to ``runs/demo-<task>/``: the evolved model and its ``lineage.json``, metrics and events, and a
report (``report.png`` and a self-contained ``report.html``).

Kernels are real compiled artifacts: the demo runs the standalone platform in process
(:class:`esper.standalone.LocalPlatform`: Urza on SQLite + a blob folder, Tezzeret, Urabrask, one memory
bus). The built-in blueprints for every seed slot's shape are submitted to Urza, compiled with
AOTInductor, gatekept and profiled, and Tamiyo picks among the VALIDATED ones by tag query. Compiled
kernels are kept under ``runs/platform/``, so only the first run pays for compiling them.
``--kernels eager`` skips the platform and interprets the blueprints instead.

The run's settings come from ``recipes/configs/demo-<task>.yaml``; the host's shape is part of the demo.
``--task package.module:SPEC`` runs a researcher's own task instead: an :class:`esper.tasks.TaskSpec` naming the
data, the host and the run config.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from esper.config import EsperConfig, load_config
from esper.data import Batches
from esper.kasmina import ChunkLayout, GraftedModule, chunk_bounds, wrap
from esper.lineage import Lineage, save_model
from esper.standalone import LocalPlatform, PlatformError, prepare_kernels, slot_interfaces
from esper.tasks import TaskSpec, load_task_spec
from esper.tolaria import TolariaTrainer, TrainingHistory, evaluate, progress_bar_wanted
from esper_contracts import KernelStatus, TensorInterface
from esper_kernels import LocalKernelLibrary
from esper_policy import build_policy

from .tasks import TaskData, digits, two_spirals

#: The recipes' run configurations (``recipes/configs``).
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class NarrowMLP(nn.Module):
    """``in -> hidden.0 -> relu -> ... -> head``: a plain MLP, narrow enough to stall."""

    def __init__(self, in_features: int, widths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        dims = (in_features, *widths)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))  # (B, width)
        return self.head(x)  # (B, classes)


class TinyCNN(nn.Module):
    """An 8×8 image through one strided 3×3 convolution with a few channels, then a linear head."""

    def __init__(self, channels: int = 4, num_classes: int = 10, side: int = 8) -> None:
        super().__init__()
        self.side = side
        self.conv = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(channels * (side // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)  # (B, 64) -> (B, 1, 8, 8)
        x = torch.relu(self.conv(x))  # (B, C, 4, 4)
        return self.head(x.flatten(1))  # (B, classes)


def _tiny_cnn(data: TaskData) -> nn.Module:
    return TinyCNN(4, data.num_classes)


def _narrow_mlp(data: TaskData) -> nn.Module:
    return NarrowMLP(data.num_features, (8, 8), data.num_classes)


#: The demo's own tasks, each with its deliberately weak host and its run config.
BUILTIN_TASKS: dict[str, TaskSpec] = {
    "digits": TaskSpec("digits", digits, _tiny_cnn, CONFIGS / "demo-digits.yaml",
                       "1 conv layer (3x3, 4 channels, stride 2) + linear head"),
    "spirals": TaskSpec("spirals", two_spirals, _narrow_mlp, CONFIGS / "demo-spirals.yaml", "ReLU MLP 2-8-8-2"),
}


@functools.cache
def task_spec(task: str) -> TaskSpec:
    """A built-in task by name, or a researcher's :class:`TaskSpec` by import path ``package.module:SPEC``."""
    if task in BUILTIN_TASKS:
        return BUILTIN_TASKS[task]
    if ":" not in task:
        raise ValueError(f"unknown task {task!r}; built-in: {sorted(BUILTIN_TASKS)}, or a TaskSpec by import "
                         f"path 'package.module:SPEC'")
    return load_task_spec(task)


def load_task(task: str, seed: int = 0) -> TaskData:
    """The data of ``task`` (a built-in name or a TaskSpec's import path) split by ``seed``."""
    return task_spec(task).data(seed)


def build_host(task: str, data: TaskData) -> nn.Module:
    """A freshly initialised weak host for ``task`` (seed torch first for a reproducible init)."""
    host = task_spec(task).host(data)
    if not isinstance(host, nn.Module):
        raise TypeError(f"task {task}: the host factory returned {type(host).__name__}, not an nn.Module")
    return host


def static_twin(task: str, data: TaskData, fossilized: list[tuple[str, int, str]], chunks: int,
                kernels: Any = None) -> nn.Module:
    """The evolved architecture as a plain model, freshly initialised: the host with the same kernels built in.

    ``fossilized`` lists (layer id, seed index, kernel artifact id). Each named layer becomes a
    GraftedModule (host layer + seed modules on its chunks), exactly the shape ``unwrap`` leaves, but
    with every parameter trainable from the start. ``kernels``: the KernelSource the ids come from
    (default: a LocalKernelLibrary; kernel ids are content addresses, so any library rebuilds the same kernel).
    """
    model = build_host(task, data)
    library = kernels if kernels is not None else LocalKernelLibrary()
    by_layer: dict[str, dict[int, str]] = {}
    for layer_id, index, kernel in fossilized:
        by_layer.setdefault(layer_id, {})[index] = kernel
    for layer_id, seeds in by_layer.items():
        host = model.get_submodule(layer_id)
        if isinstance(host, nn.Conv2d):
            layout, features = "BCHW", host.out_channels
        elif isinstance(host, nn.Linear):
            layout, features = "BD", host.out_features
        else:
            raise TypeError(f"{layer_id}: static twins support Linear and Conv2d hosts, not {type(host).__name__}")
        layout_spec = ChunkLayout(layout, features, tuple(chunk_bounds(features, chunks)))
        for i in seeds:  # a local library builds kernels on demand; any other source ignores this
            library.register_interface(layout_spec.interface(i))
        grafted = GraftedModule(host, {i: library.load(k) for i, k in seeds.items()}, layout_spec)
        parent, _, name = layer_id.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, grafted)
    return model.requires_grad_(True)


def demo_config(task: str, path: Path | None = None) -> EsperConfig:
    """The run configuration of ``task`` (its TaskSpec's config, ``recipes/configs/demo-<task>.yaml`` for the
    built-ins) unless ``path`` is given."""
    return load_config(path or task_spec(task).config)


@dataclass
class ExperimentResult:
    """What one training run produced."""

    task: str
    policy: str
    seed: int
    test_accuracy: float
    test_loss: float
    final_val_accuracy: float
    parameters: int
    seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)
    history: TrainingHistory | None = None
    lineage: Lineage | None = None
    model: nn.Module | None = None


def run_experiment(
    task: str,
    config: EsperConfig,
    *,
    policy: str = "heuristic",
    seed: int = 0,
    fossilized: list[tuple[str, int, str]] | None = None,
    run_dir: Path | None = None,
    run_id: str | None = None,
    quiet: bool = False,
    data: TaskData | None = None,
    kernels: Any = None,
) -> ExperimentResult:
    """Train one host on one task under one policy ("heuristic", "random" or "none") and test it.

    With ``fossilized`` (possibly empty), the model is instead the static twin of an evolved one (see
    :func:`static_twin`), trained from scratch with no seed slots and no controller. ``kernels``: the
    KernelSource + KernelSelector seeds and Tamiyo use (default: a fresh LocalKernelLibrary, eager).
    """
    data = data or load_task(task, seed)
    torch.manual_seed(seed)
    library = kernels if kernels is not None else LocalKernelLibrary(cache_mb=config.kasmina.kernel_cache_mb)
    if fossilized is not None:  # a static model: nothing left to grow, so no seed slots at all
        model = static_twin(task, data, fossilized, config.kasmina.chunks_per_layer, kernels)
        policy = "none"
    else:
        model = wrap(build_host(task, data), config.kasmina, library)
    controller = build_policy(config.tamiyo.model_copy(update={"policy": policy, "seed": seed}), library)
    tolaria = config.tolaria.model_copy(update={
        "seed": seed,
        "run_dir": str(run_dir) if run_dir is not None else config.tolaria.run_dir,
        "run_id": run_id or f"{task}-{policy}-{seed}",
        **({"progress_bar": False, "log_lines": False} if quiet else {}),
    })
    trainer = TolariaTrainer(
        model, controller, tolaria,
        train_data=Batches(data.train, tolaria.batch_size, seed=seed),
        val_data=Batches(data.val, 1024, shuffle=False),
    )
    start = time.perf_counter()
    model, history = trainer.train()
    seconds = time.perf_counter() - start
    test_loss, test_acc = evaluate(model, Batches(data.test, 1024, shuffle=False))
    last = history.epochs[-1]
    return ExperimentResult(
        task=task, policy=policy, seed=seed, test_accuracy=test_acc, test_loss=test_loss,
        final_val_accuracy=float(last["val_accuracy"]), parameters=int(last["total_params"]), seconds=seconds,
        outcomes=trainer.lineage.summary(), history=history, lineage=trainer.lineage, model=model,
    )


class DemoError(RuntimeError):
    """The demo cannot run as asked; the message says why and what to try instead."""


def seed_interfaces(task: str, config: EsperConfig) -> list[TensorInterface]:
    """The chunk interface of every seed slot Kasmina puts into ``task``'s host under ``config``."""
    return slot_interfaces(wrap(build_host(task, load_task(task, 0)), config.kasmina, LocalKernelLibrary()))


def run_demo_task(task: str, out_root: Path, *, epochs: int | None, console: Console,
                  platform: LocalPlatform | None = None, compact_epochs: int = 0) -> dict[str, Any]:
    """Esper and the host alone on one task; writes model, lineage and report; returns the summary row.

    With ``platform``, seeds run compiled kernels from its Urza (prepared first); otherwise eager ones.
    With ``compact_epochs``, the grown model is then compacted for that many epochs (esper_recipes.compact).
    """
    from esper.report import write_report

    config = demo_config(task)
    spec = task_spec(task)
    if epochs is not None:
        config = config.model_copy(update={"tolaria": config.tolaria.model_copy(update={"epochs": epochs})})
    out = out_root / f"demo-{spec.name}"
    host_words = f" ({spec.description})" if spec.description else ""
    console.rule(f"[bold]{spec.name}: weak host{host_words} grown by Esper, heuristic Tamiyo")
    kernels = None
    if platform is not None:
        ready = prepare_kernels(platform, seed_interfaces(task, config), console)
        if ready.ready == 0:
            hint = ("AOTInductor compiles C++: it needs g++ (make infra-deps installs it); "
                    "`--pipeline fast` builds torch.export programs instead, `--kernels eager` needs no compiler")
            raise DemoError(f"{task}: no kernel passed compilation and validation ({'; '.join(ready.failed)}). {hint}")
        config = config.model_copy(update={"tamiyo": config.tamiyo.model_copy(
            update={"kernel_status": KernelStatus.VALIDATED})})
        kernels = platform.kernel_source(config.kasmina.kernel_cache_mb)
    esper_run = run_experiment(task, config, policy="heuristic", run_dir=out_root, run_id=f"demo-{spec.name}",
                               kernels=kernels)
    console.print(f"[dim]{task}: the same host alone, for comparison[/dim]")
    host_run = run_experiment(task, config, policy="none", run_dir=out / "baseline", run_id="host-only", quiet=True)
    assert esper_run.model is not None and esper_run.history is not None and host_run.history is not None
    summary = {
        "task": spec.name,
        "host_test_accuracy": host_run.test_accuracy,
        "esper_test_accuracy": esper_run.test_accuracy,
        "host_parameters": host_run.parameters,
        "esper_parameters": esper_run.parameters,
        "outcomes": esper_run.outcomes,
        "seconds": esper_run.seconds + host_run.seconds,
    }
    if compact_epochs:
        from .compact import compact_grown

        console.print(f"[dim]{task}: growth over; Elesh scores, Emrakul plans, Tolaria cuts "
                      f"({compact_epochs} epochs)[/dim]")
        grown = compact_grown(esper_run.model, load_task(task, 0), learning_rate=config.tolaria.learning_rate,
                              batch_size=config.tolaria.batch_size, seed=0, history=esper_run.history,
                              lineage=esper_run.lineage, epochs=compact_epochs)
        esper_run.model = grown.model
        summary |= {"compacted_parameters": grown.parameters_after, "compacted_test_accuracy": grown.test_accuracy,
                    "cuts": sum(1 for o in grown.outcomes if o.accepted and o.units_removed)}
    save_model(esper_run.model, out, extra={"task": spec.name, "host": spec.description, "summary": summary})
    write_report(out, task=spec.name, history=esper_run.history, baseline=host_run.history, summary=summary,
                 lineage=esper_run.lineage)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", help="digits, spirals, all (default), or a researcher's task by "
                        "import path 'package.module:SPEC' naming an esper.tasks.TaskSpec")
    parser.add_argument("--epochs", type=int, default=None, help="override tolaria.epochs of the demo configs")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent directory of runs/demo-<task>/")
    parser.add_argument("--kernels", choices=["compiled", "eager"], default="compiled",
                        help="compiled: Urza + Tezzeret + Urabrask in process (default); eager: interpreted IR")
    parser.add_argument("--pipeline", choices=["standard", "fast"], default="standard",
                        help="compile pipeline: standard = AOTInductor (native code), fast = torch.export program")
    parser.add_argument("--compact", type=int, default=0, metavar="EPOCHS",
                        help="after growth, compact for EPOCHS epochs (Elesh scores, Emrakul plans, Tolaria cuts)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: threads cost more than they give
    console = Console(highlight=False, width=None if progress_bar_wanted() else 120)  # logs: no 80-column wrap
    tasks = ["digits", "spirals"] if args.task == "all" else [args.task]
    try:
        for task in tasks:
            task_spec(task)
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        console.print(f"[red]demo stopped:[/red] {exc}")
        return 2
    if args.kernels == "compiled":
        console.print(f"starting the standalone platform (Urza, Tezzeret, Urabrask) in {args.out / 'platform'}")
        try:
            with LocalPlatform(args.out / "platform", pipelines=[args.pipeline]) as platform:
                rows = [run_demo_task(task, args.out, epochs=args.epochs, console=console, platform=platform,
                                      compact_epochs=args.compact) for task in tasks]
        except (DemoError, PlatformError) as exc:
            console.print(f"[red]demo stopped:[/red] {exc}")
            return 2
    else:
        rows = [run_demo_task(task, args.out, epochs=args.epochs, console=console, compact_epochs=args.compact)
                for task in tasks]

    table = Table(title="Esper demo: the weak host alone vs grown by Esper (held-out test split)")
    compacted = any("compacted_parameters" in row for row in rows)
    columns = ["task", "host alone", "Esper", "params host → Esper", "adaptations"]
    for column in columns + (["compacted (acc, params, cuts)"] if compacted else []):
        table.add_column(column)
    for row in rows:
        gain = row["esper_test_accuracy"] - row["host_test_accuracy"]
        outcomes = ", ".join(f"{k.lower()} {v}" for k, v in sorted(row["outcomes"].items())) or "none"
        cells = [row["task"], f"{row['host_test_accuracy']:.3f}", f"{row['esper_test_accuracy']:.3f} ({gain:+.3f})",
                 f"{row['host_parameters']} → {row['esper_parameters']}", outcomes]
        if compacted:
            cells.append(f"{row.get('compacted_test_accuracy', float('nan')):.3f}, {row['esper_parameters']} → "
                         f"{row.get('compacted_parameters', '?')}, {row.get('cuts', 0)}")
        table.add_row(*cells)
    console.print(table)
    for row in rows:
        out = args.out / f"demo-{row['task']}"
        console.print(f"{row['task']}: {out / 'report.html'}  (model.pt, lineage.json, report.png beside it)")
    return 0 if all(math.isfinite(r["esper_test_accuracy"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
