"""Proposal rounds: children of validated parents go to Urza with their lineage, never more than the pipeline takes."""

from __future__ import annotations

import random

from esper_contracts import KernelStatus, Outcome, PipelineBacklog
from esper_karn.history import KarnHistory
from esper_karn.pacing import Pacing
from esper_karn.tinkerer import Tinkerer

from .conftest import FakeUrza, attention, low_rank, residual_mlp
from .test_history import field_report


def tinkerer(history: KarnHistory, urza: FakeUrza, **kwargs: object) -> Tinkerer:
    return Tinkerer(history, urza, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def test_a_round_mutates_validated_parents_and_submits_children_with_lineage(history: KarnHistory,
                                                                             urza: FakeUrza) -> None:
    good, unjudged = residual_mlp(), low_rank()
    for ir in (good, unjudged):
        urza.submit_blueprint(ir)
    urza.judge(good.ir_hash())
    report = tinkerer(history, urza).run_round(3, tags=("evolve_r1",))
    assert report.parents == 1 and len(report.submitted) == 3, report
    for child in report.submitted:
        record = urza.records[child.blueprint_id]
        assert record.ir.parent_ids == [good.ir_hash()] and record.ir.mutation is not None
        assert record.ir.mutation.operator == child.operator and record.ir.mutation.generation == 1
        assert "karn" in record.ir.tags and "evolve_r1" in record.ir.tags
    assert set(history.unresolved_children()) == {c.blueprint_id for c in report.submitted}
    assert history.counts()["library"] == 5


def test_nothing_to_mutate_until_a_parent_validates(history: KarnHistory, urza: FakeUrza) -> None:
    urza.submit_blueprint(residual_mlp())
    report = tinkerer(history, urza).run_round()
    assert report.submitted == [] and report.reason == "no validated parent to mutate"


def test_backpressure_holds_children_back(history: KarnHistory, urza: FakeUrza) -> None:
    parent = residual_mlp()
    urza.submit_blueprint(parent)
    urza.judge(parent.ir_hash())
    t = tinkerer(history, urza, pacing=Pacing(max_pipeline_backlog=4, max_unresolved_children=3))
    urza.pending = PipelineBacklog(compilation_pending=3, validation_pending=1)
    full = t.run_round(2)
    assert full.submitted == [] and full.allowance == 0 and "pipeline full" in full.reason
    urza.pending = PipelineBacklog(compilation_pending=2, validation_pending=1)
    assert len(t.run_round(5).submitted) == 1  # room for one job
    urza.pending = PipelineBacklog(compilation_pending=0, validation_pending=0)
    assert len(t.run_round(5).submitted) == 2  # three children unjudged at most
    held = t.run_round(5)
    assert held.submitted == [] and "3 of Karn's children not judged yet" in held.reason
    urza.reachable = False
    assert "unreachable" in t.run_round(1).reason


def test_urza_s_verdicts_reach_karn_even_without_the_bus(history: KarnHistory, urza: FakeUrza) -> None:
    parent = residual_mlp()
    urza.submit_blueprint(parent)
    urza.judge(parent.ir_hash())
    t = tinkerer(history, urza)
    a, b = (c.blueprint_id for c in t.run_round(2).submitted)
    urza.judge(a, KernelStatus.VALIDATED, latency=0.5)
    urza.judge(b, KernelStatus.FAILED)
    assert t.refresh_unresolved() == []
    found = history.outcomes()
    assert found[a].validated is True and found[a].latency_ratio == 0.5 and found[b].validated is False


def test_outcomes_steer_the_policy_and_the_parents(history: KarnHistory, urza: FakeUrza) -> None:
    parent = residual_mlp()
    urza.submit_blueprint(parent)
    urza.judge(parent.ir_hash())
    t = tinkerer(history, urza, pacing=Pacing(64, 64))
    children = t.run_round(6).submitted
    winners = [c for c in children if c.operator == children[0].operator]
    for i, child in enumerate(children):
        urza.judge(child.blueprint_id)
        outcome = Outcome.FOSSILIZED if child in winners else Outcome.CULLED
        history.record_field_report(field_report(child.blueprint_id, outcome, report_id=f"r{i}"))
    t.refresh_unresolved()
    bandit = t.policy()
    kind = "mlp:BD"
    best = bandit.posterior(kind, children[0].operator)
    others = [bandit.posterior(kind, c.operator) for c in children if c not in winners]
    assert others and all(best.mean > o.mean for o in others)
    # A fossilized child is now a better parent than its culled siblings.
    scored = {p.blueprint_id: p.evidence for p in t.parents()}
    assert scored[winners[0].blueprint_id].successes > max(scored[c.blueprint_id].successes for c in children
                                                           if c not in winners)


def test_parents_can_be_restricted_to_an_interface(history: KarnHistory, urza: FakeUrza) -> None:
    a, b = residual_mlp(), attention()
    for ir in (a, b):
        urza.submit_blueprint(ir)
        urza.judge(ir.ir_hash())
    report = tinkerer(history, urza).run_round(2, layout="BTD")
    assert report.parents == 1 and all(c.parent_id == b.ir_hash() for c in report.submitted)
