"""``python -m esper_recipes.proof_scaffold``: do scaffolds carry a network through a crisis, and does the host keep
what they taught it after they leave?

The task is scikit-learn's bundled digits. A small MLP host is wrapped by Kasmina (a seed slot after each hidden
layer) and trained with two optimizers (host and seeds, as Tolaria does). At a fixed epoch a **crisis** begins: the
host's learning rate jumps ``--lr-spike`` × for ``--crisis-epochs`` epochs. Tolaria's rollback rule applies: an
epoch whose training loss exceeds 2 × the mean of the last three accepted epochs is rolled back (model and
optimizers restored, the epoch run again, at most twice; then it is accepted as it is).

Two arms per seed, same split, same initialisation, same batches:

* ``without``: no scaffolds;
* ``with``: every region's :class:`~esper_policy.stability.StabilityTracker` (rollback rate, anomaly rate, loss
  jitter, persistent spikes — what Narset's workers run) watches the windows; a region bad for
  ``--bad-windows`` windows files a :class:`~esper_contracts.ScaffoldRequest`; the
  :class:`~esper_policy.scaffolds.ScaffoldSteward` funds it from the emergency pool, protects the region and its
  ring, and germinates a ``scaffold_mlp`` kernel; the
  :class:`~esper.kasmina.scaffold.ScaffoldSupervisor` takes it through training, grafting, the stability
  gates, weaning (distillation + L1 anchor) and its exit as a no-op.

It writes ``runs/proof-scaffold/results.json`` and ``scaffold.png`` (loss through the crisis, the scaffold's
alpha, the parameter count) and prints, last:

* ``scaffold_rollbacks_ratio:`` mean rollbacks with scaffolds / without (goal < 1);
* ``scaffold_retained_gain:`` the test-accuracy gain over the no-scaffold arm left at the end (after every
  scaffold has left), as a fraction of the gain at the scaffolds' peak (goal > 0.5).

Evaluation seeds are 0..N-1; the settings were chosen on seed 1000 (``--seed-base 1000``), never on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from esper.data import Batches
from esper.kasmina import (
    KasminaConfig,
    StateField,
    kasmina_layers,
    reconstruction_loss,
    seed_parameter_count,
    seed_parameters,
    wait_for_loads,
    wrap,
)
from esper.kasmina.scaffold import ScaffoldGates, ScaffoldSupervisor
from esper_contracts import KernelQuery, ScaffoldRequest, SeedStage, family
from esper_kernels import LocalKernelLibrary
from esper_policy.scaffolds import ScaffoldSteward
from esper_policy.stability import StabilityObservation, StabilityTracker

from .tasks import digits

SPIKE_FACTOR = 2.0  # Tolaria's max_loss_spike_ratio
RETRIES = 2  # reruns of a spiking epoch before it is accepted


@dataclass(frozen=True)
class Settings:
    """One run's knobs."""

    epochs: int = 30
    crisis_epoch: int = 8
    crisis_epochs: int = 6
    lr: float = 0.05
    lr_spike: float = 6.0
    seed_lr: float = 3e-3
    batch_size: int = 64
    bad_windows: int = 2
    ttl_epochs: int = 14


def host_model(features: int, classes: int, seed: int) -> nn.Sequential:
    """64 → 32 → 32 → 10 MLP."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, classes))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def run(seed: int, scaffolds: bool, s: Settings) -> dict[str, Any]:
    """One arm of one seed; returns its per-epoch curves and counts."""
    task = digits(seed)
    lib = LocalKernelLibrary()
    config = KasminaConfig(target_modules=["0", "2"], alpha_ramp_steps=17, training_min_steps=10,
                           training_max_steps=17, stabilization_steps=17, telemetry_every=4)
    model = wrap(host_model(task.num_features, task.num_classes, seed), config, kernels=lib)
    host_params = sum(p.numel() for p in model.parameters())
    regions = list(kasmina_layers(model))
    host_opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".seeds." not in n], lr=s.lr, momentum=0.9)
    seed_opt: torch.optim.Optimizer | None = None
    seed_ids: list[int] = []
    batches = Batches(task.train, s.batch_size, seed=seed)
    trackers = {r: StabilityTracker() for r in regions}
    steward = ScaffoldSteward(emergency_pool=1.0, ring_radius=1)
    supervisor = ScaffoldSupervisor(model, ScaffoldGates(green_windows=2, wean_epochs=4))

    def find_kernel(layer_id: str, index: int, blueprint: str) -> str | None:
        iface = kasmina_layers(model)[layer_id].chunks.interface(index)
        lib.register(family(blueprint).blueprint(iface, origin="proof", ttl_epochs=s.ttl_epochs))
        found = lib.query(KernelQuery(interface=iface, tags_required=[blueprint], limit=1)).artifacts
        return found[0].artifact_id if found else None

    recent: list[float] = []
    curve: list[dict[str, Any]] = []
    rollbacks = 0
    requests = 0
    for epoch in range(1, s.epochs + 1):
        in_crisis = s.crisis_epoch <= epoch < s.crisis_epoch + s.crisis_epochs
        for group in host_opt.param_groups:
            group["lr"] = s.lr * (s.lr_spike if in_crisis else 1.0)
        params = seed_parameters(model)
        if [id(p) for p in params] != seed_ids:  # a seed appeared, changed stage or left: a fresh seed optimizer
            seed_ids = [id(p) for p in params]
            seed_opt = torch.optim.Adam(params, lr=s.seed_lr) if params else None
        checkpoint = (copy.deepcopy(model.state_dict()), copy.deepcopy(host_opt.state_dict()),
                      copy.deepcopy(seed_opt.state_dict()) if seed_opt is not None else None)
        rolled = False
        for attempt in range(RETRIES + 1):
            train_loss = _train_epoch(model, batches, host_opt, seed_opt, supervisor)
            spiking = bool(recent) and train_loss > SPIKE_FACTOR * statistics.fmean(recent[-3:])
            if not spiking or attempt == RETRIES:
                break
            rollbacks += 1
            rolled = True
            model.load_state_dict(checkpoint[0])
            host_opt.load_state_dict(checkpoint[1])
            if seed_opt is not None and checkpoint[2] is not None:
                seed_opt.load_state_dict(checkpoint[2])
        recent.append(train_loss)
        val_loss, _ = _accuracy(model, task.val.x, task.val.y)
        _, test_acc = _accuracy(model, task.test.x, task.test.y)
        wait_for_loads(model)
        if scaffolds:
            supervisor.boundary(epoch, val_loss)  # the steward reads the sunsets from the seeds' stages
            stages = {f"{r}[{i}]": layer.stage(i) for r, layer in kasmina_layers(model).items()
                      for i in range(layer.seed_state.n)}
            steward.observe(epoch, stages, clean_checkpoint=not rolled)
            for r in regions:
                layer = kasmina_layers(model)[r]
                grad = max(layer.seed_state.get(StateField.GRAD_NORM, i) for i in range(layer.seed_state.n))
                signals = trackers[r].observe(StabilityObservation(loss=val_loss, rolled_back=rolled,
                                                                   gradient_norm=grad))
                if signals.bad_windows >= s.bad_windows and not steward.placed:
                    dormant = {x: [i for i in range(kasmina_layers(model)[x].seed_state.n)
                                   if kasmina_layers(model)[x].stage(i) is SeedStage.DORMANT] for x in regions}
                    verdict = steward.consider(ScaffoldRequest(
                        region_id=r, blueprint_id="scaffold_mlp", reason=f"stability {signals.score:.2f}",
                        ttl_epochs=s.ttl_epochs, emergency=True, ask=1.0), epoch, regions, dormant, find_kernel)
                    requests += 1
                    if verdict.command is not None:
                        supervisor.apply([verdict.command], epoch)
        alpha = max((kasmina_layers(model)[r].alpha(i) for r in regions
                     for i in range(kasmina_layers(model)[r].seed_state.n)), default=0.0)
        curve.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "test_accuracy": test_acc,
                      "alpha": alpha, "parameters": sum(p.numel() for p in model.parameters()),
                      "scaffold_live": bool(supervisor.scaffolds), "rolled_back": rolled})
    return {"seed": seed, "arm": "with" if scaffolds else "without", "rollbacks": rollbacks, "requests": requests,
            "sunsets": [{"seed_id": x.seed_id, "epoch": x.epoch, "outcome": x.outcome} for x in supervisor.sunsets],
            "host_parameters": host_params, "final_parameters": curve[-1]["parameters"],
            "final_seed_parameters": seed_parameter_count(model), "curve": curve}


def _train_epoch(model: nn.Module, batches: Batches, host_opt: torch.optim.Optimizer,
                 seed_opt: torch.optim.Optimizer | None, supervisor: ScaffoldSupervisor) -> float:
    model.train()
    total, n = 0.0, 0
    for x, y in batches:
        task_loss = F.cross_entropy(model(x), y)
        loss = task_loss
        for extra in (reconstruction_loss(model), supervisor.loss()):
            if extra is not None:
                loss = loss + extra
        host_opt.zero_grad(set_to_none=True)
        if seed_opt is not None:
            seed_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        host_opt.step()
        if seed_opt is not None:
            seed_opt.step()
        total += float(task_loss.detach()) * len(y)
        n += len(y)
    return total / n if n else float("nan")


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean curves per arm, the rollback ratio and the retained gain."""
    def mean_curve(arm: str, key: str) -> list[float]:
        curves = [r["curve"] for r in runs if r["arm"] == arm]
        return [statistics.fmean(c[e][key] for c in curves) for e in range(len(curves[0]))]

    with_rb = statistics.fmean(r["rollbacks"] for r in runs if r["arm"] == "with")
    without_rb = statistics.fmean(r["rollbacks"] for r in runs if r["arm"] == "without")
    gain = [a - b for a, b in zip(mean_curve("with", "test_accuracy"), mean_curve("without", "test_accuracy"),
                                  strict=True)]
    live = [statistics.fmean(float(c["scaffold_live"]) for c in (r["curve"][e] for r in runs if r["arm"] == "with"))
            for e in range(len(gain))]
    during = [g for g, lv in zip(gain, live, strict=True) if lv > 0]
    peak = max(during, default=0.0)
    final = statistics.fmean(gain[-3:])  # the last three epochs, after every scaffold has left
    return {
        "rollbacks_with": with_rb, "rollbacks_without": without_rb,
        "rollbacks_ratio": with_rb / without_rb if without_rb else float("nan"),
        "peak_gain": peak, "final_gain": final, "retained_gain": final / peak if peak > 0 else float("nan"),
        "gain_curve": gain, "scaffold_live_share": live,
        "all_left": all(r["final_seed_parameters"] == 0 and r["final_parameters"] == r["host_parameters"]
                        for r in runs),
        "curves": {arm: {k: mean_curve(arm, k) for k in ("train_loss", "val_loss", "test_accuracy", "alpha",
                                                         "parameters")} for arm in ("with", "without")},
    }


def plot(summary: dict[str, Any], s: Settings, path: Path) -> None:
    """Loss through the crisis, the scaffold's alpha, the parameter count (means over seeds)."""
    curves = summary["curves"]
    epochs = list(range(1, len(curves["with"]["train_loss"]) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm, style in (("without", "--"), ("with", "-")):
        axes[0].plot(epochs, curves[arm]["train_loss"], style, label=f"{arm} scaffolds")
        axes[2].plot(epochs, curves[arm]["parameters"], style, label=f"{arm} scaffolds")
    axes[1].plot(epochs, curves["with"]["alpha"], label="scaffold alpha (mean)")
    for ax in axes:
        ax.axvspan(s.crisis_epoch, s.crisis_epoch + s.crisis_epochs, color="red", alpha=0.1)
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("alpha")
    axes[2].set_ylabel("parameters")
    fig.suptitle("Scaffolds through a learning-rate spike (digits; shaded: the crisis)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both arms over the seeds, write results and the plot, print the figures (last lines)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-base", type=int, default=0, help="first seed (evaluation: 0)")
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--lr-spike", type=float, default=Settings.lr_spike)
    parser.add_argument("--crisis-epochs", type=int, default=Settings.crisis_epochs)
    parser.add_argument("--bad-windows", type=int, default=Settings.bad_windows)
    parser.add_argument("--out", type=Path, default=Path("runs/proof-scaffold"))
    args = parser.parse_args(argv)
    s = Settings(epochs=args.epochs, lr_spike=args.lr_spike, crisis_epochs=args.crisis_epochs,
                 bad_windows=args.bad_windows)
    torch.set_num_threads(1)
    runs = []
    for seed in range(args.seed_base, args.seed_base + args.seeds):
        for scaffolds in (False, True):
            r = run(seed, scaffolds, s)
            runs.append(r)
            print(f"seed {seed} {r['arm']:>7}: rollbacks {r['rollbacks']}, final test accuracy "
                  f"{r['curve'][-1]['test_accuracy']:.4f}, sunsets {[x['outcome'] for x in r['sunsets']]}, "
                  f"parameters {r['final_parameters']} (host {r['host_parameters']})", flush=True)
    summary = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"settings": s.__dict__, "summary": summary, "runs": runs},
                                                      indent=1))
    plot(summary, s, args.out / "scaffold.png")
    print(f"rollbacks per run: with {summary['rollbacks_with']:.2f}, without {summary['rollbacks_without']:.2f}")
    print(f"test-accuracy gain over the no-scaffold arm: peak while scaffolded {summary['peak_gain']:+.4f}, "
          f"after sunset {summary['final_gain']:+.4f}; every scaffold left: {summary['all_left']}")
    print(f"plot: {args.out / 'scaffold.png'}")
    print(f"scaffold_rollbacks_ratio: {summary['rollbacks_ratio']:.4f}")
    print(f"scaffold_retained_gain: {summary['retained_gain']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
