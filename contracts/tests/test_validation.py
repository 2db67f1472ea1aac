"""Bad values are rejected with errors that say which field and why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from esper_contracts import (
    LEGAL_TRANSITIONS,
    AllocationCommand,
    BlueprintIR,
    CommandType,
    CompilationPipeline,
    Envelope,
    FieldReport,
    KasminaControlCommand,
    KernelQuery,
    NarsetAllocationDecision,
    ProposalDecision,
    SeedStage,
    SeedTelemetry,
    UnknownTopicError,
    UrabraskValidationReport,
    artifact_id,
    is_legal_transition,
    topic_spec,
)
from esper_contracts.blueprints import MAX_IR_NODES


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


def test_alpha_out_of_range_names_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        SeedTelemetry(layer_id="fc1", seed_index=0, epoch=1, stage="GRAFTING", alpha=1.5)
    assert "alpha" in _errors(exc) and "less than or equal to 1" in _errors(exc)


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        SeedTelemetry(layer_id="fc1", seed_index=0, epoch=1, stage="DORMANT", alhpa=0.5)  # type: ignore[call-arg]
    assert "alhpa" in _errors(exc) and "Extra inputs are not permitted" in _errors(exc)


def test_empty_id_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        SeedTelemetry(layer_id="  ", seed_index=0, epoch=1, stage="DORMANT")
    assert "layer_id" in _errors(exc)


def test_negative_budget_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        AllocationCommand(cycle=1, region_id="r0", atp_budget=-0.1)
    assert "atp_budget" in _errors(exc)


def test_nan_rejected() -> None:
    with pytest.raises(ValidationError):
        SeedTelemetry(layer_id="fc1", seed_index=0, epoch=1, stage="DORMANT", gradient_norm=float("nan"))


def test_command_arguments_checked() -> None:
    with pytest.raises(ValidationError, match="GERMINATE needs kernel_artifact_id"):
        KasminaControlCommand(layer_id="fc1", seed_index=0, command=CommandType.GERMINATE)
    with pytest.raises(ValidationError, match="ADVANCE needs target_stage"):
        KasminaControlCommand(layer_id="fc1", seed_index=0, command=CommandType.ADVANCE)
    ok = KasminaControlCommand(layer_id="fc1", seed_index=0, command="ADVANCE", target_stage="GRAFTING")
    assert ok.target_stage is SeedStage.GRAFTING


def _ir(**over: object) -> dict:
    body: dict = {
        "name": "residual-mlp",
        "blueprint_class": "mlp",
        "input": {"layout": "BD", "features": 8},
        "output": {"layout": "BD", "features": 8},
        "nodes": [
            {"id": "fc", "op": "linear", "attrs": {"in_features": 8, "out_features": 8}},
            {"id": "act", "op": "relu"},
            {"id": "sum", "op": "add"},
        ],
        "edges": [
            {"src": "input", "dst": "fc"},
            {"src": "fc", "dst": "act"},
            {"src": "act", "dst": "sum", "port": 0},
            {"src": "input", "dst": "sum", "port": 1},
            {"src": "sum", "dst": "output"},
        ],
    }
    body.update(over)
    return body


def test_valid_ir_and_stable_hash() -> None:
    a = BlueprintIR.model_validate(_ir())
    b = BlueprintIR.model_validate(_ir(name="another-name", description="same graph"))
    assert a.ir_hash() == b.ir_hash() and len(a.ir_hash()) == 64
    assert a.topological_order().index("fc") < a.topological_order().index("sum")


def test_cyclic_ir_rejected() -> None:
    ir = _ir()
    ir["nodes"].append({"id": "loop", "op": "relu"})
    ir["edges"] = [
        {"src": "input", "dst": "fc"},
        {"src": "loop", "dst": "act"},
        {"src": "act", "dst": "loop"},
        {"src": "fc", "dst": "sum", "port": 0},
        {"src": "act", "dst": "sum", "port": 1},
        {"src": "sum", "dst": "output"},
    ]
    with pytest.raises(ValidationError, match="cycle"):
        BlueprintIR.model_validate(ir)


def test_mutation_record_is_lineage_not_computation() -> None:
    parent = BlueprintIR.model_validate(_ir())
    record = {"parent_id": parent.ir_hash(), "operator": "swap_activation", "generation": 2, "detail": "relu -> gelu"}
    child = BlueprintIR.model_validate(_ir(parent_ids=[parent.ir_hash()], mutation=record))
    assert child.generation == 2 and parent.generation == 0
    assert child.ir_hash() == parent.ir_hash()  # same graph: lineage does not change what is computed
    with pytest.raises(ValidationError, match="not among parent_ids"):
        BlueprintIR.model_validate(_ir(mutation=record))
    with pytest.raises(ValidationError, match="generation"):
        BlueprintIR.model_validate(_ir(parent_ids=[parent.ir_hash()], mutation=record | {"generation": 0}))


def test_ir_structure_errors_say_why() -> None:
    with pytest.raises(ValidationError, match="unknown node 'nope'"):
        BlueprintIR.model_validate(_ir(edges=[{"src": "input", "dst": "nope"}, {"src": "fc", "dst": "output"}]))
    with pytest.raises(ValidationError, match="unconnected inputs"):
        BlueprintIR.model_validate(_ir(edges=[{"src": "input", "dst": "fc"}, {"src": "fc", "dst": "output"}]))
    with pytest.raises(ValidationError, match="sunset metadata"):
        BlueprintIR.model_validate(_ir(blueprint_class="scaffold"))
    oversized = _ir(nodes=[{"id": f"n{i}", "op": "relu"} for i in range(MAX_IR_NODES + 1)])
    with pytest.raises(ValidationError, match="nodes"):
        BlueprintIR.model_validate(oversized)


def test_artifact_ids() -> None:
    good = artifact_id("a" * 64, "cpu", CompilationPipeline.FAST, "b" * 16)
    assert good.endswith("-cpu-fast-" + "b" * 16)
    with pytest.raises(ValueError, match="malformed artifact id"):
        artifact_id("not-a-hash", "cpu", CompilationPipeline.FAST, "b" * 16)


def test_rejected_report_needs_reason() -> None:
    aid = artifact_id("a" * 64, "cpu", CompilationPipeline.FAST, "b" * 16)
    with pytest.raises(ValidationError, match="rejection_reason"):
        UrabraskValidationReport(artifact_id=aid, hardware="cpu", passed=False)


def test_query_contradiction_and_limits() -> None:
    with pytest.raises(ValidationError, match="both required and excluded"):
        KernelQuery(tags_required=["high_speed"], tags_excluded=["high_speed"])
    with pytest.raises(ValidationError, match="limit"):
        KernelQuery(limit=0)


def test_allocation_decision_respects_pool() -> None:
    inputs = {"progress": 0.1, "stability": 0.9, "efficiency": 0.5}
    base = dict(region_id="r", window=1, mode="repair", x_T=1.0, x_E=0.4, pool=1.5, total_spent=1.4,
                raw_inputs=inputs, smoothed_inputs=inputs)
    NarsetAllocationDecision(c_T=1.0, c_E=0.4, **base)
    with pytest.raises(ValidationError, match="exceeds the pool"):
        NarsetAllocationDecision(c_T=1.2, c_E=0.4, **base)


def test_rejected_proposal_gets_nothing() -> None:
    with pytest.raises(ValidationError, match="cannot be granted"):
        ProposalDecision(proposal_id="p", region_id="r", approved=False, granted=1.0, reason="no")


def test_envelope_from_the_future_rejected() -> None:
    with pytest.raises(ValidationError, match="newer than this build"):
        Envelope[SeedTelemetry].model_validate(
            {"schema_version": 99, "producer": "x", "topic": "t", "payload_type": "SeedTelemetry",
             "payload": {"layer_id": "a", "seed_index": 0, "epoch": 0, "stage": "DORMANT"}}
        )


def test_unknown_topic_lists_known_ones() -> None:
    with pytest.raises(UnknownTopicError) as exc:
        topic_spec("control.proposal")
    assert "control.proposals" in str(exc.value)


def test_lifecycle_table_shape() -> None:
    assert set(LEGAL_TRANSITIONS) == set(SeedStage)
    assert LEGAL_TRANSITIONS[SeedStage.FOSSILIZED] == frozenset()
    assert LEGAL_TRANSITIONS[SeedStage.ROLLED_BACK] == frozenset()
    assert is_legal_transition(SeedStage.LOADING, SeedStage.GRAFTING)  # fixed-function kernels skip TRAINING
    assert not is_legal_transition(SeedStage.DORMANT, SeedStage.GRAFTING)
    for stage in SeedStage:
        assert SeedStage.from_code(stage.code) is stage


@pytest.mark.parametrize(("model", "values"), [
    (KernelQuery, {"tags_excluded": ["gpu\x00"]}),
    (UrabraskValidationReport, {"artifact_id": artifact_id("a" * 64, "cpu", CompilationPipeline.FAST, "b" * 12),
                                "hardware": "cpu", "passed": False, "rejection_reason": "drift\x00"}),
    (FieldReport, {"blueprint_id": "b", "seed_id": "s\x00", "pre_metric": 0.1, "post_metric": 0.2,
                   "outcome": "success"}),
], ids=["identifier", "free-text", "field-report"])
def test_a_nul_character_is_refused_in_identifiers_and_text(model: type, values: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as exc:
        model(**values)
    assert "must not contain a NUL character" in _errors(exc)


def test_integers_stored_in_int32_columns_are_bounded() -> None:
    with pytest.raises(ValidationError) as exc:
        KernelQuery(interface={"layout": "BD", "features": 2**31})  # type: ignore[arg-type]
    assert "interface.features" in _errors(exc) and "2147483647" in _errors(exc)


def test_a_protected_zone_covers_its_modules_and_ring_while_it_lasts() -> None:
    from esper_contracts.control import ProtectedZone

    zone = ProtectedZone(module_patterns=["blocks.1.*"], ring_patterns=["blocks.0.fc2", "blocks.2.*"],
                         reason="scaffold", created_epoch=4, expires_after_epoch=9)
    assert zone.covers("blocks.1.attn", 4) and zone.covers("blocks.1.mlp[2]", 9)
    assert zone.covers("blocks.0.fc2", 6) and zone.covers("blocks.2.fc1[0]", 6)
    assert not zone.covers("blocks.0.fc1", 6) and not zone.covers("blocks.10.attn", 6)
    assert not zone.covers("blocks.1.attn", 3) and not zone.covers("blocks.1.attn", 10)
    assert ProtectedZone(module_patterns=["head"], reason="r", created_epoch=0).covers("head", 10**6)
