"""Removal benchmark: Elesh's scoring, Emrakul's planning, Tolaria's lysis, and what a cut buys in step time.

Run: ``.venv/bin/python bench/bench_removal.py`` (well under a minute on 2 CPU cores, one torch thread).
Prints ``name: value`` lines, the last four:

* ``elesh_score_s_1m_params``: scoring a checkpoint of a ~1M-parameter MLP from its safetensors bytes, Taylor
  and activation statistics included in the request (what the Elesh service does per request; median of 5).
* ``emrakul_plan_ms``: ``plan_pruning`` on that report (median of 20).
* ``lysis_s``: physical removal of the plan (Torch-Pruning's dependency graph) plus the optimizer rebuild.
* ``pruned_step_speedup_vs_mac_cut``: (1 - step time after / before) / (1 - MACs after / before), a training
  step (forward, backward, Adam) at batch 256 on CPU, medians of interleaved rounds (goal >= 0.7).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import PruneAction, PruneGranularity
from esper_policy.emrakul import EmrakulSettings, plan_pruning
from esper_pruning.cut import count_macs, lysis, parameter_count
from esper_pruning.importance import score_state
from esper_pruning.model import load_state, prunable_modules, state_bytes, unit_statistics


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear + ReLU layers of ``widths``, the last a plain Linear (the output)."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def median_time(fn: object, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One training step's wall time (forward, backward, Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mlp((256, 1024, 640, 256, 10))  # 1.08M parameters
    params = parameter_count(model)
    x, y = torch.randn(256, 256), torch.randint(0, 10, (256,))
    outputs = [str(len(model) - 1)]
    modules = prunable_modules(model, exclude=outputs, example_inputs=x[:2])
    stats = unit_statistics(model, modules, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)],
                            F.cross_entropy)
    blob = state_bytes(model)
    report = None

    def score() -> None:
        nonlocal report
        report = score_state(load_state(blob), modules, stats, epoch=1, checkpoint_id="ck")

    score_s = median_time(score, 5)
    assert report is not None
    settings = EmrakulSettings(max_fraction=0.5, score_ceiling=10.0)
    plan_ms = 1000 * median_time(lambda: plan_pruning(report, [], 1.0, settings=settings), 20)
    plan = plan_pruning(report, [], 1.0, settings=settings)
    assert plan is not None
    cut_model = copy.deepcopy(model)
    start = time.perf_counter()
    result = lysis(cut_model, plan.actions, x[:2], protected=outputs)
    torch.optim.Adam(cut_model.parameters(), lr=1e-3)
    lysis_s = time.perf_counter() - start

    # Step time: half of every hidden layer removed, timed interleaved with the dense model.
    half = copy.deepcopy(model)
    actions = [PruneAction(module_path=m.module_path, granularity=PruneGranularity.NEURON,
                           indices=list(range(0, half.get_submodule(m.module_path).out_features, 2)))
               for m in modules]
    lysis(half, actions, x[:2], protected=outputs)
    macs_dense, macs_half = count_macs(model, x[:2]), count_macs(half, x[:2])
    for _ in range(3):  # warm-up
        step_time(model, x, y), step_time(half, x, y)
    ratios = []
    for i in range(30):
        pair = (step_time(model, x, y), step_time(half, x, y)) if i % 2 else tuple(
            reversed((step_time(half, x, y), step_time(model, x, y))))
        ratios.append(pair[1] / pair[0])
    time_gain = 1 - statistics.median(ratios)
    mac_cut = 1 - macs_half / macs_dense
    print(f"model: {params} parameters; plan removes {result.units_removed} units "
          f"({result.parameters_before} -> {result.parameters_after} parameters, "
          f"{result.macs_before} -> {result.macs_after} MACs per sample)")
    print(f"half-width cut: MACs {macs_dense} -> {macs_half} ({mac_cut:.3f} cut), "
          f"step time ratio {statistics.median(ratios):.3f} (median of 30 interleaved rounds)")
    print(f"elesh_score_s_1m_params: {score_s:.3f}")
    print(f"emrakul_plan_ms: {plan_ms:.2f}")
    print(f"lysis_s: {lysis_s:.3f}")
    print(f"pruned_step_speedup_vs_mac_cut: {time_gain / mac_cut:.2f}")


if __name__ == "__main__":
    main()
