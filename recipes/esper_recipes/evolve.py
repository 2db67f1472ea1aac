"""``python -m esper_recipes.evolve`` (``make evolve``): Karn's innovation loop for a few generations, measured.

The standalone platform runs in this process with Karn beside Urza, Tezzeret and Urabrask, on one memory bus.
Generation 0 is the built-in library for the seed slots of the spirals host. Then, each generation:

1. Karn runs a proposal round (``POST /api/v1/rounds``): it mutates validated parents, chosen by their record,
   with operators its policy prefers for that kind of parent, and submits the children to Urza with their
   lineage; they carry the generation's tag;
2. Tezzeret compiles every child (the ``fast`` pipeline) and Urabrask gatekeeps, profiles and tags it;
3. a few short training episodes run (the same seeds every generation), with Tamiyo choosing among this
   generation's VALIDATED kernels only, and Tolaria training the host with whatever she grafts;
4. every field report of those episodes is published on ``innovation.field_reports``, where Karn (and Urza)
   consume them: the outcomes the next round's policy and parent choice learn from.

Everything lands in ``runs/evolve/``: ``evolve.png`` (the lineage tree and the success rate per generation),
``evolve.json`` (every child and episode), the platform's store. The last three printed lines are the
figures the issue asks for (see :mod:`esper_recipes.evolve_report`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console

from esper.config import EsperConfig, load_config
from esper.standalone import LocalPlatform
from esper.tolaria import progress_bar_wanted
from esper_contracts import FieldReport, KernelStatus, TensorInterface
from esper_oona import Bus, connect

from .demo import CONFIGS, run_experiment, seed_interfaces
from .evolve_report import Child, Episode, Generation, as_json, draw, summary_lines
from .tasks import TaskData, load_task

TASK = "spirals"
BUILTIN_TAG = "builtin"


def episode_config(config: EsperConfig, tag: str) -> EsperConfig:
    """``config`` with Tamiyo restricted to VALIDATED kernels carrying ``tag`` (one generation's designs)."""
    tamiyo = config.tamiyo.model_copy(update={"kernel_tags_required": [tag], "kernel_status": KernelStatus.VALIDATED})
    return config.model_copy(update={"tamiyo": tamiyo})


def run_episodes(platform: LocalPlatform, config: EsperConfig, tag: str, data: dict[int, TaskData], out: Path,
                 console: Console, label: str) -> tuple[list[Episode], list[FieldReport]]:
    """One training run per seed with Tamiyo choosing among ``tag``'s kernels; returns episodes and field reports."""
    episodes, reports = [], []
    for seed, task_data in data.items():
        result = run_experiment(TASK, episode_config(config, tag), seed=seed, run_dir=out / "episodes",
                                run_id=f"{label}-seed{seed}", quiet=True, data=task_data,
                                kernels=platform.kernel_source(config.kasmina.kernel_cache_mb))
        assert result.history is not None
        found = [FieldReport.model_validate(r) for r in result.history.field_reports]
        reports += found
        episodes.append(Episode(seed, result.test_accuracy, [r.outcome.value for r in found]))
        console.print(f"  {label} seed {seed}: test accuracy {result.test_accuracy:.3f}, "
                      f"{', '.join(r.outcome.value.lower() for r in found) or 'nothing grafted'}")
    return episodes, reports


def tell_karn(bus: Bus, karn_url: str, reports: list[FieldReport], expected_total: int) -> None:
    """Publish the field reports (as Tamiyo does) and wait until Karn has stored all of them."""
    for report in reports:
        bus.publish("innovation.field_reports", report, key=report.blueprint_id)
    bus.flush()
    deadline = time.monotonic() + 60
    while httpx.get(f"{karn_url}/api/v1/status", timeout=30).json()["field_reports"] < expected_total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Karn did not store {expected_total} field reports within 60 s")
        time.sleep(0.1)


def propose(platform: LocalPlatform, iface: TensorInterface, count: int, tag: str,
            generation: int) -> tuple[list[Child], float]:
    """One Karn round for ``iface``; waits until Urza judged every child. Returns them and the diversity before."""
    response = httpx.post(f"{platform.karn_url}/api/v1/rounds", timeout=120, json={
        "count": count, "tags": [tag], "layout": iface.layout, "features": iface.features})
    response.raise_for_status()
    view = response.json()
    client = platform.kernel_source().client
    irs = [client.blueprint(c["blueprint_id"]).ir for c in view["submitted"]]
    platform.wait_ready(platform.submit(irs), timeout_s=900)  # a repeat submission queues nothing: it tracks them
    children = []
    for c in view["submitted"]:
        statuses = {a.status for a in client.blueprint(c["blueprint_id"]).artifacts}
        children.append(Child(c["blueprint_id"], c["name"], generation, c["parent_id"], c["operator"],
                              validated=KernelStatus.VALIDATED in statuses))
    return children, float(view["diversity"])


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.evolve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=6, help="Karn generations after the built-in library")
    parser.add_argument("--children", type=int, default=4, help="children Karn proposes per generation")
    parser.add_argument("--episodes", type=int, default=4, help="training episodes per generation (seeds 0..n-1)")
    parser.add_argument("--epochs", type=int, default=None, help="override tolaria.epochs of the evolve config")
    parser.add_argument("--seed", type=int, default=0, help="seed of Karn's random draws")
    parser.add_argument("--out", type=Path, default=Path("runs/evolve"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: threads cost more than they give
    console = Console(highlight=False, width=None if progress_bar_wanted() else 120)
    config = load_config(CONFIGS / "evolve-spirals.yaml")
    if args.epochs is not None:
        tolaria = config.tolaria.model_copy(update={"epochs": args.epochs})
        tamiyo = config.tamiyo.model_copy(update={"last_germination_epoch": max(1, args.epochs - 14)})
        config = config.model_copy(update={"tolaria": tolaria, "tamiyo": tamiyo})
    shutil.rmtree(args.out / "platform", ignore_errors=True)  # a fresh library and a Karn that knows nothing yet
    args.out.mkdir(parents=True, exist_ok=True)
    data = {seed: load_task(TASK, seed) for seed in range(args.episodes)}
    karn = {"auto_propose": False, "seed": args.seed, "max_pipeline_backlog": 4 * args.children,
            "max_unresolved_children": 2 * args.children}
    start = time.perf_counter()
    generations: list[Generation] = []
    console.print(f"starting the standalone platform with Karn in {args.out / 'platform'}")
    with LocalPlatform(args.out / "platform", pipelines=["fast"], profile_budget_s=1.0, karn=karn) as platform:
        bus = connect(platform.bus_url, producer_name="tamiyo")
        client = platform.kernel_source().client
        interfaces = seed_interfaces(TASK, config)  # both hidden layers of the host: one BD-8 chunk each
        keys = platform.submit_builtins(interfaces)
        platform.wait_ready(keys)
        builtins = {k.split("/")[0] for k in keys}
        library = [Child(b, client.blueprint(b).ir.name, 0, validated=True) for b in sorted(builtins)]
        console.rule("generation 0: the built-in library")
        episodes, reports = run_episodes(platform, config, BUILTIN_TAG, data, args.out, console, "g0")
        everything = list(reports)
        tell_karn(bus, platform.karn_url, reports, len(everything))
        generations.append(Generation(0, library, episodes, float("nan")))
        everyone = {c.blueprint_id: c for c in library}
        for g in range(1, args.generations + 1):
            console.rule(f"generation {g}: Karn proposes {args.children} children")
            tag = f"evolve_g{g}"
            children, diversity = propose(platform, interfaces[0], args.children, tag, g)
            for c in children:
                parent = everyone[c.parent_id].name if c.parent_id in everyone else c.parent_id
                console.print(f"  {c.name}: {c.operator} of {parent} -> "
                              f"{'VALIDATED' if c.validated else 'not validated'}")
            everyone |= {c.blueprint_id: c for c in children}
            episodes, reports = (run_episodes(platform, config, tag, data, args.out, console, f"g{g}")
                                 if any(c.validated for c in children) else ([], []))
            everything += reports
            tell_karn(bus, platform.karn_url, reports, len(everything))
            generations.append(Generation(g, children, episodes, diversity))
        for report in everything:  # each blueprint's outcomes, from every episode that chose it
            if report.blueprint_id in everyone:
                everyone[report.blueprint_id].outcomes.append(report.outcome.value)
        status = httpx.get(f"{platform.karn_url}/api/v1/status", timeout=30).json()
        policy = httpx.get(f"{platform.karn_url}/api/v1/policy", timeout=30).json()
        bus.close()
    return _finish(args, console, generations, status, policy, time.perf_counter() - start)


def _finish(args: argparse.Namespace, console: Console, generations: list[Generation], status: dict[str, Any],
            policy: list[dict[str, Any]], seconds: float) -> int:
    """Write evolve.json and evolve.png, print the per-generation table, end with the three figures."""
    lines = summary_lines(generations, float(status["diversity"]))
    doc = as_json(generations, {"seconds": seconds, "karn_status": status, "karn_policy": policy, "figures": lines})
    (args.out / "evolve.json").write_text(json.dumps(doc, indent=2, default=str))
    draw(generations, args.out / "evolve.png", title=f"Karn on {TASK}: generations 1-{len(generations) - 1} after "
                                                     f"the built-in library; {args.children} children and "
                                                     f"{args.episodes} training episodes per generation")
    console.rule("per generation")
    for g in generations:
        console.print(f"generation {g.index}: {len(g.children)} blueprints, "
                      f"{sum(c.validated for c in g.children)} validated, {g.fossilized}/{g.reports} chosen "
                      f"fossilized, mean test accuracy "
                      f"{sum(e.test_accuracy for e in g.episodes) / max(1, len(g.episodes)):.3f}")
    console.print(f"{args.out / 'evolve.png'}, {args.out / 'evolve.json'}  ({seconds:.0f} s)")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
