"""The seed lifecycle: only LEGAL_TRANSITIONS are ever taken, whatever commands arrive; gates, embargo,
locks, fixed-function redirects, background loading and load failures."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from esper.kasmina import (
    EventKind,
    SeedFacts,
    apply_commands,
    collect_telemetry,
    drain_events,
    drain_transitions,
    kasmina_layers,
    reconstruction_loss,
    resolve_command,
    seed_parameters,
    wait_for_loads,
    wrap,
)
from esper.kasmina.lifecycle import MODULE_STAGES
from esper.kasmina.testing import SUCCESS_PATH, Driver, advance, cmd, fast_config, kernel_for, mlp, train_steps
from esper_contracts import LEGAL_TRANSITIONS, CommandType, CompiledKernelArtifact, SeedStage, fixed_function_blueprint
from esper_kernels import KernelSource, LocalKernelLibrary

S = SeedStage
BROKEN = "broken-kernel"
CRASH = "crashing-kernel"


class Crash(nn.Module):
    """A trainable kernel that passes the load probe (eval mode) and raises when training."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("kernel exploded")
        return x * self.w


class StubSource(KernelSource):
    """The local library plus a kernel that cannot load, one that crashes, and an optional gate on loads.

    It relies on KernelSource's default ``evict`` and ``describe``, and counts evictions.
    """

    def __init__(self) -> None:
        self.lib = LocalKernelLibrary()
        self.gate: threading.Event | None = None
        self.evicted: list[str] = []

    def load(self, artifact_id: str) -> nn.Module:
        if self.gate is not None:
            assert self.gate.wait(10)
        if artifact_id == BROKEN:
            raise OSError("artifact store unreachable")
        if artifact_id == CRASH:
            return Crash()
        return self.lib.load(artifact_id)

    def metadata(self, artifact_id: str) -> CompiledKernelArtifact:
        return self.lib.metadata(artifact_id)

    def register_interface(self, interface: Any) -> list[str]:
        return self.lib.register_interface(interface)

    def evict(self, artifact_id: str) -> None:
        self.evicted.append(artifact_id)
        super().evict(artifact_id)


def _setup(**overrides: Any) -> tuple[nn.Module, StubSource, torch.Tensor]:
    source = StubSource()
    model = wrap(mlp(), fast_config(chunks_per_layer=2, include_head=True, **overrides), source)
    return model, source, torch.randn(16, 8)


# ---------------------------------------------------------------- the pure rules


@pytest.mark.parametrize("stage", list(S))
@pytest.mark.parametrize("target", list(S))
def test_advance_is_accepted_exactly_for_legal_transitions(stage: SeedStage, target: SeedStage) -> None:
    facts = SeedFacts(stage=stage, kernel_loaded=True, trainable=True, alpha=1.0, embargo_until=0, kernel_id="k")
    res = resolve_command(facts, CommandType.ADVANCE, target, "k", epoch=10)
    assert (res.target is not None) == (target in LEGAL_TRANSITIONS[stage]), res.error
    if res.error:
        assert stage.value in res.error


def test_refusals_name_the_reason() -> None:
    def why(stage: SeedStage, command: CommandType, target: SeedStage | None = None, **facts: Any) -> str:
        res = resolve_command(SeedFacts(stage=stage, **facts), command, target, "k", epoch=3)
        assert res.target is None and res.error
        return res.error

    assert "embargo" in why(S.CULLED, CommandType.GERMINATE, embargo_until=7)
    assert "embargo" in why(S.CULLED, CommandType.ADVANCE, S.DORMANT, embargo_until=7)
    assert "locked" in why(S.ROLLED_BACK, CommandType.GERMINATE)
    assert "permanent" in why(S.FOSSILIZED, CommandType.CULL)
    assert "still loading" in why(S.LOADING, CommandType.ADVANCE, S.TRAINING, kernel_loaded=False)
    assert "alpha ramp unfinished" in why(S.GRAFTING, CommandType.ADVANCE, S.STABILIZATION, alpha=0.5)
    assert "illegal transition GERMINATED -> CULLED" in why(S.GERMINATED, CommandType.CULL)
    assert "only a DORMANT seed" in why(S.TRAINING, CommandType.GERMINATE)


def test_fixed_function_kernels_are_redirected_past_trainable_stages() -> None:
    loading = SeedFacts(stage=S.LOADING, kernel_loaded=True, trainable=False)
    res = resolve_command(loading, CommandType.ADVANCE, S.TRAINING, None, 0)
    assert res.target is S.GRAFTING and res.note and "fixed-function" in res.note
    evaluating = SeedFacts(stage=S.EVALUATING, kernel_loaded=True, trainable=False, alpha=1.0)
    assert resolve_command(evaluating, CommandType.ADVANCE, S.FINE_TUNING, None, 0).target is S.FOSSILIZED


# ---------------------------------------------------------------- property: no illegal transition is reachable

_kernel_choice = st.sampled_from(["good", "good", "fixed", BROKEN, CRASH])
#: Any command, legal or not, to any seed (index 2 does not exist).
_any_command = st.tuples(st.just("cmd"), st.sampled_from([0, 1, 2]), st.sampled_from(list(CommandType)),
                         st.sampled_from(list(S)), _kernel_choice)
#: "next": germinate a dormant seed or advance it along the success path, so sequences get deep.
_next_command = st.tuples(st.just("cmd"), st.sampled_from([0, 0, 1]), st.just(CommandType.ADVANCE), st.just("next"),
                          _kernel_choice)
_KINDS = {"next": _next_command, "any": _any_command, "boundary": st.just(("boundary",)),
          "train": st.just(("train",)), "eval": st.just(("eval",))}
_action = st.sampled_from(["next", "next", "next", "any", "any", "boundary", "train", "train", "eval"]).flatmap(
    _KINDS.__getitem__)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_action, min_size=8, max_size=60))
def test_no_command_sequence_reaches_an_illegal_transition(actions: list[tuple]) -> None:
    model, source, x = _setup()
    layer = kasmina_layers(model)["0"]
    good = kernel_for(model, source.lib, "0", 0)
    fixed = source.lib.register(fixed_function_blueprint(layer.chunks.interface(0))).artifact_id
    kernels = {"good": good, "fixed": fixed, BROKEN: BROKEN, CRASH: CRASH}
    taken: list[tuple[SeedStage, SeedStage]] = []
    last = [S.DORMANT, S.DORMANT]  # each seed's stage as its transition events tell it
    epoch = 0
    for action in actions:
        wait_for_loads(model)  # deterministic: every started load has finished before the next action
        if action[0] == "cmd":
            _, i, command, target, kernel = action
            current = layer.stage(i) if i < 2 else S.DORMANT
            if command is CommandType.GERMINATE or (target == "next" and current is S.DORMANT):
                c = cmd("0", i, CommandType.GERMINATE, kernel=kernels[kernel])
            elif command is CommandType.ADVANCE:
                if target == "next":
                    target = S.LOADING if current is S.GERMINATED else (
                        SUCCESS_PATH[SUCCESS_PATH.index(current) + 1] if current in SUCCESS_PATH[:-1] else S.CULLED)
                c = cmd("0", i, command, target)
            else:
                c = cmd("0", i, command)
            errors = apply_commands(model, [c], epoch)
            epoch += 1  # each command at its own boundary, as Tamiyo's one-per-epoch decisions would arrive
            assert all(isinstance(e, str) and e for e in errors)
            if i >= 2:
                assert errors and "no such seed" in errors[0]
        elif action[0] == "boundary":
            collect_telemetry(model, epoch)
            epoch += 1
        else:
            model.train(action[0] == "train")
            for _ in range(3):
                assert torch.isfinite(model(x)).all()
        for move in drain_transitions(model):
            # The events alone tell every stage change: each starts where the previous one ended.
            assert move.old is last[move.seed_index], f"{move} does not follow {last[move.seed_index]}"
            last[move.seed_index] = move.new
            taken.append((move.old, move.new))
        assert last == [layer.stage(0), layer.stage(1)]
        for src, dst in taken:
            assert dst in LEGAL_TRANSITIONS[src], f"illegal {src} -> {dst}"
        for i in range(2):
            attached = str(i) in layer.seeds
            assert not attached or layer.stage(i) in MODULE_STAGES | {S.LOADING}
    reached = {dst for _, dst in taken}
    event(f"deepest stage: {max((SUCCESS_PATH.index(s) for s in reached & set(SUCCESS_PATH)), default=-1)}")


# ---------------------------------------------------------------- behaviour at boundaries


def test_culled_slot_is_embargoed_then_returns_to_dormant() -> None:
    model, source, x = _setup(embargo_epochs=2)
    k = kernel_for(model, source.lib, "0")
    d = Driver(model, x)
    d.to_stage("0", 0, k, S.TRAINING)
    culled_at = d.epoch
    assert d.apply(cmd("0", 0, CommandType.CULL)) == []
    assert kasmina_layers(model)["0"].stage(0) is S.CULLED and "0" not in kasmina_layers(model)["0"].seeds
    errors = d.apply(cmd("0", 0, CommandType.GERMINATE, kernel=k))
    assert len(errors) == 1 and f"embargo after a cull until epoch {culled_at + 2}" in errors[0]
    tel = collect_telemetry(model, culled_at + 1)
    assert tel[0].stage is S.CULLED and tel[0].embargo_until_epoch == culled_at + 2
    assert collect_telemetry(model, culled_at + 2)[0].stage is S.DORMANT
    *_, culled, dormant = drain_transitions(model)
    assert (culled.old, culled.new, culled.commanded) == (S.TRAINING, S.CULLED, True)
    assert (dormant.old, dormant.new, dormant.commanded, dormant.reason) == (S.CULLED, S.DORMANT, False, "embargo over")
    assert apply_commands(model, [cmd("0", 0, CommandType.GERMINATE, kernel=k)], culled_at + 3) == []


def test_a_seed_culled_in_training_leaves_no_reconstruction_loss_behind() -> None:
    """The last step's reconstruction loss belongs to a freed graph: the next step must not see it."""
    model, source, x = _setup()
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, source.lib, "0"), S.TRAINING)
    train_steps(model, x, 2)
    assert reconstruction_loss(model) is not None
    assert d.apply(cmd("0", 0, CommandType.CULL)) == []
    assert reconstruction_loss(model) is None
    train_steps(model, x, 1)  # used to backward through the freed graph of the culled seed


def test_rolled_back_seed_is_locked_for_good() -> None:
    model, source, x = _setup()
    k = kernel_for(model, source.lib, "0")
    d = Driver(model, x)
    d.to_stage("0", 0, k, S.GRAFTING)
    assert d.apply(advance("0", 0, S.ROLLED_BACK)) == []
    for c in (cmd("0", 0, CommandType.GERMINATE, kernel=k), cmd("0", 0, CommandType.CULL),
              cmd("0", 0, CommandType.CANCEL), advance("0", 0, S.DORMANT)):
        errors = d.apply(c)
        assert len(errors) == 1 and "locked" in errors[0]
    for e in range(d.epoch, d.epoch + 10):
        collect_telemetry(model, e)
    assert kasmina_layers(model)["0"].stage(0) is S.ROLLED_BACK


def test_cancel_discards_the_kernel_and_frees_the_slot_at_the_next_boundary() -> None:
    model, source, x = _setup()
    k = kernel_for(model, source.lib, "0")
    d = Driver(model, x)
    d.to_stage("0", 0, k, S.TRAINING)
    assert seed_parameters(model)
    assert d.apply(cmd("0", 0, CommandType.CANCEL)) == []
    layer = kasmina_layers(model)["0"]
    assert layer.stage(0) is S.CANCELLED and not seed_parameters(model) and len(layer.seeds) == 0
    collect_telemetry(model, d.epoch)
    assert layer.stage(0) is S.DORMANT


def test_fixed_function_kernel_skips_training_and_fine_tuning() -> None:
    model, source, x = _setup()
    layer = kasmina_layers(model)["0"]
    fixed = source.lib.register(fixed_function_blueprint(layer.chunks.interface(1))).artifact_id
    d = Driver(model, x)
    d.to_stage("0", 1, fixed, S.LOADING)
    assert d.apply(advance("0", 1, S.TRAINING)) == []
    assert layer.stage(1) is S.GRAFTING
    assert any(e.kind is EventKind.REDIRECTED for e in drain_events(model))
    for target in (S.STABILIZATION, S.EVALUATING):
        train_steps(model, x, 6)
        assert d.apply(advance("0", 1, target)) == []
    train_steps(model, x, 3)
    assert d.apply(advance("0", 1, S.FINE_TUNING)) == []
    assert layer.stage(1) is S.FOSSILIZED


def test_loading_happens_off_the_training_step() -> None:
    model, source, x = _setup()
    k = kernel_for(model, source.lib, "0")
    source.gate = threading.Event()  # every load blocks until released
    d = Driver(model, x)
    assert d.apply(cmd("0", 0, CommandType.GERMINATE, kernel=k), advance("0", 0, S.LOADING)) == []
    train_steps(model, x, 3)  # the step does not wait for the blocked load
    tel = collect_telemetry(model, d.epoch)
    assert tel[0].stage is S.LOADING and not tel[0].is_ready_for_transition
    errors = d.apply(advance("0", 0, S.TRAINING))
    assert len(errors) == 1 and "still loading" in errors[0]
    source.gate.set()
    wait_for_loads(model)
    tel = collect_telemetry(model, d.epoch)
    assert tel[0].stage is S.LOADING and tel[0].is_ready_for_transition
    assert d.apply(advance("0", 0, S.TRAINING)) == []


@pytest.mark.parametrize("kernel", [BROKEN, "wrong-shape"])
def test_load_failure_culls_the_seed_and_reports_it(kernel: str) -> None:
    model, source, x = _setup()
    if kernel == "wrong-shape":  # a kernel built for another width fails the load probe
        kernel = kernel_for(model, source.lib, "2", 0)
    d = Driver(model, x)
    d.to_stage("0", 0, kernel, S.LOADING)
    drain_transitions(model)
    wait_for_loads(model)
    tel = collect_telemetry(model, d.epoch)
    assert tel[0].stage is S.CULLED and tel[0].error_count == 1
    (failed,) = [e for e in drain_events(model) if e.kind is EventKind.LOAD_FAILED]
    # Exactly one transition, made by Kasmina on its own, whose reason carries the load error.
    (move,) = drain_transitions(model)
    assert (move.seed_id, move.old, move.new, move.commanded) == ("0[0]", S.LOADING, S.CULLED, False)
    assert move.reason == f"kernel error: {failed.message}" and move.kernel_artifact_id == kernel
    assert source.evicted == [kernel]
    for e in range(d.epoch + 1, d.epoch + 3):  # later boundaries do not cull it again
        collect_telemetry(model, e)
    assert [m.new for m in drain_transitions(model)] == [S.DORMANT]


def test_a_kernel_runtime_error_culls_the_seed_exactly_once() -> None:
    model, source, x = _setup()
    d = Driver(model, x)
    d.to_stage("0", 0, CRASH, S.TRAINING)
    drain_transitions(model)
    train_steps(model, x, 5)  # the first training forward raises; the seed is the identity from then on
    (error,) = [e for e in drain_events(model) if e.kind is EventKind.RUNTIME_ERROR]
    assert "kernel exploded" in error.message and kasmina_layers(model)["0"].stage(0) is S.TRAINING
    for e in range(d.epoch, d.epoch + 2):  # two boundaries, both inside the embargo that follows the cull
        tel = collect_telemetry(model, e)
    (move,) = drain_transitions(model)
    assert (move.old, move.new, move.commanded, move.epoch) == (S.TRAINING, S.CULLED, False, d.epoch)
    assert "kernel exploded" in move.reason
    assert tel[0].stage is S.CULLED and tel[0].error_count == 1 and source.evicted == [CRASH]


def test_telemetry_says_whether_the_kernel_is_trainable() -> None:
    model, source, x = _setup()
    layer = kasmina_layers(model)["0"]
    fixed = source.lib.register(fixed_function_blueprint(layer.chunks.interface(1))).artifact_id
    d = Driver(model, x)
    assert [t.kernel_trainable for t in collect_telemetry(model, d.epoch)[:2]] == [None, None]
    d.to_stage("0", 0, kernel_for(model, source.lib, "0"), S.GERMINATED)
    d.to_stage("0", 1, fixed, S.LOADING)
    tel = collect_telemetry(model, d.epoch)
    assert [t.kernel_trainable for t in tel[:2]] == [None, False]  # seed 0 has not loaded its kernel yet
    assert d.apply(advance("0", 0, S.LOADING)) == []
    wait_for_loads(model)
    tel = collect_telemetry(model, d.epoch)
    assert [t.kernel_trainable for t in tel[:2]] == [True, False]


def test_training_readiness_follows_the_reconstruction_loss() -> None:
    model, source, x = _setup(training_max_steps=10_000, training_ready_loss=0.05)
    d = Driver(model, x)
    bottleneck = kernel_for(model, source.lib, "0", 0, family="bottleneck")  # starts far from identity
    d.to_stage("0", 0, bottleneck, S.TRAINING)
    train_steps(model, x, 3, lr=0.0)
    assert not collect_telemetry(model, d.epoch)[0].is_ready_for_transition
    train_steps(model, x, 400, lr=0.05)
    assert collect_telemetry(model, d.epoch + 1)[0].is_ready_for_transition


def test_apply_commands_never_raises_for_bad_commands() -> None:
    model, _, _ = _setup()
    errors = apply_commands(model, [cmd("nope", 0, CommandType.CULL), cmd("0", 99, CommandType.CULL),
                                    advance("0", 0, S.FOSSILIZED), cmd("0", 0, CommandType.CANCEL)], 0)
    assert len(errors) == 4
    assert "unknown slot 'nope'" in errors[0] and "no such seed" in errors[1]
    assert "illegal transition DORMANT -> FOSSILIZED" in errors[2]
