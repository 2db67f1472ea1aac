"""Elesh's criteria: importance of Linear neurons, Conv channels, attention heads and whole seeds.

Scoring works from a state dict alone (tensors by name, as read from a safetensors checkpoint) plus the
statistics the trainer gathered, so the Elesh service needs no model code and never unpickles anything:

* data-free: ``magnitude`` (L2 norm of a unit's weights) and ``bn_scale`` (|gamma| of the BatchNorm after it);
* data-aware, from :class:`~esper_contracts.UnitStatistics`: ``taylor`` (|sum w·dL/dw| over the unit, the
  first-order loss change of removing it) and ``activation`` (mean |output| of the unit).

Every criterion is normalised to mean 1 within its module, so scores compare across modules of any size
and the planner's ``score_ceiling`` means "below the module's average". Units of a module inside a protected
zone (or its ring) are scored too, marked ``diagnostic_only``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from esper_contracts import (
    ImportanceCriterion,
    ImportanceReport,
    ImportanceScore,
    ProtectedZone,
    PrunableModule,
    PruneGranularity,
    UnitStatistics,
)

C = ImportanceCriterion
GRANULARITY = {"linear": PruneGranularity.NEURON, "conv": PruneGranularity.CHANNEL,
               "attention": PruneGranularity.HEAD, "seed": PruneGranularity.SEED}


class ScoringError(ValueError):
    """The request cannot be scored: a tensor it names is missing, or statistics do not fit their module."""


def _tensor(state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state[name].detach().float()
    except KeyError:
        raise ScoringError(f"the checkpoint has no tensor {name!r}") from None


def unit_magnitudes(state: Mapping[str, torch.Tensor], module: PrunableModule) -> tuple[torch.Tensor, list[int]]:
    """(L2 norm of each unit's weights, parameters each unit holds) for one module."""
    p = module.module_path
    if module.kind == "seed":  # a whole fossilized seed: every tensor under its path
        tensors = [t.detach().float() for name, t in sorted(state.items()) if name.startswith(p + ".")]
        if not tensors:
            raise ScoringError(f"the checkpoint has no tensor under seed {p!r}")
        energy = torch.stack([t.pow(2).sum() for t in tensors]).sum()
        return energy.sqrt().view(1), [sum(t.numel() for t in tensors)]
    if module.kind == "attention":
        w = _tensor(state, f"{p}.in_proj_weight")  # (3E, E): q, k, v stacked
        out = _tensor(state, f"{p}.out_proj.weight")  # (E, E)
        e = w.shape[1]
        heads = module.num_heads or 1
        if e % heads:
            raise ScoringError(f"{p}: embedding {e} is not divisible by {heads} heads")
        d = e // heads
        qkv = w.view(3, heads, d, e)  # (3, H, d, E)
        o = out.view(e, heads, d)  # (E, H, d)
        norms = (qkv.pow(2).sum(dim=(0, 2, 3)) + o.pow(2).sum(dim=(0, 2))).sqrt()
        per_head = 3 * d * e + 3 * d + e * d
        return norms, [per_head] * heads
    w = _tensor(state, f"{p}.weight")
    if w.dim() != {"conv": 4, "linear": 2}[module.kind]:
        raise ScoringError(f"{p}: a {module.kind} weight of shape {tuple(w.shape)}")
    per_unit = w[0].numel() + (1 if f"{p}.bias" in state else 0)
    return w.flatten(1).norm(dim=1), [per_unit] * w.shape[0]


def parameter_total(state: Mapping[str, torch.Tensor]) -> int:
    """Parameters in a state dict: its floating tensors, BatchNorm running statistics left out."""
    return sum(t.numel() for name, t in state.items()
               if t.is_floating_point() and ".running_" not in f".{name.rsplit('.', 1)[-1]}")


def _normalised(values: torch.Tensor) -> list[float]:
    mean = float(values.mean()) if values.numel() else 0.0
    return [float(v) / mean if mean > 0 else 1.0 for v in values]


def score_state(state: Mapping[str, torch.Tensor], modules: Sequence[PrunableModule],
                statistics: Sequence[UnitStatistics] = (), *, zones: Sequence[ProtectedZone] = (),
                epoch: int, checkpoint_id: str, run_id: str = "run", region_id: str = "host",
                request_id: str | None = None) -> ImportanceReport:
    """Score every unit of ``modules`` in ``state`` under every criterion the inputs allow.

    The report's ``primary`` criterion is Taylor when statistics of it were given, else activation, else
    BatchNorm scale when every module has one, else magnitude. Raises :class:`ScoringError` for a missing
    tensor or statistics whose length is not the module's unit count.
    """
    stats = {(s.module_path, s.criterion): s.values for s in statistics}
    known = {m.module_path for m in modules}
    stray = sorted({path for path, _ in stats} - known)
    if stray:
        raise ScoringError(f"statistics for modules the request does not list: {stray}")
    scores: list[ImportanceScore] = []
    total = parameter_total(state)
    for module in modules:
        magnitudes, params = unit_magnitudes(state, module)
        if module.unit_parameters is not None:  # the coupled count: what a cut really removes
            params = [module.unit_parameters] * len(params)
        per_criterion: dict[ImportanceCriterion, list[float]] = {C.MAGNITUDE: _normalised(magnitudes)}
        if module.batchnorm_path is not None:
            gamma = _tensor(state, f"{module.batchnorm_path}.weight").abs()
            if gamma.numel() != magnitudes.numel():
                raise ScoringError(f"{module.batchnorm_path} has {gamma.numel()} scales for {magnitudes.numel()} units")
            per_criterion[C.BN_SCALE] = _normalised(gamma)
        for criterion in (C.TAYLOR, C.ACTIVATION):
            values = stats.get((module.module_path, criterion))
            if values is None:
                continue
            if len(values) != magnitudes.numel():
                raise ScoringError(f"{module.module_path}: {len(values)} {criterion} values for "
                                   f"{magnitudes.numel()} units")
            per_criterion[criterion] = _normalised(torch.tensor(values))
        protected = any(z.covers(module.module_path, epoch) for z in zones)
        for criterion, values in per_criterion.items():
            scores += [ImportanceScore(module_path=module.module_path, granularity=GRANULARITY[module.kind], index=i,
                                       score=v, criterion=criterion, parameters=params[i], diagnostic_only=protected)
                       for i, v in enumerate(values)]
    present = {s.criterion for s in scores}
    bn_everywhere = all(m.batchnorm_path is not None for m in modules)
    primary = next(c for c in (C.TAYLOR, C.ACTIVATION, C.BN_SCALE, C.MAGNITUDE)
                   if c in present and (c is not C.BN_SCALE or bn_everywhere))
    return ImportanceReport(request_id=request_id, run_id=run_id, region_id=region_id, epoch=epoch,
                            checkpoint_id=checkpoint_id, primary=primary, total_parameters=total, scores=scores)
