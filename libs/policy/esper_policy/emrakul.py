"""Emrakul's planner: importance scores, protected zones and an allowance in; one structured pruning plan out.

A pure function of its inputs (no torch, no clock, no randomness), so the Emrakul service and the standalone
trainer plan alike and any plan can be replayed from the report, zones and allocation that produced it:

1. **Intensity and blast radius.** Emrakul's intensity is Narset's ``x_E`` for the region. Below
   ``probe_min`` nothing is planned; below ``lysis_min``, or away from a safe boundary, the plan is a *probe*
   (units masked for a window, reversible); at or above it, at a safe boundary, it is *lysis* (physical
   removal). Low energy may poke; surgery needs authority (seed 001 §7).
2. **Allowance (the inverse throttle).** The plan may name at most
   ``max_fraction · min(x_E, 1) · (1 - c_T / pool)`` of the model's parameters: the more of the pool Narset
   spends on growth, the less Emrakul may cut (seed 002 §8), on top of ``x_E`` already falling as growth leads.
3. **Candidates.** Scores of the report's primary criterion, outside every protected zone and its embargo
   ring (``ProtectedZone.covers`` at the report's epoch, whatever Elesh marked), not diagnostic-only, not
   whole seeds (decision 0013: seed slots are excluded from cuts), and below ``score_ceiling`` (a unit at
   least as important as its module's mean is never a candidate).
4. **Greedy, least important first**, ordered by (score, module, index) so ties break the same way every
   time, skipping a unit that would take its module below ``1 - max_module_fraction`` of its units (and
   never the last one) or the plan over its allowance.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from esper_contracts import (
    ImportanceReport,
    ImportanceScore,
    NarsetAllocationDecision,
    ProtectedZone,
    PruneAction,
    PruneGranularity,
    PruneMode,
    PruningPlan,
)


@dataclass(frozen=True)
class EmrakulSettings:
    """Knobs of the planner (the thresholds match Narset's blast-radius defaults)."""

    probe_min: float = 0.02  # below this x_E: nothing at all
    lysis_min: float = 0.8  # physical removal needs at least this x_E (and a safe boundary)
    max_fraction: float = 0.3  # parameters one plan may name at x_E = 1 with Narset idle
    max_module_fraction: float = 0.5  # units of one module one plan may take
    score_ceiling: float = 1.0  # scores are normalised to mean 1 per module: candidates lie below this
    probe_epochs: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.probe_min <= self.lysis_min:
            raise ValueError(f"need 0 <= probe_min <= lysis_min: {self}")
        if not (0 < self.max_fraction <= 1 and 0 < self.max_module_fraction < 1):
            raise ValueError(f"max_fraction must be in (0, 1] and max_module_fraction in (0, 1): {self}")
        if self.probe_epochs < 1:
            raise ValueError("probe_epochs must be >= 1")


def spend_share(allocation: NarsetAllocationDecision | None) -> float:
    """The share of the pool Narset spends on growth (``c_T / pool``), in [0, 1]; 0 with no allocation."""
    if allocation is None:
        return 0.0
    return min(max(allocation.c_T / allocation.pool, 0.0), 1.0)


def allowance_for(x_E: float, narset_spend_share: float, settings: EmrakulSettings) -> float:
    """The fraction of the model's parameters a plan may name: rises with ``x_E``, falls as Narset spends."""
    if x_E < settings.probe_min:
        return 0.0
    share = min(max(narset_spend_share, 0.0), 1.0)
    return settings.max_fraction * min(max(x_E, 0.0), 1.0) * (1.0 - share)


def mode_for(x_E: float, *, safe_boundary: bool, settings: EmrakulSettings) -> PruneMode | None:
    """The blast radius ``x_E`` authorises: None (nothing), a probe, or lysis (only at a safe boundary)."""
    if x_E < settings.probe_min:
        return None
    if x_E >= settings.lysis_min and safe_boundary:
        return PruneMode.LYSIS
    return PruneMode.PROBE


def in_zone(module_path: str, zones: Iterable[ProtectedZone], epoch: int) -> bool:
    """Whether ``module_path`` lies inside any zone or its embargo ring at ``epoch``."""
    return any(zone.covers(module_path, epoch) for zone in zones)


def candidates(report: ImportanceReport, zones: Sequence[ProtectedZone], settings: EmrakulSettings,
               ) -> list[ImportanceScore]:
    """The units a plan may name, least important first (ties broken by module and index)."""
    diagnostic = {(s.module_path, s.index) for s in report.scores if s.diagnostic_only}  # under any criterion
    pool = [s for s in report.scores
            if s.criterion == report.primary and (s.module_path, s.index) not in diagnostic
            and s.granularity != PruneGranularity.SEED
            and s.score < settings.score_ceiling and not in_zone(s.module_path, zones, report.epoch)]
    return sorted(pool, key=lambda s: (s.score, s.module_path, s.index))


def _plan_id(report: ImportanceReport, zones: Sequence[ProtectedZone], x_E: float, share: float,
             safe_boundary: bool, settings: EmrakulSettings) -> str:
    """A content address of the inputs: replaying them yields the same plan, id included."""
    inputs = {
        "report": report.model_dump(mode="json"),
        "zones": sorted((z.model_dump(mode="json") for z in zones), key=lambda z: json.dumps(z, sort_keys=True)),
        "x_E": x_E, "share": share, "safe": safe_boundary, "settings": settings.__dict__,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def plan_pruning(report: ImportanceReport, zones: Sequence[ProtectedZone], x_E: float, *,
                 narset_spend_share: float = 0.0, safe_boundary: bool = True,
                 settings: EmrakulSettings | None = None) -> PruningPlan | None:
    """The plan for ``report`` under ``zones`` at intensity ``x_E``; None when there is nothing to plan.

    ``narset_spend_share`` is the share of the pool growth spends (see :func:`spend_share`); ``safe_boundary``
    says whether the trainer is at a checkpoint boundary where lysis may happen.
    """
    settings = settings or EmrakulSettings()
    mode = mode_for(x_E, safe_boundary=safe_boundary, settings=settings)
    allowance = allowance_for(x_E, narset_spend_share, settings)
    if mode is None or allowance <= 0.0 or report.total_parameters == 0:
        return None
    budget = allowance * report.total_parameters
    units: dict[str, int] = defaultdict(int)  # units per module under the primary criterion
    for s in report.scores:
        if s.criterion == report.primary:
            units[s.module_path] += 1
    taken: dict[str, list[int]] = {}
    granularity: dict[str, PruneGranularity] = {}
    used = 0
    for s in candidates(report, zones, settings):
        cap = min(int(units[s.module_path] * settings.max_module_fraction), units[s.module_path] - 1)
        if len(taken.get(s.module_path, ())) >= cap or used + s.parameters > budget:
            continue
        taken.setdefault(s.module_path, []).append(s.index)
        granularity[s.module_path] = s.granularity
        used += s.parameters
    if not taken:
        return None
    actions = [PruneAction(module_path=m, granularity=granularity[m], indices=sorted(taken[m])) for m in sorted(taken)]
    return PruningPlan(
        plan_id=_plan_id(report, zones, x_E, narset_spend_share, safe_boundary, settings),
        run_id=report.run_id, region_id=report.region_id, epoch=report.epoch, importance_report_id=report.report_id,
        checkpoint_id=report.checkpoint_id, mode=mode, intensity=x_E, allowance=min(allowance, 1.0),
        allowance_used=min(used / report.total_parameters, allowance), actions=actions,
        estimated_parameter_reduction=used, requires_safe_boundary=mode == PruneMode.LYSIS,
        probe_epochs=settings.probe_epochs,
    )
