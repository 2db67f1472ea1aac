"""Tamiyo's budget economy: domains, Prime's shares, allocations within the pool, proposal funding, zones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_contracts import HealthSummaryReport, ScaffoldRequest, StrategicOpportunityProposal
from esper_tamiyo.domains import UNASSIGNED_DOMAIN, DomainsFileError, HierarchicalControlConfig, load_domains
from esper_tamiyo.economy import BudgetEconomy, Region
from esper_tamiyo.prime import MICRO, TamiyoPrime, score_report, split_by_weight
from esper_tamiyo.zones import ProtectedZones

ROOT = Path(__file__).resolve().parents[3]
LLM = load_domains(ROOT / "recipes" / "configs" / "domains-llm.yaml")


def _sop(region: str, ask: float, roi: float, pid: str) -> StrategicOpportunityProposal:
    return StrategicOpportunityProposal(proposal_id=pid, region_id=region, epoch=1, opportunity="plateau",
                                        plan=["germinate"], ask=ask, expected_roi=roi)


def _report(domain: str, *, trend: float = 0.0, dead: float = 0.0, max_g: float = 1.0) -> HealthSummaryReport:
    return HealthSummaryReport(region_id=domain, domain_id=domain, window=1, epoch=1, seed_count=10,
                               mean_gradient_norm=1.0, max_gradient_norm=max_g, mean_dead_node_ratio=dead,
                               loss_trend=trend)


def test_llm_domains_file_matches_module_paths() -> None:
    assert list(LLM.domains) == ["embedding_layer", "early_transformer_blocks", "mid_transformer_blocks",
                                 "final_layers"]
    assert LLM.tamiyo_prime.atp_global_budget == 50
    assert LLM.domain_of("transformer.wte") == "embedding_layer"
    assert LLM.domain_of("transformer.h.1.mlp.c_fc") == "early_transformer_blocks"
    assert LLM.domain_of("transformer.h.7.attn") == "mid_transformer_blocks"
    assert LLM.domain_of("transformer.h.10.attn") == UNASSIGNED_DOMAIN  # h.1 is not a prefix of h.10
    assert LLM.domain_of("lm_head") == "final_layers"
    glob = HierarchicalControlConfig(domains={"blocks": {"module_paths": ["blocks.*"]}})
    assert glob.domain_of("blocks.3.mlp") == "blocks"


def test_bad_domains_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(DomainsFileError, match="not found"):
        load_domains(tmp_path / "none.yaml")
    dup = tmp_path / "dup.yaml"
    dup.write_text("hierarchical_control:\n  domains:\n    a: {module_paths: [x]}\n    b: {module_paths: [x]}\n")
    with pytest.raises(DomainsFileError, match="listed by both"):
        load_domains(dup)
    greedy = tmp_path / "greedy.yaml"
    greedy.write_text("hierarchical_control:\n  tamiyo_prime: {emergency_fraction: 0.5, "
                      "proposal_reserve_fraction: 0.6}\n")
    with pytest.raises(DomainsFileError, match="leaves nothing"):
        load_domains(greedy)


def test_criticality_is_deterministic_and_ranks_trouble_higher() -> None:
    calm = score_report(_report("a", trend=-0.05))
    stuck = score_report(_report("a", trend=0.0, dead=0.5))
    burning = score_report(_report("a", trend=0.1, dead=0.5, max_g=6.0))
    assert 0 <= calm.score < stuck.score < burning.score <= 1
    assert score_report(_report("a", trend=0.1)) == score_report(_report("a", trend=0.1))


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 10**12), weights=st.lists(st.floats(0, 1e6), min_size=1, max_size=30))
def test_split_by_weight_is_exact(total: int, weights: list[float]) -> None:
    parts = split_by_weight(total, {f"k{i}": w for i, w in enumerate(weights)})
    assert all(p >= 0 for p in parts.values())
    assert sum(parts.values()) == (total if sum(weights) > 0 else 0)


def test_prime_moves_budget_towards_the_critical_domain() -> None:
    prime = TamiyoPrime(LLM)
    domains = list(LLM.domains)
    even, _ = prime.domain_budgets(40 * MICRO, domains)
    assert even["mid_transformer_blocks"] > even["final_layers"]  # priors 20 vs 5 when nothing is known
    for _ in range(4):
        for d in domains:
            prime.observe(_report(d, trend=0.2, dead=0.6, max_g=8.0) if d == "final_layers" else _report(d))
    focused, crit = prime.domain_budgets(40 * MICRO, domains)
    assert crit["final_layers"].score > crit["embedding_layer"].score
    assert focused["final_layers"] > even["final_layers"]
    assert sum(focused.values()) == 40 * MICRO


regions_st = st.lists(
    st.tuples(st.sampled_from([*LLM.domains, UNASSIGNED_DOMAIN]), st.integers(0, 50)), min_size=1, max_size=25
)
sops_st = st.lists(
    st.tuples(st.integers(0, 30), st.floats(0.001, 40), st.floats(-1, 10), st.text("abc", min_size=1, max_size=3)),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(regions=regions_st, sops=sops_st, posture=st.sampled_from(["conservative", "balanced", "aggressive"]),
       scaffolds=st.lists(st.tuples(st.integers(0, 30), st.floats(0, 100)), max_size=5))
def test_allocations_never_exceed_the_pool(regions: list[tuple[str, int]], sops: list[tuple[int, float, float, str]],
                                           posture: str, scaffolds: list[tuple[int, float]]) -> None:
    economy = BudgetEconomy(LLM)
    known = {f"r{i}": Region(f"r{i}", d, n) for i, (d, n) in enumerate(regions)}
    books = economy.mint(3, list(known.values()), posture)
    proposals = [_sop(f"r{i}", ask, roi, f"p{j}-{pid}") for j, (i, ask, roi, pid) in enumerate(sops)]
    decisions = economy.settle_proposals(books, proposals, known)
    for i, tranche in scaffolds:
        if f"r{i}" in known:
            economy.grant_emergency(books, f"r{i}", tranche)
    assert len(decisions) == len(proposals)  # every proposal gets exactly one answer
    assert {d.proposal_id for d in decisions} == {p.proposal_id for p in proposals}
    assert books.allocated() <= books.pool and books.unallocated() >= 0 and books.emergency_left() >= 0
    commands = books.commands(list(known.values()))
    assert math.fsum(c.atp_budget for c in commands) <= books.pool / MICRO + 1e-9
    for d in decisions:
        if d.region_id not in known:
            assert not d.approved and "unknown region" in d.reason


def test_proposals_are_funded_by_return_per_ask_deterministically() -> None:
    economy = BudgetEconomy(LLM)
    known = {"transformer.h.0": Region("transformer.h.0", "early_transformer_blocks", 10),
             "lm_head": Region("lm_head", "final_layers", 4)}
    books = economy.mint(1, list(known.values()))
    capacity = books.unallocated() / MICRO  # the 20% reserve: 10 ATP
    proposals = [
        _sop("lm_head", capacity * 0.6, 1.0, "low-ratio"),
        _sop("transformer.h.0", capacity * 0.5, 5.0, "best"),
        _sop("lm_head", capacity * 0.5, 2.5, "tie-b"),
        _sop("lm_head", capacity * 0.5, 2.5, "tie-a"),
        _sop("nowhere", 1.0, 9.0, "ghost"),
    ]
    answers = {d.proposal_id: d for d in economy.settle_proposals(books, proposals, known)}
    assert answers["best"].approved and answers["tie-a"].approved  # tie broken by id
    assert not answers["tie-b"].approved and "exceeds" in answers["tie-b"].reason
    assert not answers["low-ratio"].approved
    assert not answers["ghost"].approved and "unknown region 'nowhere'" in answers["ghost"].reason
    again = BudgetEconomy(LLM)
    books2 = again.mint(1, list(known.values()))
    shuffled = again.settle_proposals(books2, list(reversed(proposals)), known)
    assert {d.proposal_id: d for d in shuffled} == answers
    assert books2.grants == books.grants


def test_scaffold_zone_ring_lifts_one_clean_checkpoint_after_sunset() -> None:
    zones = ProtectedZones(ring_radius=1)
    order = ["l0", "l1", "l2", "l3"]
    req = ScaffoldRequest(request_id="s1", region_id="l2", blueprint_id="bp", reason="melting", ttl_epochs=3)
    zone = zones.open_scaffold_zone(req, epoch=5, ordered_regions=order)
    assert zone.module_patterns == ["l1", "l2", "l3"] and zone.expires_after_epoch is None
    assert zones.covers("l1.chunk") and not zones.covers("l0")
    assert zones.observe_boundary(6, [("l2", "bp")], clean_checkpoint=True) == []
    assert zones.observe_boundary(7, [], clean_checkpoint=True) == []  # sunset now; this checkpoint is not after it
    assert zones.observe_boundary(8, [], clean_checkpoint=False) == []  # not clean: the ring stays
    lifted = zones.observe_boundary(9, [], clean_checkpoint=True)
    assert [z.zone_id for z in lifted] == ["scaffold-s1"] and lifted[0].expires_after_epoch == 9
    assert not zones.covers("l2")


def test_ttl_sunsets_a_scaffold_that_never_went_live() -> None:
    zones = ProtectedZones(ring_radius=0)
    req = ScaffoldRequest(request_id="s2", region_id="l0", blueprint_id="bp", reason="r", ttl_epochs=2)
    zones.open_scaffold_zone(req, epoch=1, ordered_regions=["l0"])
    assert zones.observe_boundary(2, [], clean_checkpoint=True) == []
    assert zones.observe_boundary(3, [], clean_checkpoint=True) == []  # ttl expires at 3
    assert len(zones.observe_boundary(4, [], clean_checkpoint=True)) == 1


def test_volatile_zone_has_hysteresis() -> None:
    zones = ProtectedZones(volatile_enter=0.6, volatile_exit=0.3)
    pats = {"mid": ["transformer.h.4"]}
    assert zones.observe_volatility(1, {"mid": 0.5}, pats) == []
    assert [z.zone_id for z in zones.observe_volatility(2, {"mid": 0.7}, pats)] == ["volatile-mid"]
    zones.observe_volatility(3, {"mid": 0.4}, pats)  # between the thresholds: still protected
    assert zones.observe_boundary(3, [], clean_checkpoint=True) == []
    zones.observe_volatility(4, {"mid": 0.2}, pats)
    assert zones.observe_boundary(4, [], clean_checkpoint=True) == []
    assert [z.zone_id for z in zones.observe_boundary(5, [], clean_checkpoint=True)] == ["volatile-mid"]


def test_a_redelivered_summary_counts_once() -> None:
    prime = TamiyoPrime(LLM)
    report = _report("final_layers", trend=0.2)
    prime.observe(report)
    prime.observe(report)
    prime.observe(_report("final_layers", trend=0.0).model_copy(update={"window": 2}))
    assert len([d for d, _ in prime._recent if d == "final_layers"]) == 2
