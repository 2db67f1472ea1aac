"""Shared shape inference: parameter counts per op, every rejection with its reason, concrete output shapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from esper_contracts import MAX_IR_PARAMETERS, BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, TensorInterface
from esper_contracts.ir_shapes import IRShapeError, infer_ir_shapes
from esper_contracts.strategies import buildable_blueprint_ir_json


def chain(layout: str, features: int, *ops: tuple[str, dict[str, Any]], out_features: int | None = None,
          out_layout: str | None = None, residual: bool = False) -> BlueprintIR:
    """input -> op1 -> op2 -> ... [-> add(input, last)] -> output."""
    nodes = [IRNode(id=f"n{i}", op=OpType(op), attrs=attrs) for i, (op, attrs) in enumerate(ops)]
    edges = [IREdge(src="input" if i == 0 else f"n{i - 1}", dst=f"n{i}") for i in range(len(ops))]
    last = f"n{len(ops) - 1}"
    if residual:
        nodes.append(IRNode(id="res", op=OpType.ADD))
        edges += [IREdge(src="input", dst="res", port=0), IREdge(src=last, dst="res", port=1)]
        last = "res"
    edges.append(IREdge(src=last, dst="output"))
    return BlueprintIR(name="t", blueprint_class=BlueprintClass.MLP, nodes=nodes, edges=edges,
                       input=TensorInterface(layout=layout, features=features),  # type: ignore[arg-type]
                       output=TensorInterface(layout=out_layout or layout,  # type: ignore[arg-type]
                                              features=out_features or features))


@pytest.mark.parametrize(("ir", "params"), [
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 4}),
           ("linear", {"in_features": 4, "out_features": 8})), 8 * 4 + 4 + 4 * 8 + 8),
    (chain("BTD", 8, ("linear", {"in_features": 8, "out_features": 8, "bias": False})), 64),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "groups": 8})), 8 * 9 + 8),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 16, "kernel_size": 1, "bias": False}),
           out_features=16), 128),
    (chain("BD", 6, ("layer_norm", {"normalized_shape": 6})), 12),
    (chain("BTD", 6, ("layer_norm", {"normalized_shape": [6]})), 12),
    (chain("BCHW", 6, ("batch_norm2d", {"num_features": 6})), 12),
    (chain("BCHW", 6, ("group_norm", {"num_groups": 3, "num_channels": 6})), 12),
    (chain("BTD", 16, ("multihead_attention", {"embed_dim": 16, "num_heads": 4})), 4 * 256 + 64),
    (chain("BTD", 16, ("multihead_attention", {"embed_dim": 16, "num_heads": 2, "bias": False})), 4 * 256),
    (chain("BD", 5, ("relu", {}), ("dropout", {"p": 0.2}), ("scale", {"value": 0.5}), ("identity", {}),
           residual=True), 0),
])
def test_parameter_counts(ir: BlueprintIR, params: int) -> None:
    assert infer_ir_shapes(ir).parameter_count == params


@pytest.mark.parametrize(("ir", "reason"), [
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 8, "activation": "relu"})), "unknown attribute"),
    (chain("BD", 8, ("linear", {"in_features": 8})), "'out_features' is required"),
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": True})), "must be an integer"),
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 8, "bias": 1})), "must be true or false"),
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 8, "init": "xavier"})), "'default' or 'zeros'"),
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 0})), "out_features=0 must be at least 1"),
    (chain("BCHW", 8, ("linear", {"in_features": 8, "out_features": 8})), "use a 1x1 conv2d on BCHW"),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 8, "kernel_size": 2})), "must be odd"),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 0})),
     "needs padding=1"),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "groups": 3})),
     "groups=3 must divide"),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 4, "out_channels": 8, "kernel_size": 3})), "in_channels=4"),
    (chain("BD", 8, ("layer_norm", {"normalized_shape": [8, 8]})), "list of exactly one integer"),
    (chain("BD", 8, ("layer_norm", {"normalized_shape": 7})), "normalized_shape=7"),
    (chain("BCHW", 8, ("batch_norm2d", {"num_features": 4})), "num_features=4"),
    (chain("BD", 6, ("group_norm", {"num_groups": 4, "num_channels": 6})), "does not divide num_channels=6"),
    (chain("BD", 8, ("multihead_attention", {"embed_dim": 8, "num_heads": 2})), "does not apply to layout BD"),
    (chain("BTD", 8, ("multihead_attention", {"embed_dim": 8, "num_heads": 3})), "does not divide embed_dim=8"),
    (chain("BTD", 8, ("multihead_attention", {"embed_dim": 8, "num_heads": 2, "dropout": 1.0})), "dropout=1.0"),
    (chain("BD", 8, ("dropout", {"p": -0.1})), "p=-0.1 must be in [0, 1)"),
    (chain("BD", 8, ("scale", {"value": "big"})), "must be a finite number"),
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 4}), residual=True), "different feature sizes"),
    (chain("BD", 8, ("relu", {}), out_features=4), "declares 4"),
    (chain("BD", 8, ("relu", {}), out_layout="BTD"), "differs from output layout"),
])
def test_rejections_name_the_node_and_value(ir: BlueprintIR, reason: str) -> None:
    with pytest.raises(IRShapeError) as info:
        infer_ir_shapes(ir)
    assert reason in str(info.value)


def test_the_parameter_limit_is_checked_while_counting() -> None:
    ir = chain("BD", 64, ("linear", {"in_features": 64, "out_features": 64}))
    with pytest.raises(IRShapeError, match="more than 4000 parameters"):
        infer_ir_shapes(ir, max_parameters=4000)
    assert infer_ir_shapes(ir, max_parameters=64 * 65).parameter_count == 64 * 65
    # 5000 x 5001 = 25,005,000 each: the first fits under MAX_IR_PARAMETERS, the running total of two does not
    huge = chain("BD", 5000, ("linear", {"in_features": 5000, "out_features": 5000}),
                 ("linear", {"in_features": 5000, "out_features": 5000}))
    with pytest.raises(IRShapeError, match=f"more than MAX_IR_PARAMETERS={MAX_IR_PARAMETERS} .* at node 'n1'"):
        infer_ir_shapes(huge)


def test_inference_returns_what_a_builder_needs() -> None:
    ir = chain("BCHW", 4, ("conv2d", {"in_channels": 4, "out_channels": 8, "kernel_size": 5}), out_features=8)
    shapes = infer_ir_shapes(ir)
    assert shapes.order == ("n0",) and shapes.ops == {"n0": OpType.CONV2D} and shapes.output_src == "n0"
    assert shapes.sources == {"n0": ("input",)} and shapes.features == {"input": 4, "n0": 8}
    # defaults filled in and padding made explicit
    assert shapes.attrs["n0"] == {"in_channels": 4, "out_channels": 8, "kernel_size": 5, "padding": 2, "groups": 1,
                                  "bias": True, "init": "default"}
    norm = infer_ir_shapes(chain("BTD", 6, ("layer_norm", {"normalized_shape": [6]})))
    assert norm.attrs["n0"] == {"normalized_shape": 6}


@pytest.mark.parametrize(("ir", "input_shape", "output_shape"), [
    (chain("BD", 8, ("linear", {"in_features": 8, "out_features": 3}), out_features=3), (5, 8), (5, 3)),
    (chain("BTD", 8, ("linear", {"in_features": 8, "out_features": 3}), out_features=3), (2, 7, 8), (2, 7, 3)),
    (chain("BCHW", 8, ("conv2d", {"in_channels": 8, "out_channels": 16, "kernel_size": 3}), out_features=16),
     (2, 8, 5, 6), (2, 16, 5, 6)),
])
def test_output_shape_changes_only_the_feature_axis(ir: BlueprintIR, input_shape: tuple[int, ...],
                                                    output_shape: tuple[int, ...]) -> None:
    assert infer_ir_shapes(ir).output_shape(input_shape) == output_shape


def test_output_shape_refuses_an_input_that_does_not_fit() -> None:
    shapes = infer_ir_shapes(chain("BTD", 8, ("relu", {})))
    with pytest.raises(IRShapeError, match="does not fit layout BTD with 8 features"):
        shapes.output_shape((2, 8))
    with pytest.raises(IRShapeError, match="does not fit"):
        shapes.output_shape((2, 3, 7))


@settings(max_examples=200, deadline=None)
@given(body=buildable_blueprint_ir_json())
def test_generated_buildable_graphs_pass_shape_inference(body: dict) -> None:
    ir = BlueprintIR.model_validate(body)
    shapes = infer_ir_shapes(ir)
    assert shapes.features[shapes.output_src] == ir.output.features
