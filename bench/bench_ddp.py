"""Tolaria under DDP: what dormant seeds cost a distributed training step, and what the collective boundary costs.

Run: ``.venv/bin/python bench/bench_ddp.py`` (``make bench-ddp``): two ranks on this machine, gloo, CPU, one
torch thread each; about a minute on 2 cores. The script launches itself twice through esper's launcher;
rank 0 prints a table, then ``name: value`` lines, the last two:

* ``ddp_dormant_overhead_ratio``: Tolaria's DDP training step of the host with 16 DORMANT seeds / the same step
  of the bare host (same trainer, same collectives: the per-step vote and DDP's all-reduce; goal <= 1.03).
  Both variants train in one process on both ranks, a short epoch each per round with the order alternating
  round by round, and the ratio is the median of the per-round ratios, so a noisy neighbour slows both alike.
* ``ddp_boundary_ms``: median wall time of Tolaria's epoch boundary on two ranks (agreeing on kernel failures,
  Kasmina's boundary work, rank 0's heuristic decision broadcast to both, commands, new seeds shared, the
  lifecycle digest compared), over epochs in which the policy germinates and advances seeds.
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from torch import nn

from esper import Batches, HeuristicPolicy, KasminaConfig, LocalKernelLibrary, TamiyoConfig, TolariaConfig, wrap
from esper.data import Split
from esper.launch import launch_command
from esper.tolaria import TolariaTrainer
from esper.tolaria.distributed import FollowerPolicy, broadcast_object

WIDTH, BATCH, STEPS, ROUNDS = 512, 128, 10, 40


def host() -> nn.Sequential:
    """The benchmark host of bench_kasmina: a 4-layer MLP, 256 -> 512 -> 512 -> 512 -> 10."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10))


class TimedTrainer(TolariaTrainer):
    """A trainer that records how long each epoch boundary takes."""

    boundary_s: list[float]

    def _boundary(self, epoch: int, metrics: dict[str, float], elapsed: float) -> Any:
        start = time.perf_counter()
        signal = super()._boundary(epoch, metrics, elapsed)
        self.__dict__.setdefault("boundary_s", []).append(time.perf_counter() - start)
        return signal


def trainer(model: nn.Module, controller: Any, data: Any, run_dir: str, cls: type[TolariaTrainer] = TolariaTrainer,
            epochs: int = 1) -> TolariaTrainer:
    config = TolariaConfig(epochs=epochs, run_dir=run_dir, run_id="bench", progress_bar=False, log_lines=False)
    return cls(model, controller, config, train_data=data, val_data=data)


def bench_steps(run_dir: str) -> tuple[float, float, float]:
    """(ratio, bare-host seconds per step, dormant seconds per step)."""
    gen = torch.Generator().manual_seed(dist.get_rank())
    batches = [(torch.randn(BATCH, 256, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen))] * STEPS
    bare = host()
    wrapped = wrap(copy.deepcopy(bare), KasminaConfig(chunks_per_layer=4, include_head=True))  # 4x4 DORMANT
    arms = {"bare": trainer(bare, FollowerPolicy(), batches, run_dir),
            "dormant": trainer(wrapped, FollowerPolicy(), batches, run_dir)}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(ROUNDS + 3):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for name in order:
            start = time.perf_counter()
            arms[name]._train_one_epoch(round_)
            if round_ >= 3:  # warm-up rounds
                seconds[name].append((time.perf_counter() - start) / STEPS)
    ratios = [d / b for d, b in zip(seconds["dormant"], seconds["bare"], strict=True)]
    return statistics.median(ratios), statistics.median(seconds["bare"]), statistics.median(seconds["dormant"])


def bench_boundary(run_dir: str, epochs: int = 12) -> tuple[float, list[float]]:
    """(median boundary milliseconds, all of them) over a run whose policy germinates at every plateau."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(world * BATCH * STEPS, 256, generator=gen), torch.randint(0, 10, (world * BATCH * STEPS,),
                                                                                       generator=gen))
    data = Batches(split, BATCH, rank=rank, world_size=world)
    library = LocalKernelLibrary()
    model = wrap(host(), KasminaConfig(chunks_per_layer=4, include_head=True, training_min_steps=5,
                                       training_max_steps=10,
                                       alpha_ramp_steps=10, stabilization_steps=5, evaluation_steps=5,
                                       fine_tuning_steps=5), library)
    policy = HeuristicPolicy(TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=10.0),
                             library) if rank == 0 else FollowerPolicy()
    timed = trainer(model, policy, data, run_dir, TimedTrainer, epochs)
    timed.train()
    ms = [s * 1e3 for s in timed.__dict__["boundary_s"]]
    return statistics.median(ms), ms


def worker() -> None:
    torch.set_num_threads(1)  # two ranks on two cores
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    run_dir = broadcast_object(tempfile.mkdtemp(prefix="bench-ddp-"))  # one run directory: rank 0's
    ratio, bare_s, dormant_s = bench_steps(run_dir)
    boundary_ms, all_ms = bench_boundary(str(Path(run_dir) / "boundary"))
    dist.destroy_process_group()
    shutil.rmtree(run_dir, ignore_errors=True)
    if int(os.environ["RANK"]) != 0:
        return
    console = Console(highlight=False)
    table = Table(title="Tolaria under DDP: 2 ranks, gloo, CPU, 1 thread each")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("bare host DDP step", f"{bare_s * 1e3:.3f} ms", "")
    table.add_row("16 dormant seeds DDP step", f"{dormant_s * 1e3:.3f} ms", "")
    table.add_row("dormant overhead ratio", f"{ratio:.4f}", "<= 1.03")
    table.add_row("boundary (median of epochs)", f"{boundary_ms:.2f} ms", "")
    table.add_row("boundary (each epoch)", " ".join(f"{m:.0f}" for m in all_ms) + " ms", "")
    console.print(table)
    print(f"ddp_dormant_overhead_ratio: {ratio:.4f}")
    print(f"ddp_boundary_ms: {boundary_ms:.2f}")


def main() -> int:
    if "RANK" in os.environ:
        worker()
        return 0
    return launch_command([sys.executable, __file__], 2)


if __name__ == "__main__":
    sys.exit(main())
