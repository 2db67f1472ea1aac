"""Tamiyo as a service on the memory bus: cycles, proposals, zones, and the REST API's answers to bad input."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import (
    ArtifactId,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    PolicyUpdate,
    ScaffoldRequest,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    SystemStatePacket,
    TensorInterface,
)
from esper_oona import connect
from esper_tamiyo.service import create_service

ART = ArtifactId("a" * 64, "cpu", "eager", "b" * 12)


class OneKernel:
    """A kernel source with one validated kernel fitting every interface."""

    def query(self, query: KernelQuery) -> KernelQueryResult:
        artifact = CompiledKernelArtifact(artifact_id=ART, blueprint_id="a" * 64, hardware="cpu", pipeline="eager",
                                          toolchain_hash="b" * 12, status="VALIDATED", input_shape=[1, 8],
                                          tags=["mlp"])
        return KernelQueryResult(artifacts=[artifact], total=1)


class Collector:
    """Everything published on some topics, by topic."""

    def __init__(self, bus: Any, topics: list[str]) -> None:
        self.got: dict[str, list[Any]] = {t: [] for t in topics}
        self._cond = threading.Condition()
        for topic in topics:
            bus.subscribe(topic, f"probe-{uuid.uuid4().hex[:6]}", self._handler(topic))

    def _handler(self, topic: str) -> Any:
        def handle(envelope: Any) -> None:
            with self._cond:
                self.got[topic].append(envelope)
                self._cond.notify_all()
        return handle

    def wait(self, topic: str, predicate: Any, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([e.payload for e in self.got[topic]]):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting on {topic}: {[e.payload for e in self.got[topic]]}"
                self._cond.wait(left)
            return [e.payload for e in self.got[topic]]


def packet(epoch: int, val_loss: float = 1.0, stages: dict[str, SeedStage] | None = None) -> SystemStatePacket:
    stages = stages or {}
    seeds = [SeedTelemetry(layer_id=layer, seed_index=i, epoch=epoch,
                           stage=stages.get(f"{layer}[{i}]", SeedStage.DORMANT),
                           interface=TensorInterface(layout="BD", features=8), gradient_norm=0.1 * (i + 1))
             for layer in ("fc1", "fc2") for i in range(4)]
    return SystemStatePacket(run_id="run-1", epoch=epoch, train_loss=val_loss, val_loss=val_loss, val_accuracy=0.5,
                             seeds=seeds)


@pytest.fixture
def tamiyo(tmp_path: Path) -> Iterator[tuple[Any, Any, Collector, TestClient]]:
    url = f"memory://tamiyo-{uuid.uuid4().hex[:8]}"
    domains = tmp_path / "domains.yaml"
    domains.write_text(
        "hierarchical_control:\n"
        "  tamiyo_prime: {atp_global_budget: 20, emergency_fraction: 0.1, proposal_reserve_fraction: 0.5}\n"
        "  domains:\n"
        "    early: {module_paths: [fc1], atp_initial_budget: 1}\n"
        "    late: {module_paths: [fc2], atp_initial_budget: 1}\n"
    )
    service = create_service(bus_url=url, domains_file=str(domains), kernels=OneKernel(),
                             policy={"warmup_epochs": 1, "plateau_patience_epochs": 2})
    bus = connect(url, producer_name="probe")
    probe = Collector(bus, ["control.adaptation.signals", "control.budget.allocations", "control.proposals.decisions",
                            "control.protected_zones"])
    with TestClient(service.app) as client:
        yield service, bus, probe, client
    bus.close()


def test_packet_gets_an_answer_allocations_and_a_status(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    sent = bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    answer = probe.got["control.adaptation.signals"][0]
    assert answer.correlation_id == sent.correlation_id and answer.payload.epoch == 1
    allocations = probe.wait("control.budget.allocations", lambda a: len(a) == 2)
    assert {a.region_id for a in allocations} == {"fc1", "fc2"} and all(a.cycle == 1 for a in allocations)
    assert sum(a.atp_budget for a in allocations) <= 20.0 * (1 - 0.1 - 0.5) + 1e-9
    assert {a.domain_id for a in allocations} == {"early", "late"}
    status = client.get("/api/v1/system/status").json()
    assert status["status"] == "TRAINING" and status["current_epoch"] == 1 and status["validation_accuracy"] == 0.5
    assert status["active_adaptations"] == 0 and status["active_seed_ids"] == []


def test_plateau_germinates_and_the_decision_log_shows_why(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    for epoch in range(1, 5):
        bus.publish("telemetry.system.state", packet(epoch), key="run-1")  # flat loss: a plateau
    signals = probe.wait("control.adaptation.signals", lambda s: any(x.commands for x in s))
    germinate = next(c for s in signals for c in s.commands if c.command.value == "GERMINATE")
    assert germinate.kernel_artifact_id == ART
    adaptations = client.get("/api/v1/decisions", params={"kind": "adaptation"}).json()
    latest = next(d for d in adaptations if d["outputs"]["commands"])
    assert "plateau" in latest["outputs"]["commands"][0]["reason"] and latest["inputs"]["seeds"] == 8


def test_proposals_are_funded_best_first_and_unknown_regions_rejected_on_the_bus(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)

    def sop(pid: str, region: str, ask: float, roi: float) -> StrategicOpportunityProposal:
        return StrategicOpportunityProposal(proposal_id=pid, region_id=region, epoch=1, opportunity="stalled",
                                            plan=["germinate"], ask=ask, expected_roi=roi)

    bus.publish("control.proposals", sop("ghost", "transformer.h.99", 1.0, 1.0))
    (rejected,) = probe.wait("control.proposals.decisions", lambda d: len(d) == 1)
    assert not rejected.approved and "unknown region 'transformer.h.99'" in rejected.reason
    # The reserve is 10 ATP: the better ratio wins, the other no longer fits.
    bus.publish("control.proposals", sop("big", "fc1", 8.0, 1.0))
    bus.publish("control.proposals", sop("small", "fc2", 6.0, 3.0))
    time.sleep(0.2)
    bus.publish("telemetry.system.state", packet(2), key="run-1")
    decisions = {d.proposal_id: d for d in probe.wait("control.proposals.decisions", lambda d: len(d) == 3)}
    assert decisions["small"].approved and decisions["small"].granted == pytest.approx(6.0)
    assert not decisions["big"].approved and "exceeds" in decisions["big"].reason
    cycle2 = probe.wait("control.budget.allocations", lambda a: sum(x.cycle == 2 for x in a) == 2)
    fc2 = next(a for a in cycle2 if a.cycle == 2 and a.region_id == "fc2")
    fc1 = next(a for a in cycle2 if a.cycle == 2 and a.region_id == "fc1")
    assert fc2.atp_budget == pytest.approx(fc1.atp_budget + 6.0)
    assert sum(a.atp_budget for a in cycle2 if a.cycle == 2) <= 20.0 * 0.9 + 1e-9
    budgets = client.get("/api/v1/budgets").json()
    assert budgets["cycle"]["regions"]["fc2"]["granted"] == pytest.approx(6.0)
    assert budgets["cycle"]["allocated"] <= budgets["cycle"]["pool"]


def test_emergency_scaffold_gets_energy_a_protected_ring_and_its_germination(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    bus.publish("control.scaffold.requests", ScaffoldRequest(request_id="s1", region_id="fc2", blueprint_id="bp",
                                                             reason="loss spikes", ttl_epochs=2, emergency=True))
    time.sleep(0.2)
    bus.publish("telemetry.system.state", packet(2), key="run-1")
    (zone,) = probe.wait("control.protected_zones", lambda z: len(z) == 1)
    assert zone.zone_id == "scaffold-s1" and zone.module_patterns == ["fc2"] and zone.ring_patterns == ["fc1"]
    signal = probe.wait("control.adaptation.signals", lambda s: len(s) == 2)[1]
    scaffold = [c for c in signal.commands if "scaffold" in c.selected_for_tags]
    assert [(c.layer_id, c.command.value) for c in scaffold] == [("fc2", "GERMINATE")]
    # The policy germinates nowhere in the zone or its ring (both layers here).
    assert all("scaffold" in c.selected_for_tags for c in signal.commands if c.command.value == "GERMINATE")
    budgets = client.get("/api/v1/budgets").json()
    assert budgets["cycle"]["regions"]["fc2"]["emergency"] == pytest.approx(1.0)  # half the 2-ATP emergency pool
    assert budgets["scaffold_emergency_left"] == pytest.approx(1.0)  # the steward's pool of 2, less the ask of 1
    for epoch in (3, 4, 5):
        bus.publish("telemetry.system.state", packet(epoch), key="run-1")
    zones = probe.wait("control.protected_zones", lambda z: len(z) == 2)
    assert zones[1].zone_id == "scaffold-s1" and zones[1].expires_after_epoch is not None
    assert client.get("/api/v1/budgets").json()["scaffold_escalations"][0]["region_id"] == "fc2"  # never went live


def test_scaffold_requests_refused_with_the_reason(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    for rid, region, ask in (("u", "nowhere", 1.0), ("big", "fc1", 5.0), ("ok", "fc2", 1.0), ("again", "fc2", 0.5)):
        bus.publish("control.scaffold.requests", ScaffoldRequest(request_id=rid, region_id=region, blueprint_id="bp",
                                                                 reason="r", ttl_epochs=4, ask=ask))
    time.sleep(0.3)
    bus.publish("telemetry.system.state", packet(2), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 2)
    answers = {d["inputs"]["request_id"]: d["outputs"] for d in
               client.get("/api/v1/decisions", params={"kind": "scaffold"}).json()}
    assert "unknown region" in answers["u"]["reason"] and not answers["u"]["accepted"]
    assert "emergency pool holds 2" in answers["big"]["reason"] and answers["big"]["energy_granted"] == 0
    assert answers["ok"]["accepted"] and answers["ok"]["emergency_left"] == pytest.approx(1.0)
    assert "already holds a scaffold" in answers["again"]["reason"]


def test_policy_post_validates_and_applies(tamiyo: Any) -> None:
    service, _bus, _probe, client = tamiyo
    too_much = client.post("/api/v1/policy", json={"resource_budget": 50})
    assert too_much.status_code == 400 and "resource_budget 50" in too_much.json()["detail"]
    bad_posture = client.post("/api/v1/policy", json={"risk_posture": "reckless"})
    assert bad_posture.status_code == 400 and "risk_posture" in bad_posture.json()["detail"]
    bad_risk = client.post("/api/v1/policy", json={"risk_thresholds": {"max_kernel_risk": 1.5}})
    assert bad_risk.status_code == 400 and "max_kernel_risk" in bad_risk.json()["detail"]
    unknown = client.post("/api/v1/policy", json={"risk_postur": "balanced"})
    assert unknown.status_code == 400 and "risk_postur" in unknown.json()["detail"]
    assert client.get("/api/v1/policy").json()["risk_posture"] == "balanced"  # nothing changed

    ok = client.post("/api/v1/policy", json={"policy_version": 2, "risk_posture": "conservative",
                                             "protected_regions": ["fc2"],
                                             "risk_thresholds": {"plateau_patience_epochs": 4}})
    assert ok.status_code == 200 and ok.json()["risk_posture"] == "conservative"
    assert service.controller.policy.config.plateau_patience_epochs == 4
    assert "fc2" in service.controller.policy.config.protected_regions
    stale = client.post("/api/v1/policy", json={"policy_version": 1})
    assert stale.status_code == 409 and "older" in stale.json()["detail"]


def test_out_of_range_policy_update_on_the_bus_goes_to_the_dead_letter_topic(tamiyo: Any) -> None:
    service, bus, _probe, _client = tamiyo
    bus.publish("control.policy.updates", PolicyUpdate(resource_budget=99))
    deadline = time.monotonic() + 10
    letters: list[Any] = []
    while not letters and time.monotonic() < deadline:
        letters = bus.read_dead_letters("control.policy.updates", timeout_s=0.5)
    assert letters and "resource_budget 99" in letters[0].error
    assert service.controller.update.resource_budget == 1.0


def test_a_malformed_scaffold_request_goes_to_the_dead_letter_topic(tamiyo: Any) -> None:
    service, bus, probe, _client = tamiyo
    good = ScaffoldRequest(request_id="ok", region_id="fc2", blueprint_id="bp", reason="r", ttl_epochs=2)
    raw = bus.publish("control.scaffold.requests", good).model_dump_json()
    bus.publish_raw("control.scaffold.requests", raw.replace('"ttl_epochs":2', '"ttl_epochs":-3').encode())
    deadline = time.monotonic() + 10
    letters: list[Any] = []
    while not letters and time.monotonic() < deadline:
        letters = bus.read_dead_letters("control.scaffold.requests", timeout_s=0.5)
    assert letters and b'"ttl_epochs":-3' in letters[0].data
    bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    assert service.controller.steward.emergency_left == pytest.approx(1.0)  # only the good one was funded


def test_seeds_are_paged_and_filtered_and_bad_filters_are_400(tamiyo: Any) -> None:
    _service, bus, probe, client = tamiyo
    bus.publish("telemetry.system.state", packet(1, stages={"fc1[2]": SeedStage.TRAINING}), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    page = client.get("/api/v1/seeds", params={"page_size": 3, "page": 2}).json()
    assert page["total"] == 8 and [s["seed_id"] for s in page["items"]] == ["fc1[3]", "fc2[0]", "fc2[1]"]
    training = client.get("/api/v1/seeds", params={"stage": "training"}).json()
    assert [s["seed_id"] for s in training["items"]] == ["fc1[2]"] and training["items"][0]["domain_id"] == "early"
    assert client.get("/api/v1/seeds", params={"region": "fc2"}).json()["total"] == 4
    assert client.get("/api/v1/seeds", params={"stage": "SLEEPING"}).status_code == 400
    assert client.get("/api/v1/seeds", params={"page": 0}).status_code == 400
    assert client.get("/api/v1/seeds", params={"page_size": "many"}).status_code == 400
    assert client.get("/api/v1/decisions", params={"kind": "gossip"}).status_code == 400
    assert client.get("/openapi.json").json()["paths"]["/api/v1/system/status"]


def test_a_redelivered_packet_is_answered_again_without_a_second_cycle(tamiyo: Any) -> None:
    service, bus, probe, _client = tamiyo
    sent = bus.publish("telemetry.system.state", packet(1), key="run-1")
    probe.wait("control.adaptation.signals", lambda s: len(s) == 1)
    decisions_before = len(service.controller.decisions)
    service._on_packet(sent)  # what a redelivery of the same message does
    signals = probe.wait("control.adaptation.signals", lambda s: len(s) == 2)
    assert signals[0] == signals[1] and len(service.controller.decisions) == decisions_before


def test_a_policy_body_over_the_limit_is_413_and_changes_nothing(tamiyo: Any) -> None:
    service, _bus, _probe, client = tamiyo
    before = client.get("/api/v1/policy").json()
    huge = {"policy_version": 2, "padding": "x" * (service.settings.max_body_bytes + 1)}
    response = client.post("/api/v1/policy", json=huge)
    assert response.status_code == 413
    assert f"exceeds the limit of {service.settings.max_body_bytes} bytes" in response.json()["detail"]
    assert client.get("/api/v1/policy").json() == before
