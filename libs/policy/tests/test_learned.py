"""Tamiyo v2: the action space, the policy artifact (JSON + float32, no pickle), the mask and the heuristic veto."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from esper_contracts import CommandType, Outcome, SeedStage, field_report
from esper_policy import LearnedPolicy, PolicyArtifactError, TamiyoConfig, build_policy, load_artifact
from esper_policy.network import random_network
from esper_policy.observation import (
    BLUEPRINTS,
    N_ACTIONS,
    OBSERVATION_SIZE,
    Action,
    ObservationBuilder,
    Op,
    decode,
    encode,
)
from esper_policy.testing import FakeLibrary, make_artifact, packet, seed

S = SeedStage
LIB = FakeLibrary([make_artifact("residual_mlp"), make_artifact("bottleneck")])
CFG = TamiyoConfig(warmup_epochs=2, max_concurrent_adaptations=1, last_germination_epoch=30)


def scripted(*actions: Action) -> tuple[LearnedPolicy, list[list[bool]]]:
    """A policy whose actor plays ``actions`` in turn (then WAIT), recording the masks it was shown."""
    queue, masks = [a.encode() for a in actions], []

    def actor(observation: list[float], mask: list[bool]) -> int:
        assert len(observation) == OBSERVATION_SIZE and len(mask) == N_ACTIONS
        masks.append(mask)
        return queue.pop(0) if queue else 0

    return LearnedPolicy(CFG, LIB, actor=actor), masks


def test_every_action_index_round_trips_through_decode_and_encode() -> None:
    assert [decode(i).encode() for i in range(N_ACTIONS)] == list(range(N_ACTIONS))
    assert decode(0).op is Op.WAIT
    assert decode(encode(Op.GERMINATE, 1, 2)) == Action(Op.GERMINATE, 1, 2)
    assert decode(encode(Op.CULL, 3)) == Action(Op.CULL, 3)
    with pytest.raises(ValueError):
        decode(N_ACTIONS)
    with pytest.raises(ValueError):
        encode(Op.GERMINATE, 0, None)


def test_the_mask_allows_germination_only_into_eligible_slots_with_a_fitting_blueprint() -> None:
    policy, masks = scripted()
    policy.decide(packet(3, 1.0, [seed("a"), seed("b", stage=S.FOSSILIZED)], acc=0.5))
    mask = masks[0]
    residual, bottleneck = BLUEPRINTS.index("residual_mlp"), BLUEPRINTS.index("bottleneck")
    assert mask[0]
    assert mask[encode(Op.GERMINATE, 0, residual)] and mask[encode(Op.GERMINATE, 0, bottleneck)]
    assert not mask[encode(Op.GERMINATE, 0, BLUEPRINTS.index("low_rank_adapter"))]  # no such kernel here
    assert not mask[encode(Op.GERMINATE, 1, residual)]  # not dormant
    assert not mask[encode(Op.CULL, 0)] and not mask[encode(Op.ADVANCE, 0)]  # nothing live


def test_a_chosen_germination_is_carried_out_with_the_chosen_blueprint() -> None:
    residual = BLUEPRINTS.index("residual_mlp")
    policy, _ = scripted(Action(Op.GERMINATE, 0, residual))
    signal = policy.decide(packet(3, 1.0, [seed("a")], acc=0.5))
    germ = [c for c in signal.commands if c.command is CommandType.GERMINATE]
    assert len(germ) == 1 and germ[0].selected_for_tags[0] == "residual_mlp"
    assert policy.vetoes == 0 and policy.last_applied == Action(Op.GERMINATE, 0, residual)


def test_the_heuristic_vetoes_germination_in_warm_up_and_during_a_rollback_storm() -> None:
    g = Action(Op.GERMINATE, 0, BLUEPRINTS.index("residual_mlp"))
    policy, _ = scripted(g, g, g)
    assert not policy.decide(packet(1, 1.0, [seed("a")], acc=0.5)).commands  # warm-up
    policy.observe_outcomes([field_report(seed_id="b[0]", outcome=Outcome.ROLLED_BACK, epoch=1, blueprint_id=None,
                                          kernel_artifact_id=None, pre_metric=0.5, post_metric=0.4,
                                          germinated_epoch=0)])
    policy.decide(packet(2, 1.0, [seed("a")], acc=0.5))  # warm-up over, but a rollback just happened
    assert policy.vetoes == 2 and "rollback storm" in policy.veto_log[-1]
    signal = policy.decide(packet(8, 1.0, [seed("a")], acc=0.5))  # the storm is over
    assert any(c.command is CommandType.GERMINATE for c in signal.commands)
    assert policy.stats()["vetoes"] == 2


def test_the_heuristic_vetoes_culling_a_seed_in_its_first_epoch_but_not_later() -> None:
    residual = BLUEPRINTS.index("residual_mlp")
    policy, _ = scripted(Action(Op.GERMINATE, 0, residual), Action(Op.CULL, 0), Action(Op.WAIT), Action(Op.CULL, 0))
    policy.decide(packet(3, 1.0, [seed("a")], acc=0.5))
    signal = policy.decide(packet(4, 1.0, [seed("a", stage=S.LOADING)], acc=0.5))
    assert not any(c.command is CommandType.CULL for c in signal.commands)
    assert policy.vetoes == 1 and "first epoch" in policy.veto_log[-1]
    policy.decide(packet(5, 1.0, [seed("a", stage=S.TRAINING)], acc=0.5))
    signal = policy.decide(packet(6, 1.0, [seed("a", stage=S.TRAINING)], acc=0.5))
    assert [c.command for c in signal.commands] == [CommandType.CULL]
    assert policy.drain_field_reports()[0].outcome is Outcome.CULLED


def test_the_heuristic_vetoes_fossilizing_a_regression() -> None:
    residual = BLUEPRINTS.index("residual_mlp")
    policy, _ = scripted(Action(Op.GERMINATE, 0, residual), Action(Op.WAIT), Action(Op.ADVANCE, 0))
    policy.decide(packet(3, 1.0, [seed("a")], acc=0.8))
    policy.decide(packet(4, 1.0, [seed("a", stage=S.TRAINING)], acc=0.8))
    # In FINE_TUNING, just above the severe-regression line the heuristic culls at, but below the tolerance.
    signal = policy.decide(packet(5, 1.0, [seed("a", stage=S.FINE_TUNING, kernel_trainable=True)], acc=0.75))
    assert not any(c.target_stage is S.FOSSILIZED for c in signal.commands)
    assert policy.vetoes == 1 and "fossilizing a regression" in policy.veto_log[-1]


def test_an_action_outside_the_mask_is_a_counted_no_op() -> None:
    policy, _ = scripted(Action(Op.CULL, 2))
    signal = policy.decide(packet(3, 1.0, [seed("a")], acc=0.5))
    assert not signal.commands and policy.invalid == 1 and policy.vetoes == 0


def test_the_policy_state_round_trips_through_json() -> None:
    policy, _ = scripted(Action(Op.GERMINATE, 0, BLUEPRINTS.index("residual_mlp")))
    policy.decide(packet(1, 1.0, [seed("a")], acc=0.5))
    state = json.loads(json.dumps(policy.state_dict()))
    other, _ = scripted()
    other.load_state_dict(state)
    assert other.state_dict() == policy.state_dict() and other.vetoes == 1


def test_an_artifact_round_trips_and_acts_only_among_allowed_actions() -> None:
    net = random_network("v7", hidden=(8, 8), seed=1)
    loaded = load_artifact(json.loads(json.dumps(net.to_artifact())))
    obs = ObservationBuilder().observe(packet(3, 1.0, [seed("a")], acc=0.5))
    np.testing.assert_array_equal(loaded.logits(obs), net.logits(obs))
    mask = [False] * N_ACTIONS
    mask[5] = True
    assert loaded.act(obs, mask) == 5 and loaded.act(obs, [False] * N_ACTIONS) == 0


@pytest.mark.parametrize(("change", "reason"), [
    (lambda a: a.update(format="pickle"), "format"),
    (lambda a: a.update(observation_size=3), "incompatible policy: observation_size"),
    (lambda a: a.update(n_actions=7), "incompatible policy: n_actions"),
    (lambda a: a.update(activation="exec"), "activation"),
    (lambda a: a["weights"].pop("0.bias"), "0.bias"),
    (lambda a: a["weights"]["0.weight"].update(data="%%%"), "not base64"),
    (lambda a: a["weights"]["1.bias"].update(
        data=base64.b64encode(np.full(N_ACTIONS, np.nan, "<f4").tobytes()).decode()), "non-finite"),
])
def test_a_malformed_or_incompatible_artifact_is_refused_with_the_reason(change, reason: str) -> None:  # type: ignore[no-untyped-def]
    artifact = random_network("v1", hidden=(8,)).to_artifact()
    change(artifact)
    with pytest.raises(PolicyArtifactError, match=reason):
        load_artifact(artifact)


def test_build_policy_learned_needs_an_artifact_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyArtifactError, match="learned_policy_path"):
        build_policy(TamiyoConfig(policy="learned"), LIB)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(random_network("v2", hidden=(4,)).to_artifact()))
    policy = build_policy(TamiyoConfig(policy="learned", learned_policy_path=str(path)), LIB)
    assert isinstance(policy, LearnedPolicy) and policy.stats()["version"] == "v2"


