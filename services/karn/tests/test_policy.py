"""The mutation policy learns from outcomes; the diversity sampler pays for novelty only when variety falls."""

from __future__ import annotations

import random

import pytest

from esper_contracts import Outcome
from esper_karn.architect import Architect, Parent
from esper_karn.bandit import ThompsonBandit
from esper_karn.diversity import DiversitySampler, diversity_score, novelty
from esper_karn.features import FEATURE_NAMES, ir_features, parent_kind
from esper_karn.rewards import BlueprintOutcome, Evidence, RewardWeights, evidence

from .conftest import attention, low_rank, residual_mlp


def test_outcomes_become_weighted_evidence() -> None:
    w = RewardWeights()
    assert evidence(BlueprintOutcome()) == Evidence(0.0, 0.0)  # nothing known: no evidence either way
    rejected = evidence(BlueprintOutcome(validated=False))
    assert (rejected.successes, rejected.failures) == (0.0, w.validation)
    kept = evidence(BlueprintOutcome(validated=True, outcomes=(Outcome.FOSSILIZED,)))
    assert kept.successes == w.validation + w.chosen + w.field_report and kept.failures == 0.0
    rolled = evidence(BlueprintOutcome(validated=True, outcomes=(Outcome.ROLLED_BACK, Outcome.CANCELLED)))
    assert rolled.failures == w.field_report * w.rolled_back_factor  # cancelled is no evidence
    slower = evidence(BlueprintOutcome(validated=True, latency_ratio=2.0, memory_ratio=1.0))
    assert slower.successes == pytest.approx(w.validation + 0.5 * w.latency + w.memory)


def test_thompson_sampling_prefers_the_operator_that_fossilizes() -> None:
    good, bad = Evidence(), Evidence()
    for _ in range(10):
        good += evidence(BlueprintOutcome(validated=True, outcomes=(Outcome.FOSSILIZED,)))
        bad += evidence(BlueprintOutcome(validated=True, outcomes=(Outcome.CULLED,)))
    bandit = ThompsonBandit({("mlp:BD", "change_width"): good, ("mlp:BD", "drop_residual"): bad})
    rng = random.Random(0)
    picks = [bandit.choose("mlp:BD", ["change_width", "drop_residual"], rng)[0] for _ in range(200)]
    assert picks.count("change_width") > 190
    # An unseen kind borrows each operator's pooled record instead of starting blind.
    unseen = [bandit.choose("mlp:BCHW", ["change_width", "drop_residual"], rng)[0] for _ in range(400)]
    assert unseen.count("change_width") > 240
    # Culled children still validated and were chosen: partly successful, but clearly worse.
    assert bandit.posterior("mlp:BD", "change_width").mean > 0.9
    assert bandit.posterior("mlp:BD", "drop_residual").mean < 0.5


def test_without_evidence_every_operator_gets_explored() -> None:
    bandit = ThompsonBandit({})
    rng = random.Random(1)
    ops = ["a", "b", "c", "d"]
    picks = {bandit.choose("mlp:BD", ops, rng)[0] for _ in range(100)}
    assert picks == set(ops)


def test_features_see_the_design_not_its_names() -> None:
    a, b = residual_mlp(), residual_mlp().model_copy(update={"name": "renamed"})
    assert ir_features(a) == ir_features(b) and len(ir_features(a)) == len(FEATURE_NAMES)
    assert ir_features(residual_mlp(hidden=32)) != ir_features(a)
    assert parent_kind(a) == "mlp:BD" and parent_kind(attention()) == "attention:BTD"


def test_diversity_and_novelty() -> None:
    same = [ir_features(residual_mlp())] * 4
    varied = [ir_features(p) for p in (residual_mlp(), low_rank(), residual_mlp(hidden=64), attention())]
    assert diversity_score(same) == 0.0 < diversity_score(varied)
    assert diversity_score(same[:1]) == 0.0
    assert novelty(ir_features(residual_mlp()), same) == 0.0 < novelty(ir_features(low_rank()), same)


def test_the_novelty_bonus_switches_on_when_diversity_falls() -> None:
    sampler = DiversitySampler(tolerance=0.05, scale=1.0)
    assert sampler.observe(2.0) == 0.0  # the best seen so far: no bonus
    assert sampler.observe(1.95) == 0.0  # within the tolerance
    assert sampler.observe(1.0) == pytest.approx(0.45)  # fell by half: bonus weight 0.5 - 0.05
    assert sampler.reference == 2.0
    lib = [ir_features(residual_mlp())] * 3
    far, near = ir_features(attention()), ir_features(residual_mlp())
    assert sampler.bonus(far, lib, 0.45, 1.0) > sampler.bonus(near, lib, 0.45, 1.0) == 0.0
    assert sampler.bonus(far, lib, 0.0, 1.0) == 0.0


def _parents() -> list[Parent]:
    return [Parent(p.ir_hash(), p, Evidence()) for p in (residual_mlp(), low_rank())]


def test_a_round_proposes_new_children_of_the_parents() -> None:
    parents = _parents()
    library = {p.blueprint_id: ir_features(p.ir) for p in parents}
    result = Architect().propose(parents, library, {}, 5, random.Random(0), tags=("round_1",))
    ids = [p.child.blueprint_id for p in result.proposals]
    assert len(ids) == 5 == len(set(ids)) and not set(ids) & set(library)
    assert {p.child.parent_id for p in result.proposals} <= set(library)
    assert all("round_1" in p.child.ir.tags for p in result.proposals)
    assert result.diversity == diversity_score(list(library.values()))


def test_good_parents_and_good_operators_are_chosen_more() -> None:
    good, plain = residual_mlp(), low_rank()
    fossils = Evidence(20.0, 0.0)
    parents = [Parent(good.ir_hash(), good, fossils), Parent(plain.ir_hash(), plain, Evidence(0.0, 20.0))]
    arms = {("mlp:BD", "swap_activation"): Evidence(30.0, 0.0)}
    arms |= {("mlp:BD", op): Evidence(0.0, 30.0) for op in ("change_width", "add_hidden_layer", "drop_residual")}
    result = Architect().propose(parents, {}, arms, 6, random.Random(3))
    assert all(p.child.parent_id == good.ir_hash() for p in result.proposals)
    assert sum(p.child.operator == "swap_activation" for p in result.proposals) >= 3


def test_tested_parents_are_preferred_and_untested_ones_still_explored() -> None:
    good, plain = residual_mlp(), low_rank()
    others = [residual_mlp(hidden=h) for h in (4, 24, 32, 48, 64, 96)]
    parents = [Parent(good.ir_hash(), good, Evidence(9.5, 6.0), tested=True)]
    parents += [Parent(p.ir_hash(), p, Evidence(1.0, 0.0)) for p in (plain, *others)]
    result = Architect(explore=0.25, drafts_per_child=1).propose(parents, {}, {}, 40, random.Random(5))
    from_good = sum(p.child.parent_id == good.ir_hash() for p in result.proposals)
    # One tested parent against seven untested ones, each looking perfect on paper (validated, never
    # culled): the tested one still gets most children (those its distinct mutations allow), the
    # untested ones about a quarter of the drafts.
    assert from_good / len(result.proposals) > 0.6
    assert from_good < len(result.proposals)


def test_a_collapsed_library_pays_for_novel_children() -> None:
    parents = _parents()
    sampler = DiversitySampler()
    architect = Architect(sampler=sampler)
    rich = {p.blueprint_id: ir_features(p.ir) for p in parents} | {"att": ir_features(attention())}
    assert architect.propose(parents, rich, {}, 1, random.Random(0)).bonus_weight == 0.0
    collapsed = {str(i): ir_features(residual_mlp()) for i in range(6)} | {"lr": ir_features(low_rank())}
    result = architect.propose(parents, collapsed, {}, 3, random.Random(0))
    assert result.bonus_weight > 0.0
    assert any(p.novelty_bonus > 0.0 for p in result.proposals)


def test_no_parents_no_children() -> None:
    assert Architect().propose([], {}, {}, 3, random.Random(0)).proposals == []
