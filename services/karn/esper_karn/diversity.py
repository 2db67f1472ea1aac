"""The diversity sampler: how varied the library is, and how much a novel child is worth when variety falls.

The library's diversity is the mean pairwise distance of its blueprints' feature vectors. Karn remembers
the highest diversity it has seen; when the current value falls below it, a novelty bonus switches on,
proportional to the fall, and a candidate child earns it in proportion to its distance from its nearest
neighbours in the library (relative to the library's own spread). So the bonus is zero while the library
is as varied as it has been, and pushes the mutation policy toward less-travelled designs when it is not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .features import FeatureVector, distance


def diversity_score(vectors: Sequence[FeatureVector]) -> float:
    """Mean pairwise distance of ``vectors`` (0 for fewer than two)."""
    if len(vectors) < 2:
        return 0.0
    pairs = list(itertools.combinations(vectors, 2))
    return sum(distance(a, b) for a, b in pairs) / len(pairs)


def novelty(candidate: FeatureVector, library: Sequence[FeatureVector], k: int = 3) -> float:
    """Mean distance from ``candidate`` to its ``k`` nearest library members (0 when the library is empty)."""
    if not library:
        return 0.0
    nearest = sorted(distance(candidate, v) for v in library)[:k]
    return sum(nearest) / len(nearest)


@dataclass
class DiversitySampler:
    """Tracks the library's best diversity and turns a fall below it into a novelty bonus weight.

    ``tolerance``: a relative fall smaller than this earns no bonus (noise of one new child).
    ``scale``: the bonus weight at a fall of 100 %.
    """

    tolerance: float = 0.05
    scale: float = 1.0
    reference: float = 0.0

    def observe(self, score: float) -> float:
        """Record the library's current diversity; returns the novelty bonus weight it implies."""
        self.reference = max(self.reference, score)
        return self.bonus_weight(score)

    def bonus_weight(self, score: float) -> float:
        """``scale`` x the relative fall of ``score`` below the reference, less the tolerance (never negative)."""
        if self.reference <= 0.0:
            return 0.0
        fall = (self.reference - score) / self.reference
        return self.scale * max(0.0, fall - self.tolerance)

    @staticmethod
    def bonus(candidate: FeatureVector, library: Sequence[FeatureVector], weight: float, spread: float) -> float:
        """The novelty bonus of ``candidate``: ``weight`` x its novelty relative to the library's ``spread``."""
        if weight <= 0.0 or spread <= 0.0:
            return 0.0
        return weight * novelty(candidate, library) / spread
