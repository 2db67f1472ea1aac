"""The shape checker: parameter counts per op, every rejection with its reason, agreement with the SDK interpreter."""

from __future__ import annotations

import random
from typing import Any

import pytest

from esper_contracts import BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, TensorInterface
from esper_urza.shapes import BlueprintRejected, check_blueprint


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
    assert check_blueprint(ir).parameter_count == params


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
    with pytest.raises(BlueprintRejected) as info:
        check_blueprint(ir)
    assert reason in str(info.value)


def test_size_limits_are_configurable() -> None:
    ir = chain("BD", 64, ("linear", {"in_features": 64, "out_features": 64}))
    with pytest.raises(BlueprintRejected, match="more than 4000 parameters"):
        check_blueprint(ir, max_parameters=4000)
    with pytest.raises(BlueprintRejected, match="this Urza accepts at most 0"):
        check_blueprint(ir, max_nodes=0)
    with pytest.raises(BlueprintRejected, match=r"\['linear'\]"):
        check_blueprint(ir, allowed_ops=[OpType.RELU])
    assert check_blueprint(ir, max_parameters=64 * 65).parameter_count == 64 * 65


# --- agreement with the SDK's IR interpreter (which builds the graph with torch) ---------------------------------


def _random_op(rng: random.Random, layout: str, f: int) -> tuple[str, dict[str, Any], int]:
    """A random op for an input of ``f`` features; usually consistent, sometimes deliberately wrong."""
    off = (lambda v: v + rng.choice([-1, 1, 2])) if rng.random() < 0.15 else (lambda v: v)
    kind = rng.choice(["linear", "conv2d", "layer_norm", "batch_norm2d", "group_norm", "multihead_attention",
                       "relu", "gelu", "dropout", "scale", "identity"])
    out = f
    attrs: dict[str, Any] = {}
    if kind == "linear":
        out = rng.choice([f, 2 * f, max(1, f // 2)])
        attrs = {"in_features": off(f), "out_features": out, "bias": rng.random() < 0.5}
    elif kind == "conv2d":
        out = rng.choice([f, 2 * f])
        k = rng.choice([1, 3, 5, 2])
        attrs = {"in_channels": off(f), "out_channels": out, "kernel_size": k, "groups": rng.choice([1, 1, 2, f])}
        if rng.random() < 0.3:
            attrs["padding"] = off(k // 2)
    elif kind == "layer_norm":
        attrs = {"normalized_shape": rng.choice([off(f), [off(f)]])}
    elif kind == "batch_norm2d":
        attrs = {"num_features": off(f)}
    elif kind == "group_norm":
        attrs = {"num_groups": rng.choice([1, 2, 3, 4]), "num_channels": off(f)}
    elif kind == "multihead_attention":
        attrs = {"embed_dim": off(f), "num_heads": rng.choice([1, 2, 3, 4])}
    elif kind == "dropout":
        attrs = {"p": rng.choice([0.0, 0.1, 0.5, 1.0])}
    elif kind == "scale":
        attrs = {"value": rng.choice([0.5, 2, -1.0])}
    return kind, attrs, out


def _random_blueprints(n: int) -> list[BlueprintIR]:
    rng = random.Random(1234)
    found = []
    while len(found) < n:
        layout = rng.choice(["BD", "BTD", "BCHW"])
        f = rng.choice([4, 6, 8, 12])
        ops, feats = [], f
        for _ in range(rng.randint(1, 4)):
            kind, attrs, feats = _random_op(rng, layout, feats)
            ops.append((kind, attrs))
        try:
            found.append(chain(layout, f, *ops, out_features=feats if rng.random() < 0.9 else feats + 1,
                               residual=feats == f and rng.random() < 0.5))
        except ValueError:  # the contract itself refused it; nothing to compare
            continue
    return found


def test_the_checker_agrees_with_the_sdk_interpreter() -> None:
    # The dev environment always has the SDK: this comparison must run, never silently skip.
    from esper.blueprints import interpreter
    from esper_urza.library import library_blueprints

    cases = library_blueprints() + _random_blueprints(400)
    accepted = 0
    for ir in cases:
        try:
            ours: int | None = check_blueprint(ir).parameter_count
        except BlueprintRejected:
            ours = None
        try:
            theirs: int | None = interpreter.ir_parameter_count(ir)
        except ValueError:
            theirs = None
        assert ours == theirs, f"checker says {ours}, interpreter says {theirs} for {ir.model_dump_json()}"
        accepted += ours is not None
    assert 50 < accepted < len(cases) - 50  # the corpus exercises both verdicts
