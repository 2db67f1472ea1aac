"""What an outcome is worth: a blueprint's history turned into Beta evidence (weighted successes and failures).

Every observation is a weighted trial. Validation is the fast signal (VALIDATED a success, REJECTED or a
failed compile a failure); being chosen by Tamiyo at all is a small success; each field report is the slow,
heavy one (FOSSILIZED a success, CULLED a failure, ROLLED_BACK a double failure, CANCELLED no evidence);
Urabrask's latency and memory against the parent's are a partial success, full when the child is no more
expensive than its parent. The same evidence scores a blueprint as a parent and, summed over the children an
operator made, that operator as an arm of the mutation policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esper_contracts import Outcome


@dataclass(frozen=True)
class RewardWeights:
    """How much each kind of observation counts, in trials."""

    validation: float = 1.0
    chosen: float = 0.5
    field_report: float = 2.0
    rolled_back_factor: float = 2.0
    latency: float = 0.25
    memory: float = 0.25


@dataclass
class Evidence:
    """Weighted successes and failures: the pseudo-counts added to a Beta prior."""

    successes: float = 0.0
    failures: float = 0.0

    def add(self, success: float, weight: float) -> None:
        """One trial of ``weight`` that succeeded to the degree ``success`` (0..1)."""
        self.successes += weight * success
        self.failures += weight * (1.0 - success)

    def __iadd__(self, other: Evidence) -> Evidence:
        self.successes += other.successes
        self.failures += other.failures
        return self

    @property
    def trials(self) -> float:
        """Total weight observed."""
        return self.successes + self.failures


@dataclass(frozen=True)
class BlueprintOutcome:
    """What is known about one blueprint: validation verdict, field outcomes, cost relative to its parent."""

    validated: bool | None = None  # None: not judged yet
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)
    latency_ratio: float | None = None  # child p50 latency / parent's, same hardware
    memory_ratio: float | None = None

    @property
    def resolved(self) -> bool:
        """True once the pipeline has judged it (validated or not)."""
        return self.validated is not None


def _cheapness(ratio: float) -> float:
    """1 when no more expensive than the parent, falling as 1/ratio above."""
    return 1.0 if ratio <= 1.0 else 1.0 / ratio


def evidence(outcome: BlueprintOutcome, weights: RewardWeights | None = None) -> Evidence:
    """The Beta evidence one blueprint's history amounts to."""
    w = weights or RewardWeights()
    ev = Evidence()
    if outcome.validated is not None:
        ev.add(1.0 if outcome.validated else 0.0, w.validation)
    if outcome.outcomes:
        ev.add(1.0, w.chosen)
    for result in outcome.outcomes:
        if result is Outcome.FOSSILIZED:
            ev.add(1.0, w.field_report)
        elif result is Outcome.CULLED:
            ev.add(0.0, w.field_report)
        elif result is Outcome.ROLLED_BACK:
            ev.add(0.0, w.field_report * w.rolled_back_factor)
    if outcome.validated and outcome.latency_ratio is not None:
        ev.add(_cheapness(outcome.latency_ratio), w.latency)
    if outcome.validated and outcome.memory_ratio is not None:
        ev.add(_cheapness(outcome.memory_ratio), w.memory)
    return ev
