"""Narset's budget allocator: how much authority growth (Tamiyo) and pruning (Emrakul) get in one region.

Narset never picks a seed or a blueprint. Once per window and per region it reads three coarse signals
and answers with two intensities, ``x_T`` for growth and ``x_E`` for pruning. ``x = 1`` is the nominal
full operating level; ``x > 1`` is *overdrive*. One window, one region, top to bottom:

1. **Smooth.** The raw inputs are clamped to their documented ranges and smoothed with an EWMA, so a
   single noisy window moves nothing much.

       progress   in [-1, 1]   1 = healthy improvement, 0 = flat, < 0 = regressing
       stability  in [0, 1]    1 = no rollbacks, anomalies or loss spikes
       efficiency in [0, 1]    1 = lean; low = bloated or thrashing

2. **Pressures.** ``need = w·stagnation + (1-w)·instability`` (the case for repair and growth; with the
   default ``w = 0.7`` a plateau alone is enough to call for repair) and
   ``prune = bloat · stability`` (the case for consolidation; surgery is pointless while unstable).
   Both lie in [0, 1] and ``need`` moves by at most ``A`` when every input moves by at most ``A``.

3. **Mode, with hysteresis.** Consolidation turns into repair when ``need >= enter_repair``; repair
   turns back only when ``need <= exit_repair``. Noise of amplitude below half that band around steady
   inputs can therefore switch the mode at most once.

4. **Targets.** Repair gives growth ``0.5 + 0.5·need`` and leaves pruning a probing heartbeat;
   consolidation gives pruning ``0.2 + 0.8·prune`` and growth ``0.5·need``. A target above 1 (overdrive)
   is only offered after ``overdrive_windows`` consecutive windows of pressure at or above
   ``overdrive_pressure``.

5. **Inertia.** ``x <- (1-β)·x + β·x_target``: budgets drift, they never jump. The one exception is
   leaving overdrive: when the pressure stops being sustained the intensity is capped at 1 at once,
   because overdrive is an emergency tool and the safe direction is down.

6. **Fit the pool.** ``c(x) = x`` for ``x <= 1`` and ``1 + a(x-1)²`` above. The mode's lead agent keeps
   its intensity (capped where its cost alone fills the pool); the other gets what is left, so
   ``c(x_T) + c(x_E) <= pool`` holds after every step, whatever the inputs. (``c`` bends the wrong way
   at 1 — slope 1, then 0 — so a blend of two feasible points can be infeasible: this step must come
   after inertia, every window.)

Every step returns a :class:`~esper_contracts.NarsetAllocationDecision` carrying the raw and smoothed
inputs. The arithmetic is plain, ordered float arithmetic with no clock and no randomness, so
:func:`replay` fed a log of decisions reproduces every one of them bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from esper_contracts import AllocatorInputs, ControlMode, NarsetAllocationDecision

STATE_VERSION = 1


@dataclass(frozen=True)
class AllocatorConfig:
    """Knobs of the allocator. The defaults are tuned for windows of one epoch."""

    pool: float = 1.5  # default budget for c(x_T) + c(x_E) when the region's allocation names none
    overdrive_curvature: float = 2.0  # a in c(x) = 1 + a(x-1)^2
    max_intensity: float = 1.5  # no target ever asks for more than this
    ewma_weight: float = 0.3  # weight of the newest window in the input EWMA
    inertia: float = 0.4  # β: share of the new target taken each window
    progress_weight: float = 0.7  # w: stagnation's share of the repair need (a plateau alone means repair)
    enter_repair: float = 0.6
    exit_repair: float = 0.3
    overdrive_pressure: float = 0.8
    overdrive_windows: int = 3
    probe_intensity: float = 0.1  # Emrakul's heartbeat while the region is in repair
    # Blast radius: what the intensities authorise (see :func:`emrakul_blast_radius`).
    germinate_min: float = 0.25
    probe_min: float = 0.02
    sedation_min: float = 0.3
    irreversible_min: float = 0.8

    def __post_init__(self) -> None:
        checks = {
            "pool must be > 0": self.pool > 0,
            "overdrive_curvature must be > 0": self.overdrive_curvature > 0,
            "max_intensity must be >= 1": self.max_intensity >= 1,
            "ewma_weight must be in (0, 1]": 0 < self.ewma_weight <= 1,
            "inertia must be in (0, 1]": 0 < self.inertia <= 1,
            "progress_weight must be in [0, 1]": 0 <= self.progress_weight <= 1,
            "need 0 <= exit_repair < enter_repair <= 1": 0 <= self.exit_repair < self.enter_repair <= 1,
            "overdrive_pressure must be in (0, 1)": 0 < self.overdrive_pressure < 1,
            "overdrive_windows must be >= 1": self.overdrive_windows >= 1,
            "probe_intensity must be in [0, 1]": 0 <= self.probe_intensity <= 1,
            "need 0 <= probe_min <= sedation_min <= irreversible_min": (
                0 <= self.probe_min <= self.sedation_min <= self.irreversible_min
            ),
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise ValueError(f"invalid allocator config ({'; '.join(broken)}): {self}")

    @property
    def hysteresis_band(self) -> float:
        """Width of the dead band between leaving and entering repair."""
        return self.enter_repair - self.exit_repair


# ------------------------------------------------------------------------------------------ cost curve


def cost(x: float, a: float) -> float:
    """The convex overdrive cost: linear up to nominal, quadratic surcharge above."""
    return x if x <= 1.0 else 1.0 + a * (x - 1.0) ** 2


def intensity_for_cost(budget: float, a: float) -> float:
    """The largest intensity whose cost is ``budget`` (inverse of :func:`cost`; 0 for no budget)."""
    if budget <= 0.0:
        return 0.0
    return budget if budget <= 1.0 else 1.0 + math.sqrt((budget - 1.0) / a)


def fit_within_pool(lead: float, other: float, pool: float, a: float) -> tuple[float, float]:
    """Shrink ``(lead, other)`` until ``cost(lead) + cost(other) <= pool``, the lead agent first served.

    The inverse of the cost curve can land one rounding step above the budget, so each intensity is
    nudged down by single ulps until the sum is truly within the pool.
    """
    lead = min(lead, intensity_for_cost(pool, a))
    while lead > 0.0 and cost(lead, a) > pool:
        lead = math.nextafter(lead, 0.0)
    other = min(other, intensity_for_cost(pool - cost(lead, a), a))
    while other > 0.0 and cost(lead, a) + cost(other, a) > pool:
        other = math.nextafter(other, 0.0)
    return lead, other


# ------------------------------------------------------------------------------------------ blast radius


class BlastRadius(StrEnum):
    """What Emrakul may do in a region, from least to most invasive."""

    NONE = "none"
    PROBE = "probe"  # measure only
    SEDATION = "sedation"  # reversible: mask or down-weight units
    IRREVERSIBLE = "irreversible"  # physical removal (lysis, compaction)


def emrakul_blast_radius(
    x_E: float, config: AllocatorConfig, *, safe_boundary: bool, protected: bool
) -> BlastRadius:
    """Low intensity allows probing only; surgery needs high intensity, a safe boundary and no protected zone."""
    if x_E < config.probe_min:
        return BlastRadius.NONE
    if x_E < config.sedation_min:
        return BlastRadius.PROBE
    if x_E >= config.irreversible_min and safe_boundary and not protected:
        return BlastRadius.IRREVERSIBLE
    return BlastRadius.SEDATION


def growth_permitted(x_T: float, config: AllocatorConfig) -> bool:
    """Whether growth intensity is high enough to start a new adaptation (advancing live seeds is always allowed)."""
    return x_T >= config.germinate_min


# ------------------------------------------------------------------------------------------ one region


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def pressures(progress: float, stability: float, efficiency: float, config: AllocatorConfig) -> tuple[float, float]:
    """(repair need, pruning pressure) of smoothed inputs, both in [0, 1]."""
    stagnation = _clamp(1.0 - progress, 0.0, 1.0)
    need = config.progress_weight * stagnation + (1 - config.progress_weight) * (1.0 - stability)
    return need, (1.0 - efficiency) * stability


def _overdrive_target(pressure: float, config: AllocatorConfig) -> float:
    """Intensity above 1, growing linearly from 1 at the overdrive threshold to ``max_intensity`` at pressure 1."""
    span = (pressure - config.overdrive_pressure) / (1.0 - config.overdrive_pressure)
    return 1.0 + (config.max_intensity - 1.0) * _clamp(span, 0.0, 1.0)


@dataclass
class RegionAllocator:
    """The allocator's memory for one region: smoothed inputs, intensities, mode and pressure streaks."""

    region_id: str
    config: AllocatorConfig
    progress: float | None = None  # EWMA state; None until the first window
    stability: float = 1.0
    efficiency: float = 1.0
    x_T: float = 0.0
    x_E: float = 0.0
    mode: ControlMode = ControlMode.CONSOLIDATION
    need_streak: int = 0  # consecutive windows with need >= overdrive_pressure
    prune_streak: int = 0  # consecutive windows with prune pressure >= overdrive_pressure

    def step(self, raw: AllocatorInputs, window: int, pool: float | None = None) -> NarsetAllocationDecision:
        """Advance one window and return the decision (with the inputs that produced it)."""
        cfg = self.config
        pool = cfg.pool if pool is None else pool
        a = cfg.overdrive_curvature

        # 1. Smooth the clamped inputs. The first window seeds the EWMA with itself.
        p = _clamp(raw.progress, -1.0, 1.0)
        s = _clamp(raw.stability, 0.0, 1.0)
        e = _clamp(raw.efficiency, 0.0, 1.0)
        if self.progress is None:
            self.progress, self.stability, self.efficiency = p, s, e
        else:
            k = cfg.ewma_weight
            self.progress = (1 - k) * self.progress + k * p
            self.stability = (1 - k) * self.stability + k * s
            self.efficiency = (1 - k) * self.efficiency + k * e

        # 2. Pressures in [0, 1].
        need, prune = pressures(self.progress, self.stability, self.efficiency, cfg)

        # 3. Mode with hysteresis: entering repair takes a high need, leaving it a low one.
        if self.mode is ControlMode.CONSOLIDATION and need >= cfg.enter_repair:
            self.mode = ControlMode.REPAIR
        elif self.mode is ControlMode.REPAIR and need <= cfg.exit_repair:
            self.mode = ControlMode.CONSOLIDATION
        repair = self.mode is ControlMode.REPAIR
        self.need_streak = self.need_streak + 1 if repair and need >= cfg.overdrive_pressure else 0
        self.prune_streak = self.prune_streak + 1 if not repair and prune >= cfg.overdrive_pressure else 0
        overdrive_T_allowed = self.need_streak >= cfg.overdrive_windows
        overdrive_E_allowed = self.prune_streak >= cfg.overdrive_windows

        # 4. Targets of the mode.
        if repair:
            target_T = _overdrive_target(need, cfg) if overdrive_T_allowed else 0.5 + 0.5 * need
            target_E = cfg.probe_intensity * self.stability
        else:
            target_T = 0.5 * need
            target_E = _overdrive_target(prune, cfg) if overdrive_E_allowed else 0.2 + 0.8 * prune

        # 5. Inertia; overdrive ends at once when the pressure behind it is no longer sustained.
        b = cfg.inertia
        x_T = (1 - b) * self.x_T + b * target_T
        x_E = (1 - b) * self.x_E + b * target_E
        if not overdrive_T_allowed:
            x_T = min(x_T, 1.0)
        if not overdrive_E_allowed:
            x_E = min(x_E, 1.0)

        # 6. Fit the pool, the mode's lead agent first.
        if repair:
            x_T, x_E = fit_within_pool(x_T, x_E, pool, a)
        else:
            x_E, x_T = fit_within_pool(x_E, x_T, pool, a)
        self.x_T, self.x_E = x_T, x_E

        c_T, c_E = cost(x_T, a), cost(x_E, a)
        return NarsetAllocationDecision(
            decision_id=f"{self.region_id}@{window}",
            region_id=self.region_id,
            window=window,
            mode=self.mode,
            x_T=x_T,
            x_E=x_E,
            c_T=c_T,
            c_E=c_E,
            pool=pool,
            total_spent=c_T + c_E,
            overdrive_T=x_T > 1.0,
            overdrive_E=x_E > 1.0,
            raw_inputs=raw,
            smoothed_inputs=AllocatorInputs(progress=self.progress, stability=self.stability,
                                            efficiency=self.efficiency),
        )

    def state_dict(self) -> dict[str, Any]:
        """The region's memory as plain JSON values (the config is not included)."""
        state = asdict(self)
        del state["config"]
        state["mode"] = self.mode.value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        for name in ("progress", "stability", "efficiency", "x_T", "x_E", "need_streak", "prune_streak"):
            setattr(self, name, state[name])
        self.mode = ControlMode(state["mode"])


# ------------------------------------------------------------------------------------------ many regions


class Allocator:
    """One :class:`RegionAllocator` per region, created on first sight."""

    def __init__(self, config: AllocatorConfig | None = None) -> None:
        self.config = config or AllocatorConfig()
        self.regions: dict[str, RegionAllocator] = {}

    def region(self, region_id: str) -> RegionAllocator:
        """The allocator of ``region_id`` (fresh the first time)."""
        found = self.regions.get(region_id)
        if found is None:
            found = self.regions[region_id] = RegionAllocator(region_id, self.config)
        return found

    def step(self, region_id: str, raw: AllocatorInputs, window: int,
             pool: float | None = None) -> NarsetAllocationDecision:
        """One window of one region."""
        return self.region(region_id).step(raw, window, pool)

    def forget(self, region_id: str) -> dict[str, Any] | None:
        """Drop a region (it moved to another worker) and return its state so the new owner can resume it."""
        found = self.regions.pop(region_id, None)
        return None if found is None else found.state_dict()

    def adopt(self, region_id: str, state: Mapping[str, Any] | None) -> None:
        """Take over a region, resuming from ``state`` when the previous owner handed it over."""
        region = self.region(region_id)
        if state is not None:
            region.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Every region's memory, for checkpoints."""
        return {"version": STATE_VERSION, "regions": {rid: r.state_dict() for rid, r in self.regions.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"allocator state version {state.get('version')!r} is not {STATE_VERSION}")
        self.regions = {}
        for rid, region_state in state["regions"].items():
            self.region(rid).load_state_dict(region_state)


def replay(decisions: Iterable[NarsetAllocationDecision],
           config: AllocatorConfig | None = None) -> list[NarsetAllocationDecision]:
    """Recompute a log of decisions from its raw inputs, windows and pools, starting from fresh regions.

    The result equals the log exactly when the log was produced by an allocator with ``config`` that
    started empty; a difference pinpoints the first decision that cannot be explained by its inputs.
    """
    allocator = Allocator(config)
    return [allocator.step(d.region_id, d.raw_inputs, d.window, d.pool) for d in decisions]
