"""The shared shape inference against torch: what it infers is what the interpreter builds and runs.

``esper_contracts.ir_shapes`` counts parameters and propagates shapes without torch (Urza relies on
it to accept or refuse blueprints); here ~400 random graphs are built with torch to hold it to the truth.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from esper_contracts import BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, TensorInterface
from esper_contracts.ir_shapes import FEATURE_AXIS, IRShapeError, infer_ir_shapes
from esper_kernels import IRValidationError, build_module

#: A concrete input per layout; the feature axis is filled in per graph.
_SHAPES = {"BD": [3, 0], "BTD": [2, 5, 0], "BCHW": [2, 0, 5, 6]}


def _chain(layout: str, features: int, ops: list[tuple[str, dict[str, Any]]], out_features: int,
           merge: str | None) -> BlueprintIR:
    """input -> op1 -> ... -> opN [-> merge(input, opN)] -> output."""
    nodes = [IRNode(id=f"n{i}", op=OpType(op), attrs=attrs) for i, (op, attrs) in enumerate(ops)]
    edges = [IREdge(src="input" if i == 0 else f"n{i - 1}", dst=f"n{i}") for i in range(len(ops))]
    last = f"n{len(ops) - 1}"
    if merge is not None:
        nodes.append(IRNode(id="merge", op=OpType(merge)))
        edges += [IREdge(src="input", dst="merge", port=0), IREdge(src=last, dst="merge", port=1)]
        last = "merge"
    edges.append(IREdge(src=last, dst="output"))
    return BlueprintIR(name="t", blueprint_class=BlueprintClass.MLP, nodes=nodes, edges=edges,
                       input=TensorInterface(layout=layout, features=features),  # type: ignore[arg-type]
                       output=TensorInterface(layout=layout, features=out_features))  # type: ignore[arg-type]


def _random_op(rng: random.Random, f: int) -> tuple[str, dict[str, Any], int]:
    """A random op for an input of ``f`` features; usually consistent, sometimes deliberately wrong."""
    off = (lambda v: v + rng.choice([-1, 1, 2])) if rng.random() < 0.15 else (lambda v: v)
    kind = rng.choice(["linear", "conv2d", "layer_norm", "batch_norm2d", "group_norm", "multihead_attention",
                       "relu", "gelu", "silu", "tanh", "sigmoid", "dropout", "scale", "identity"])
    out = f
    attrs: dict[str, Any] = {}
    if kind == "linear":
        out = rng.choice([f, 2 * f, max(1, f // 2)])
        attrs = {"in_features": off(f), "out_features": out, "bias": rng.random() < 0.5}
    elif kind == "conv2d":
        out = rng.choice([f, 2 * f])
        k = rng.choice([1, 3, 5, 2])
        attrs = {"in_channels": off(f), "out_channels": out, "kernel_size": k, "groups": rng.choice([1, 1, 2, f]),
                 "bias": rng.random() < 0.5}
        if rng.random() < 0.3:
            attrs["padding"] = off(k // 2)
    elif kind == "layer_norm":
        attrs = {"normalized_shape": rng.choice([off(f), [off(f)]])}
    elif kind == "batch_norm2d":
        attrs = {"num_features": off(f)}
    elif kind == "group_norm":
        attrs = {"num_groups": rng.choice([1, 2, 3, 4]), "num_channels": off(f)}
    elif kind == "multihead_attention":
        attrs = {"embed_dim": off(f), "num_heads": rng.choice([1, 2, 3, 4]), "bias": rng.random() < 0.7}
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
            kind, attrs, feats = _random_op(rng, feats)
            ops.append((kind, attrs))
        merge = rng.choice(["add", "add", "mul"]) if feats == f and rng.random() < 0.5 else None
        try:
            found.append(_chain(layout, f, ops, feats if rng.random() < 0.9 else feats + 1, merge))
        except ValueError:  # the contract itself refused it; nothing to compare
            continue
    return found


def test_inferred_parameters_and_output_shape_match_the_built_module() -> None:
    torch.manual_seed(0)
    cases = _random_blueprints(400)
    accepted = 0
    for ir in cases:
        try:
            shapes = infer_ir_shapes(ir)
        except IRShapeError as exc:
            # The interpreter refuses the same graphs, with the same reason, as its own error type.
            try:
                build_module(ir)
            except IRValidationError as refused:
                assert str(refused) == str(exc)
            else:
                raise AssertionError(f"inference refused ({exc}) but the interpreter built {ir.model_dump_json()}")
            continue
        accepted += 1
        module = build_module(ir).eval()
        assert shapes.parameter_count == sum(p.numel() for p in module.parameters()), ir.model_dump_json()
        input_shape = list(_SHAPES[ir.input.layout])
        input_shape[FEATURE_AXIS[ir.input.layout]] = ir.input.features
        with torch.no_grad():
            out = module(torch.randn(*input_shape))
        assert tuple(out.shape) == shapes.output_shape(input_shape), ir.model_dump_json()
    assert 50 < accepted < len(cases) - 50  # the corpus exercises both verdicts
