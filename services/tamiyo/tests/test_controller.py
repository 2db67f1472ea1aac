"""Tamiyo's core without transport: determinism of a cycle, idempotent answers, outcomes reaching the policy."""

from __future__ import annotations

from esper_contracts import (
    FieldReport,
    HealthSummaryReport,
    Outcome,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    SystemStatePacket,
    TensorInterface,
)
from esper_policy import TamiyoConfig, build_policy
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.domains import HierarchicalControlConfig
from esper_tamiyo.kernels import NoKernels, RiskFilter

DOMAINS = HierarchicalControlConfig.model_validate({
    "tamiyo_prime": {"atp_global_budget": 30, "proposal_reserve_fraction": 0.4},
    "domains": {"a": {"module_paths": ["l0", "l1"], "atp_initial_budget": 1}, "b": {"module_paths": ["l2"]}},
})


def controller() -> TamiyoController:
    return TamiyoController(build_policy, RiskFilter(NoKernels()), TamiyoConfig(), DOMAINS)


def packet(epoch: int) -> SystemStatePacket:
    seeds = [SeedTelemetry(layer_id=f"l{j}", seed_index=i, epoch=epoch, stage=SeedStage.DORMANT,
                           interface=TensorInterface(layout="BD", features=4)) for j in range(3) for i in range(2)]
    return SystemStatePacket(run_id="r", epoch=epoch, train_loss=1.0, val_loss=1.0, seeds=seeds)


def sop(pid: str, region: str, ask: float, roi: float) -> StrategicOpportunityProposal:
    return StrategicOpportunityProposal(proposal_id=pid, region_id=region, epoch=1, opportunity="o", plan=["p"],
                                        ask=ask, expected_roi=roi)


def payloads(messages: list) -> list:  # type: ignore[type-arg]
    return [(m.topic, m.key, m.payload.model_dump(mode="json", exclude={"command_id"})) for m in messages]


def test_the_same_inputs_in_any_order_give_the_same_cycle() -> None:
    proposals = [sop("p1", "l0", 5.0, 1.0), sop("p2", "l2", 4.0, 2.0), sop("p3", "l1", 6.0, 1.5)]
    summaries = [HealthSummaryReport(region_id=d, domain_id=d, window=1, epoch=1, seed_count=2, loss_trend=t)
                 for d, t in (("a", 0.1), ("b", -0.1))]
    outs = []
    for order in (proposals, list(reversed(proposals))):
        c = controller()
        c.on_packet(packet(1))
        for s in summaries:
            c.on_health_summary(s)
        for p in order:
            c.on_proposal(p)
        outs.append(payloads(c.on_packet(packet(2))))
    assert outs[0] == outs[1]
    decided = {m[2]["proposal_id"]: m[2]["approved"] for m in outs[0] if m[0] == "control.proposals.decisions"}
    assert decided == {"p2": True, "p3": True, "p1": False}  # 12 ATP of reserve: best ratios first


def test_a_redelivered_proposal_gets_the_same_answer_again() -> None:
    c = controller()
    c.on_packet(packet(1))
    assert c.on_proposal(sop("p1", "l0", 1.0, 1.0)) == []  # queued for the next cycle
    first = [m.payload for m in c.on_packet(packet(2)) if m.topic == "control.proposals.decisions"]
    again = [m.payload for m in c.on_proposal(sop("p1", "l0", 1.0, 1.0))]
    assert first == again and first[0].approved
    assert [m for m in c.on_packet(packet(3)) if m.topic == "control.proposals.decisions"] == []


def test_allocations_and_the_answer_come_out_in_order() -> None:
    topics = [m.topic for m in controller().on_packet(packet(1))]
    assert topics.index("control.budget.allocations") < topics.index("control.adaptation.signals")
    assert topics.count("control.budget.allocations") == 3


def test_outcomes_from_outside_reach_the_policy() -> None:
    c = controller()
    c.on_packet(packet(1))
    c.on_field_report(FieldReport(blueprint_id="bp", seed_id="l0[0]", pre_metric=0.5, post_metric=0.5,
                                  outcome=Outcome.ROLLED_BACK))
    assert "l0[0]" in c.policy.state_dict()["locked"]
