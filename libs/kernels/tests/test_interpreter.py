"""The BlueprintIR interpreter: built-ins build and keep shape; malformed graphs are rejected with reasons."""

from __future__ import annotations

import pytest
import torch

from esper_contracts import (
    BUILTIN_FAMILIES,
    BlueprintClass,
    BlueprintIR,
    IREdge,
    IRNode,
    OpType,
    TensorInterface,
    builtin_blueprints,
    fixed_function_blueprint,
)
from esper_kernels import IRValidationError, build_module, ir_parameter_count

SHAPES = {"BD": (5, 12), "BTD": (3, 7, 12), "BCHW": (2, 12, 5, 6)}


def _ir(layout: str, features: int, nodes: list[IRNode], edges: list[IREdge], out_features: int | None = None
        ) -> BlueprintIR:
    return BlueprintIR(name="t", blueprint_class=BlueprintClass.MLP,
                       input=TensorInterface(layout=layout, features=features),  # type: ignore[arg-type]
                       output=TensorInterface(layout=layout, features=out_features or features),  # type: ignore[arg-type]
                       nodes=nodes, edges=edges)


def _chain(layout: str, features: int, *ops: tuple[OpType, dict], out_features: int | None = None) -> BlueprintIR:
    nodes = [IRNode(id=f"n{k}", op=op, attrs=attrs) for k, (op, attrs) in enumerate(ops)]
    edges = [IREdge(src="input" if k == 0 else f"n{k - 1}", dst=f"n{k}") for k in range(len(ops))]
    edges.append(IREdge(src=f"n{len(ops) - 1}", dst="output"))
    return _ir(layout, features, nodes, edges, out_features)


@pytest.mark.parametrize("layout", list(SHAPES))
def test_builtins_build_and_keep_shape(layout: str) -> None:
    irs = builtin_blueprints(TensorInterface(layout=layout, features=12))  # type: ignore[arg-type]
    assert len(irs) >= 3
    for ir in irs:
        module = build_module(ir)
        x = torch.randn(*SHAPES[layout])
        assert module(x).shape == x.shape, ir.name
        assert module.parameter_count == sum(p.numel() for p in module.parameters()) == ir_parameter_count(ir)
        assert ir.input == ir.output


def test_five_families_cover_every_layout() -> None:
    names = {fam.name for fam in BUILTIN_FAMILIES}
    assert names == {"residual_mlp", "bottleneck", "depthwise_conv", "low_rank_adapter", "attention_head"}
    built = {ir.tags[0] for lay in SHAPES for ir in builtin_blueprints(TensorInterface(layout=lay, features=8))}
    assert built == names


def test_residual_builtins_start_as_identity() -> None:
    # Zero-initialised last projections: grafting starts without a shock.
    iface = TensorInterface(layout="BD", features=12)
    x = torch.randn(4, 12)
    for ir in builtin_blueprints(iface):
        if ir.tags[0] in ("residual_mlp", "low_rank_adapter"):
            assert torch.equal(build_module(ir)(x), x)


def test_fixed_function_blueprint_has_no_parameters() -> None:
    m = build_module(fixed_function_blueprint(TensorInterface(layout="BTD", features=6)))
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(2, 3, 6)
    assert torch.allclose(m(x), x + 0.5 * torch.tanh(x))


def test_identity_and_two_input_ops() -> None:
    nodes = [IRNode(id="a", op=OpType.IDENTITY), IRNode(id="s", op=OpType.SCALE, attrs={"value": 3}),
             IRNode(id="m", op=OpType.MUL), IRNode(id="sum", op=OpType.ADD)]
    edges = [IREdge(src="input", dst="a"), IREdge(src="a", dst="s"), IREdge(src="s", dst="m"),
             IREdge(src="input", dst="m", port=1), IREdge(src="m", dst="sum"), IREdge(src="input", dst="sum", port=1),
             IREdge(src="sum", dst="output")]
    m = build_module(_ir("BD", 4, nodes, edges))
    x = torch.randn(3, 4)
    assert torch.allclose(m(x), 3 * x * x + x)


@pytest.mark.parametrize(("ir_factory", "message"), [
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 7, "out_features": 8})), "in_features=7"),
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 8, "out_features": 5})), "produces 5 features"),
    (lambda: _chain("BD", 8, (OpType.CONV2D, {"in_channels": 8, "out_channels": 8, "kernel_size": 1})),
     "does not apply to layout BD"),
    (lambda: _chain("BCHW", 8, (OpType.LINEAR, {"in_features": 8, "out_features": 8})), "1x1 conv2d"),
    (lambda: _chain("BCHW", 8, (OpType.CONV2D, {"in_channels": 8, "out_channels": 8, "kernel_size": 2})), "odd"),
    (lambda: _chain("BCHW", 8, (OpType.CONV2D, {"in_channels": 8, "out_channels": 8, "kernel_size": 3,
                                                "padding": 0})), "changes the spatial size"),
    (lambda: _chain("BCHW", 8, (OpType.CONV2D, {"in_channels": 8, "out_channels": 8, "kernel_size": 3,
                                                "groups": 3})), "groups=3"),
    (lambda: _chain("BD", 8, (OpType.LAYER_NORM, {"normalized_shape": [4]})), "normalized_shape=4"),
    (lambda: _chain("BTD", 8, (OpType.MULTIHEAD_ATTENTION, {"embed_dim": 8, "num_heads": 3})), "num_heads=3"),
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 8})), "'out_features' is required"),
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 8, "out_features": 8, "stride": 2})), "unknown attr"),
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 8, "out_features": True})), "must be an integer"),
    (lambda: _chain("BD", 8, (OpType.DROPOUT, {"p": 1.5})), "p=1.5"),
    (lambda: _chain("BD", 8, (OpType.LINEAR, {"in_features": 8, "out_features": 8, "init": "ones"})), "init="),
])
def test_bad_graphs_are_rejected_with_the_reason(ir_factory, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IRValidationError, match=message):
        build_module(ir_factory())


def test_mismatched_add_is_rejected() -> None:
    nodes = [IRNode(id="p", op=OpType.LINEAR, attrs={"in_features": 8, "out_features": 4}),
             IRNode(id="sum", op=OpType.ADD),
             IRNode(id="q", op=OpType.LINEAR, attrs={"in_features": 8, "out_features": 8})]
    edges = [IREdge(src="input", dst="p"), IREdge(src="p", dst="sum"), IREdge(src="input", dst="sum", port=1),
             IREdge(src="sum", dst="q"), IREdge(src="q", dst="output")]
    with pytest.raises(IRValidationError, match="different feature sizes 4 and 8"):
        build_module(_ir("BD", 8, nodes, edges))


def test_dead_branch_is_rejected() -> None:
    nodes = [IRNode(id="used", op=OpType.RELU), IRNode(id="unused", op=OpType.TANH)]
    edges = [IREdge(src="input", dst="used"), IREdge(src="input", dst="unused"), IREdge(src="used", dst="output")]
    with pytest.raises(IRValidationError, match="unused"):
        build_module(_ir("BD", 4, nodes, edges))


def test_layout_change_is_rejected() -> None:
    ir = BlueprintIR(name="t", blueprint_class=BlueprintClass.MLP, input=TensorInterface(layout="BD", features=4),
                     output=TensorInterface(layout="BTD", features=4), nodes=[IRNode(id="r", op=OpType.RELU)],
                     edges=[IREdge(src="input", dst="r"), IREdge(src="r", dst="output")])
    with pytest.raises(IRValidationError, match="layout"):
        build_module(ir)


def test_oversize_graph_is_rejected_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 x 8192 x 8192 ≈ 134M parameters (over MAX_IR_PARAMETERS): rejected by counting, before any layer exists.
    ir = _chain("BD", 8192, (OpType.LINEAR, {"in_features": 8192, "out_features": 8192}),
                (OpType.LINEAR, {"in_features": 8192, "out_features": 8192}))

    def no_allocation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a layer was built before the size check")

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_allocation)
    with pytest.raises(IRValidationError, match="MAX_IR_PARAMETERS"):
        build_module(ir)


def test_zero_init_and_no_bias() -> None:
    m = build_module(_chain("BD", 4, (OpType.LINEAR, {"in_features": 4, "out_features": 4, "bias": False,
                                                      "init": "zeros"})))
    assert [tuple(p.shape) for p in m.parameters()] == [(4, 4)]
    assert torch.count_nonzero(m(torch.randn(2, 4))) == 0
