"""Tamiyo's running totals and how /metrics shows them: decisions, budgets minted and spent, proposals funded."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from esper_contracts import AdaptationSignal, CommandType, HealthSummaryReport, KasminaControlCommand, SeedStage
from esper_tamiyo.service import create_service
from esper_tamiyo.tally import tamiyo_families

from .test_controller import controller, packet, sop


def values(families: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[type-arg]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_cycle_counts_its_decisions_budget_and_proposals() -> None:
    c = controller()
    c.on_packet(packet(1))
    c.on_health_summary(HealthSummaryReport(region_id="a", domain_id="a", window=1, epoch=1, seed_count=4,
                                            budget_spent=0.75))
    for p in (sop("p1", "l0", 5.0, 1.0), sop("p2", "l2", 4.0, 2.0), sop("p3", "l1", 6.0, 1.5),
              sop("p4", "l2", 1.0, -1.0)):
        c.on_proposal(p)
    c.on_proposal(sop("p5", "nowhere", 1.0, 1.0))  # answered at once: unknown region
    c.on_packet(packet(2))
    got = values(tamiyo_families(c))
    assert got["esper_tamiyo_decisions_total", (("kind", "adaptation"),)] == 2
    assert got["esper_tamiyo_decisions_total", (("kind", "allocation"),)] == 2
    assert got["esper_tamiyo_decisions_total", (("kind", "proposal"),)] == 5
    assert got["esper_tamiyo_decisions_total", (("kind", "policy"),)] == 0
    # 12 ATP of reserve: p2 and p3 are funded, p1 does not fit, p4 promises nothing, p5 names no region.
    assert got["esper_tamiyo_proposals_total", (("result", "funded"),)] == 2
    assert got["esper_tamiyo_proposals_total", (("result", "unfunded"),)] == 1
    assert got["esper_tamiyo_proposals_total", (("result", "refused"),)] == 2
    assert got["esper_tamiyo_proposal_granted_atp_total", ()] == 10.0
    assert got["esper_tamiyo_budget_minted_atp_total", ()] == 60.0  # two cycles of 30 ATP
    assert got["esper_tamiyo_budget_spent_atp_total", (("domain", "a"),)] == 0.75
    books = c.books
    assert books is not None
    assert got["esper_tamiyo_budget_atp", (("part", "pool"),)] == 30.0
    assert got["esper_tamiyo_budget_atp", (("part", "unallocated"),)] == books.unallocated() / 1e6
    assert got["esper_tamiyo_health_summaries_total", ()] == 1


def test_the_commands_decided_are_counted_by_type_on_metrics() -> None:
    service = create_service(bus_url="memory://tally-commands")
    c = service.controller
    cull = KasminaControlCommand(layer_id="l0", seed_index=0, command=CommandType.CULL)
    advance = KasminaControlCommand(layer_id="l0", seed_index=1, command=CommandType.ADVANCE,
                                    target_stage=SeedStage.GRAFTING)
    c._decide = lambda p: AdaptationSignal(epoch=p.epoch, commands=[cull, advance, cull])  # type: ignore[method-assign]
    with TestClient(service.app) as client:
        c.on_packet(packet(1))
        text = client.get("/metrics").text
    got = values(list(text_string_to_metric_families(text)))
    assert got["esper_tamiyo_commands_total", (("command", "CULL"),)] == 2
    assert got["esper_tamiyo_commands_total", (("command", "ADVANCE"),)] == 1
    assert got["esper_tamiyo_commands_total", (("command", "GERMINATE"),)] == 0
    assert got["esper_tamiyo_decisions_total", (("kind", "adaptation"),)] == 1
