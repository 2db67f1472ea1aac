"""Every mutation operator keeps the interface and yields a buildable IR, or refuses with a reason."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_contracts import BlueprintIR, OpType
from esper_contracts.ir_shapes import infer_ir_shapes
from esper_contracts.strategies import buildable_blueprint_ir_json
from esper_karn.mutations import OPERATORS, EditableGraph, MutationOperator, MutationRefused, mutate

from .conftest import residual_mlp


@pytest.mark.parametrize("operator", sorted(OPERATORS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=buildable_blueprint_ir_json(), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_every_operator_keeps_the_interface_or_refuses(operator: str, body: dict, seed: int) -> None:
    parent = BlueprintIR.model_validate(body)
    try:
        child = mutate(parent, OPERATORS[operator], random.Random(seed))
    except MutationRefused as exc:
        assert str(exc), "a refusal must say why"
        return
    ir = child.ir
    assert (ir.input, ir.output) == (parent.input, parent.output)
    assert infer_ir_shapes(ir).parameter_count == child.parameter_count
    assert child.blueprint_id == ir.ir_hash() != parent.ir_hash()
    assert ir.parent_ids == [parent.ir_hash()] and ir.mutation is not None
    assert ir.mutation.operator == operator and ir.mutation.parent_id == parent.ir_hash()
    assert ir.generation == parent.generation + 1
    assert BlueprintIR.model_validate_json(ir.model_dump_json()) == ir  # a child is ordinary contract data


@settings(max_examples=100, deadline=None)
@given(body=buildable_blueprint_ir_json(), seed=st.integers(min_value=0, max_value=1000))
def test_grandchildren_count_generations(body: dict, seed: int) -> None:
    rng = random.Random(seed)
    ir = BlueprintIR.model_validate(body)
    for generation in (1, 2, 3):
        child = mutate(ir, OPERATORS["add_hidden_layer"], rng)  # every graph has an edge to deepen
        assert child.generation == generation and child.ir.mutation is not None
        assert child.ir.mutation.parent_id == ir.ir_hash()
        ir = child.ir


def test_change_width_resizes_the_layers_that_read_it() -> None:
    child = mutate(residual_mlp("BD", 8, 16), OPERATORS["change_width"], random.Random(1))
    nodes = {n.id: n for n in child.ir.nodes}
    new = nodes["up"].attrs["out_features"]
    assert new != 16 and nodes["down"].attrs["in_features"] == new
    assert nodes["down"].attrs["out_features"] == 8 and nodes["down"].attrs["init"] == "zeros"
    assert "up: width 16 ->" in child.detail


def test_change_width_never_touches_a_width_fixed_by_the_residual_add() -> None:
    for seed in range(20):
        child = mutate(residual_mlp(), OPERATORS["change_width"], random.Random(seed))
        assert child.detail.startswith("up:")  # 'down' feeds the add: its width is the interface's


def test_change_rank_moves_a_factorised_map(parents: dict[str, BlueprintIR]) -> None:
    child = mutate(parents["low_rank"], OPERATORS["change_rank"], random.Random(0))
    nodes = {n.id: n for n in child.ir.nodes}
    rank = nodes["a"].attrs["out_features"]
    assert rank in (2, 8) and nodes["b"].attrs["in_features"] == rank
    with pytest.raises(MutationRefused, match="no factorised"):
        mutate(parents["mlp"], OPERATORS["change_rank"], random.Random(0))


def test_attention_operators(parents: dict[str, BlueprintIR]) -> None:
    more = mutate(parents["attention"], OPERATORS["add_attention_head"], random.Random(0))
    assert {n.id: n for n in more.ir.nodes}["attn"].attrs["num_heads"] == 4  # next divisor of 16 after 2
    block = mutate(parents["attention"], OPERATORS["insert_attention_block"], random.Random(0))
    assert sum(n.op is OpType.MULTIHEAD_ATTENTION for n in block.ir.nodes) == 2
    with pytest.raises(MutationRefused, match="does not apply to layout BD"):
        mutate(parents["mlp"], OPERATORS["insert_attention_block"], random.Random(0))
    with pytest.raises(MutationRefused, match="no self-attention"):
        mutate(residual_mlp("BTD", 16), OPERATORS["add_attention_head"], random.Random(0))


def test_normalisation_operators(parents: dict[str, BlueprintIR]) -> None:
    dropped = mutate(parents["mlp"], OPERATORS["drop_normalisation"], random.Random(0))
    assert not any(n.op is OpType.LAYER_NORM for n in dropped.ir.nodes)
    swapped = mutate(parents["conv"], OPERATORS["swap_normalisation"], random.Random(0))
    assert [n.op for n in swapped.ir.nodes if n.id == "norm"] == [OpType.BATCH_NORM2D]
    added = mutate(parents["low_rank"], OPERATORS["add_normalisation"], random.Random(0))
    assert sum(n.op is OpType.LAYER_NORM for n in added.ir.nodes) == 1
    with pytest.raises(MutationRefused, match="no normalisation layer"):
        mutate(parents["low_rank"], OPERATORS["drop_normalisation"], random.Random(0))


def test_residual_operators(parents: dict[str, BlueprintIR]) -> None:
    plain = mutate(parents["mlp"], OPERATORS["drop_residual"], random.Random(0))
    assert not any(n.op is OpType.ADD for n in plain.ir.nodes)
    assert "skip from input removed" in plain.detail
    skip = mutate(parents["mlp"], OPERATORS["add_residual"], random.Random(0))
    assert sum(n.op is OpType.ADD for n in skip.ir.nodes) == 2
    with pytest.raises(MutationRefused, match="no skip connection"):
        mutate(plain.ir, OPERATORS["drop_residual"], random.Random(0))


def test_activation_depth_and_kernel_operators(parents: dict[str, BlueprintIR]) -> None:
    swapped = mutate(parents["mlp"], OPERATORS["swap_activation"], random.Random(0))
    assert [n.op for n in swapped.ir.nodes if n.id == "act"] != [OpType.GELU]
    deeper = mutate(parents["mlp"], OPERATORS["add_hidden_layer"], random.Random(0))
    assert len(deeper.ir.nodes) == len(parents["mlp"].nodes) + 2
    wider_field = mutate(parents["conv"], OPERATORS["change_kernel_size"], random.Random(0))
    assert {n.attrs["kernel_size"] for n in wider_field.ir.nodes if n.op is OpType.CONV2D} != {1}


def test_children_carry_lineage_and_tags(parents: dict[str, BlueprintIR]) -> None:
    child = mutate(parents["mlp"], OPERATORS["swap_activation"], random.Random(0), tags=("evolve_r1",))
    assert child.ir.tags == ["residual_mlp", "capacity", "karn", "evolve_r1"]  # provenance tags are not inherited
    assert child.ir.name == f"karn-g1-{child.blueprint_id[:12]}"
    assert child.ir.description.startswith("residual-mlp-bd-8 -> swap_activation:")


def test_the_parameter_limit_refuses_oversized_children() -> None:
    with pytest.raises(MutationRefused, match="parameters"):
        mutate(residual_mlp("BD", 64, 64), OPERATORS["add_hidden_layer"], random.Random(0), max_parameters=9000)


def test_an_edit_that_breaks_a_shape_is_refused_not_shipped() -> None:
    def break_it(graph: EditableGraph, rng: random.Random) -> str:
        graph.nodes["down"].attrs["out_features"] = 5  # the residual add now sees 8 and 5
        return "down: 8 -> 5"

    with pytest.raises(MutationRefused, match="shape check"):
        mutate(residual_mlp(), MutationOperator("break_it", "", break_it), random.Random(0))
