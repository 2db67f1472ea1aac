"""Windowed stability signals, Tamiyo's scaffold steward (funding, zones, sunsets, refunds) and the policy honouring
protected zones and their embargo rings — pure, no torch."""

from __future__ import annotations

import json
import math

import pytest

from esper_contracts import (
    CommandType,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    ProtectedZone,
    ScaffoldRequest,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    TensorInterface,
    artifact_id,
)
from esper_policy import HeuristicPolicy, TamiyoConfig
from esper_policy.scaffolds import SCAFFOLD_TAG, ScaffoldSteward, blocking_zone, ring_of
from esper_policy.stability import StabilityConfig, StabilityObservation, StabilityTracker

ORDER = ["l0", "l1", "l2", "l3"]


def feed(tracker: StabilityTracker, losses: list[float], **kw: object) -> list:
    return [tracker.observe(StabilityObservation(loss=x, **kw)) for x in losses]  # type: ignore[arg-type]


def test_calm_training_scores_one() -> None:
    signals = feed(StabilityTracker(), [1.0, 0.95, 0.9, 0.86, 0.83])
    assert signals[-1].score == pytest.approx(1.0, abs=0.05) and signals[-1].bad_windows == 0


def test_a_single_step_spike_is_not_persistent_a_lasting_one_is() -> None:
    one = feed(StabilityTracker(), [1.0, 0.9, 2.0, 0.88, 0.86])
    assert not any(s.persistent_spike for s in one)
    lasting = feed(StabilityTracker(), [1.0, 0.9, 2.0, 2.1, 2.2])
    assert lasting[-1].persistent_spike and lasting[-1].spike_windows == 3


def test_rollbacks_anomalies_and_jitter_each_lower_the_score() -> None:
    base = feed(StabilityTracker(), [1.0, 0.9, 0.85, 0.8])[-1].score
    rolled = feed(StabilityTracker(), [1.0, 0.9, 0.85, 0.8], rolled_back=True)[-1]
    assert rolled.rollback_rate > 0.8 and rolled.score < base - 0.3
    nan = StabilityTracker()
    feed(nan, [1.0, 0.9])
    after = nan.observe(StabilityObservation(loss=math.nan))
    assert after.anomaly_rate > 0 and after.score < base
    exploded = StabilityTracker()
    feed(exploded, [1.0, 0.9], gradient_norm=1.0)
    assert exploded.observe(StabilityObservation(loss=0.88, gradient_norm=50.0)).anomaly_rate > 0  # ratio explosion
    jittery = feed(StabilityTracker(), [1.0, 1.3, 0.95, 1.25, 0.9, 1.2])[-1]
    assert jittery.loss_jitter > 0.2 and jittery.score < base


def test_bad_windows_count_consecutive_bad_scores_and_state_round_trips() -> None:
    tracker = StabilityTracker(StabilityConfig(persistent_windows=1))
    signals = feed(tracker, [1.0, 0.9, 3.0, 2.9, 3.1], rolled_back=True)
    counts = [s.bad_windows for s in signals]
    assert counts[-1] >= 3 and counts[-3:] == [counts[-1] - 2, counts[-1] - 1, counts[-1]]
    assert all(s.score < tracker.config.bad_below for s in signals[-counts[-1]:])
    copy = StabilityTracker(tracker.config)
    copy.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert copy.observe(StabilityObservation(loss=3.0)) == tracker.observe(StabilityObservation(loss=3.0))


def request(rid: str, region: str, ask: float = 1.0, ttl: int = 6) -> ScaffoldRequest:
    return ScaffoldRequest(request_id=rid, region_id=region, blueprint_id="scaffold_mlp", reason="melting",
                           ttl_epochs=ttl, emergency=True, ask=ask)


def kernel(layer: str, index: int, blueprint: str) -> str | None:
    return "k-" + blueprint if blueprint.startswith("scaffold") else None


DORMANT = {r: [0, 1] for r in ORDER}


def test_steward_funds_protects_and_germinates() -> None:
    steward = ScaffoldSteward(emergency_pool=2.0, ring_radius=1)
    verdict = steward.consider(request("s1", "l2"), 5, ORDER, DORMANT, kernel)
    assert verdict.accepted and verdict.granted == 1.0 and steward.emergency_left == 1.0
    assert verdict.zone is not None and verdict.zone.module_patterns == ["l2"]
    assert verdict.zone.ring_patterns == ["l1", "l3"] == ring_of("l2", ORDER, 1)
    cmd = verdict.command
    assert cmd is not None and cmd.command is CommandType.GERMINATE and cmd.seed_id == "l2[0]"
    assert SCAFFOLD_TAG in cmd.selected_for_tags and cmd.kernel_artifact_id == "k-scaffold_mlp"
    assert steward.consider(request("s1", "l2"), 5, ORDER, DORMANT, kernel).granted == 1.0  # redelivery
    assert steward.emergency_left == 1.0  # ... not funded twice
    assert steward.scaffold_seeds() == {"l2[0]"}


@pytest.mark.parametrize(("req", "why"), [
    (request("u", "nowhere"), "unknown region"),
    (request("big", "l0", ask=2.5), "emergency pool holds 2"),
    (ScaffoldRequest(request_id="k", region_id="l0", blueprint_id="bp", reason="r", ttl_epochs=2),
     "no scaffold kernel"),
])
def test_bad_requests_are_refused_with_the_reason_and_nothing_funded(req: ScaffoldRequest, why: str) -> None:
    steward = ScaffoldSteward(emergency_pool=2.0)
    verdict = steward.consider(req, 1, ORDER, DORMANT, kernel)
    assert not verdict.accepted and why in verdict.reason and verdict.command is None
    assert steward.emergency_left == 2.0 and steward.zones() == []


def test_a_scaffolded_region_and_a_full_region_are_refused() -> None:
    steward = ScaffoldSteward(emergency_pool=3.0)
    assert steward.consider(request("a", "l1"), 1, ORDER, DORMANT, kernel).accepted
    assert "already holds" in steward.consider(request("b", "l1"), 1, ORDER, DORMANT, kernel).reason
    assert "no dormant slot" in steward.consider(request("c", "l0"), 1, ORDER, {"l0": []}, kernel).reason
    assert steward.emergency_left == 2.0


def test_weaned_scaffold_refunds_unused_energy_and_the_zone_lifts_one_clean_checkpoint_after() -> None:
    steward = ScaffoldSteward(emergency_pool=2.0)
    zone = steward.consider(request("s1", "l1", ask=2.0, ttl=8), 0, ORDER, DORMANT, kernel).zone
    assert steward.emergency_left == 0.0 and zone is not None
    for epoch in (1, 2, 3):
        assert steward.observe(epoch, {"l1[0]": SeedStage.GRAFTING}, clean_checkpoint=True).zones == []
    report = steward.observe(4, {"l1[0]": SeedStage.DORMANT}, clean_checkpoint=True)  # weaned off, left
    assert [s.outcome for s in report.sunsets] == ["weaned"] and report.escalations == []
    assert steward.emergency_left == pytest.approx(2.0 * (1 - 4 / 8))  # half the TTL unused: half back
    assert report.zones == [] and steward.zones() == [zone]  # the sunset boundary's checkpoint does not count
    assert steward.observe(5, {}, clean_checkpoint=False).zones == []  # not clean: the ring holds
    assert zone.covers("l0", 5) and zone.covers("l2[1]", 5)  # the ring, by the contract's rule
    lifted = steward.observe(6, {}, clean_checkpoint=True).zones
    assert [z.expires_after_epoch for z in lifted] == [6] and steward.zones() == []
    assert not lifted[0].covers("l1", 7)


def test_ttl_expiry_sunsets_anyway_and_escalates() -> None:
    steward = ScaffoldSteward(emergency_pool=1.0)
    steward.consider(request("s1", "l3", ttl=3), 10, ORDER, DORMANT, kernel)
    assert steward.observe(12, {"l3[0]": SeedStage.TRAINING}, clean_checkpoint=True).sunsets == []
    report = steward.observe(13, {"l3[0]": SeedStage.STABILIZATION}, clean_checkpoint=True)
    assert [s.outcome for s in report.sunsets] == ["ttl_expired"] and report.escalations == ["l3"]
    assert steward.emergency_left == pytest.approx(0.0)  # the whole TTL was used
    state = json.loads(json.dumps(steward.state_dict()))
    again = ScaffoldSteward(emergency_pool=1.0)
    again.load_state_dict(state)
    assert [z.zone_id for z in again.zones()] == ["scaffold-s1"]
    assert len(again.observe(14, {}, clean_checkpoint=True).zones) == 1


class OneMlpKernel:
    """Every query answered with one 8-wide MLP kernel."""

    artifact = CompiledKernelArtifact(artifact_id=artifact_id("c" * 64, "cpu", "eager", "0" * 12),
                                      blueprint_id="c" * 64, hardware="cpu", pipeline="eager",
                                      toolchain_hash="0" * 12, input_shape=[1, 8], tags=["mlp"])

    def query(self, query: KernelQuery) -> KernelQueryResult:
        return KernelQueryResult(artifacts=[self.artifact], total=1)


def test_the_ring_holds_against_the_policy() -> None:
    zone = ProtectedZone(zone_id="z", module_patterns=["fc2"], ring_patterns=["fc1", "fc3"], reason="scaffold",
                         scaffold_id="s", created_epoch=0)
    policy = HeuristicPolicy(TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=2), OneMlpKernel())
    policy.zones = [zone]
    seeds = [SeedTelemetry(layer_id=f"fc{i}", seed_index=0, epoch=0, stage=SeedStage.DORMANT, gradient_norm=1.0,
                           dead_node_ratio=1.0 if i < 4 else 0.0, interface=TensorInterface(layout="BD", features=8))
             for i in (1, 2, 3, 4)]
    commands = []
    for epoch in range(10):  # a flat loss: the policy germinates at the plateau
        commands = policy.decide(SystemStatePacket(run_id="r", epoch=epoch, train_loss=1.0, val_loss=1.0,
                                                   val_accuracy=0.5, seeds=seeds)).commands
        if commands:
            break
    cmd = commands[0]
    assert cmd.layer_id == "fc4"  # the sicker slots are all in the zone or its ring
    assert blocking_zone(cmd, [zone], 3) is None
    inside = cmd.model_copy(update={"layer_id": "fc3"})
    assert blocking_zone(inside, [zone], 3) is zone
    assert blocking_zone(inside.model_copy(update={"selected_for_tags": [SCAFFOLD_TAG]}), [zone], 3) is None
