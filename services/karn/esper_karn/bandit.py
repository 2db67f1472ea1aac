"""The mutation policy: Thompson sampling over operators, one Beta posterior per (parent kind, operator).

An arm's evidence is the summed :func:`~esper_karn.rewards.evidence` of the children that operator made
from parents of that kind. Kinds with little data borrow strength from the operator's record over every
kind: the prior is centred on the operator's pooled success rate with ``pooling`` pseudo-trials. The
policy holds no state of its own: it is rebuilt from stored outcomes, so a restart or a redelivered report
changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .rewards import Evidence

ArmKey = tuple[str, str]  # (parent kind, operator)


@dataclass(frozen=True)
class ArmPosterior:
    """The Beta posterior of one arm."""

    kind: str
    operator: str
    alpha: float
    beta: float
    trials: float

    @property
    def mean(self) -> float:
        """Posterior mean success rate."""
        return self.alpha / (self.alpha + self.beta)


class ThompsonBandit:
    """Chooses an operator for a parent kind by sampling each arm's posterior and taking the best draw."""

    def __init__(self, evidence: Mapping[ArmKey, Evidence], *, prior: float = 1.0, pooling: float = 2.0) -> None:
        self.evidence = dict(evidence)
        self.prior = prior
        self.pooling = pooling
        self._pooled: dict[str, Evidence] = {}
        for (_kind, op), ev in self.evidence.items():
            pooled = self._pooled.setdefault(op, Evidence())
            pooled += ev

    def posterior(self, kind: str, operator: str) -> ArmPosterior:
        """Beta(prior + pooled share + successes, prior + pooled share + failures) of one arm."""
        pooled = self._pooled.get(operator, Evidence())
        rate = (pooled.successes + self.prior) / (pooled.trials + 2 * self.prior)
        own = self.evidence.get((kind, operator), Evidence())
        return ArmPosterior(kind, operator, self.prior + self.pooling * rate + own.successes,
                            self.prior + self.pooling * (1 - rate) + own.failures, own.trials)

    def sample(self, kind: str, operator: str, rng: random.Random) -> float:
        """One draw of the arm's success rate."""
        p = self.posterior(kind, operator)
        return rng.betavariate(p.alpha, p.beta)

    def choose(self, kind: str, operators: Iterable[str], rng: random.Random) -> tuple[str, float]:
        """The operator with the best posterior draw for ``kind``, and that draw."""
        draws = [(self.sample(kind, op, rng), op) for op in operators]
        if not draws:
            raise ValueError(f"no operator to choose from for parent kind {kind!r}")
        best = max(draws)
        return best[1], best[0]
