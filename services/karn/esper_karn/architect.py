"""One proposal round of the Tinkerer: pick good parents, pick operators, keep the most promising children.

For every child wanted, Karn drafts a few candidates. Each draft draws a parent by Thompson sampling on the
parent's own record (validated, chosen, fossilized) among the parents Tamiyo has tested in the field, except
with probability ``explore`` (or when none is tested), when it draws among the untested ones: with many
untested designs, an argmax over all their uninformed draws would almost never return to a design known to
be good. It then draws an operator from the mutation policy for that parent's kind, and applies it. A
candidate's score is the mean of the two draws plus the diversity sampler's novelty bonus; the best-scoring
draft that is new to the library becomes the child, and counts as part of the library when the next
child's novelty is judged. Everything here is pure: the caller supplies
the library, the outcomes and the random generator, and decides what to do with the children.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from esper_contracts import MAX_IR_PARAMETERS, BlueprintIR

from .bandit import ArmKey, ThompsonBandit
from .diversity import DiversitySampler, diversity_score
from .features import FeatureVector, ir_features, parent_kind
from .mutations import OPERATORS, Child, MutationOperator, MutationRefused, mutate
from .rewards import Evidence


@dataclass(frozen=True)
class Parent:
    """A blueprint that may be mutated, with the evidence of its own record.

    ``tested``: Tamiyo has grafted it at least once (it has field reports), so its record says more than
    "it validated".
    """

    blueprint_id: str
    ir: BlueprintIR
    evidence: Evidence
    tested: bool = False


@dataclass(frozen=True)
class Proposal:
    """A child chosen in a round, with the draws and bonus that chose it."""

    child: Child
    kind: str
    parent_draw: float
    operator_draw: float
    novelty_bonus: float
    vector: FeatureVector

    @property
    def score(self) -> float:
        """What the round maximised."""
        return (self.parent_draw + self.operator_draw) / 2 + self.novelty_bonus


@dataclass
class RoundResult:
    """The children of one round and what the round saw."""

    proposals: list[Proposal]
    diversity: float
    bonus_weight: float
    refusals: Counter[str] = field(default_factory=Counter)


class Architect:
    """Drafts and selects children; holds only the diversity sampler's memory of the library's best diversity."""

    def __init__(self, *, operators: Mapping[str, MutationOperator] | None = None,
                 sampler: DiversitySampler | None = None, drafts_per_child: int = 4,
                 max_parameters: int = MAX_IR_PARAMETERS, attempts: int = 4, explore: float = 0.25) -> None:
        self.operators = dict(operators or OPERATORS)
        self.sampler = sampler or DiversitySampler()
        self.drafts_per_child = drafts_per_child
        self.max_parameters = max_parameters
        self.attempts = attempts
        self.explore = explore

    def propose(self, parents: Sequence[Parent], library: Mapping[str, FeatureVector],
                arms: Mapping[ArmKey, Evidence], count: int, rng: random.Random,
                tags: tuple[str, ...] = ()) -> RoundResult:
        """Up to ``count`` children of ``parents`` that are not in ``library``; fewer when drafts keep failing."""
        vectors = list(library.values())
        diversity = diversity_score(vectors)
        weight = self.sampler.observe(diversity)
        result = RoundResult([], diversity, weight)
        if not parents or count <= 0:
            return result
        bandit = ThompsonBandit(arms)
        taken = set(library)
        refused: set[tuple[str, str]] = set()  # (parent, operator) pairs that found no site: not drafted again
        for _ in range(count):
            spread = diversity_score(vectors)
            best: Proposal | None = None
            for _draft in range(self.drafts_per_child):
                draft = self._draft(parents, bandit, rng, tags, refused, result.refusals)
                if draft is None or draft[0].blueprint_id in taken:
                    continue
                child, kind, parent_draw, operator_draw = draft
                vector = ir_features(child.ir)
                bonus = self.sampler.bonus(vector, vectors, weight, spread)
                proposal = Proposal(child, kind, parent_draw, operator_draw, bonus, vector)
                if best is None or proposal.score > best.score:
                    best = proposal
            if best is not None:
                result.proposals.append(best)
                taken.add(best.child.blueprint_id)
                vectors.append(best.vector)
        return result

    def _draft(self, parents: Sequence[Parent], bandit: ThompsonBandit, rng: random.Random, tags: tuple[str, ...],
               refused: set[tuple[str, str]], refusals: Counter[str]) -> tuple[Child, str, float, float] | None:
        tested = [i for i, p in enumerate(parents) if p.tested]
        untested = [i for i, p in enumerate(parents) if not p.tested]
        pool = untested if not tested or (untested and rng.random() < self.explore) else tested
        draws = [(rng.betavariate(1 + parents[i].evidence.successes, 1 + parents[i].evidence.failures), i)
                 for i in pool]
        parent_draw, index = max(draws)
        parent = parents[index]
        kind = parent_kind(parent.ir)
        usable = [name for name, op in self.operators.items()
                  if parent.ir.input.layout in op.layouts and (parent.blueprint_id, name) not in refused]
        if not usable:
            return None
        name, operator_draw = bandit.choose(kind, usable, rng)
        try:
            child = mutate(parent.ir, self.operators[name], rng, max_parameters=self.max_parameters,
                           attempts=self.attempts, tags=tags)
        except MutationRefused:
            refused.add((parent.blueprint_id, name))
            refusals[name] += 1
            return None
        return child, kind, parent_draw, operator_draw
