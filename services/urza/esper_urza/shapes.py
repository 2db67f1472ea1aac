"""Urza's admission check of a BlueprintIR: this Urza's local limits, then the shared shape inference.

Shapes, attributes and parameter counts are inferred by :mod:`esper_contracts.ir_shapes`, the same
pure-Python rules the SDK's interpreter builds from, so Urza can refuse a blueprint with the exact
reason the interpreter would give, without importing torch. What is Urza's own is policy: how many
nodes and parameters, and which ops, this deployment accepts.
"""

from __future__ import annotations

from collections.abc import Collection

from esper_contracts import MAX_IR_NODES, MAX_IR_PARAMETERS, BlueprintIR, OpType
from esper_contracts.ir_shapes import IRShapeError, IRShapes, infer_ir_shapes


class BlueprintRejected(ValueError):
    """The blueprint cannot be built as declared; the message names the node and the wrong value."""


#: What the check learned: parameters to allocate and the feature size each node produces.
ShapeReport = IRShapes


def check_blueprint(
    ir: BlueprintIR,
    *,
    max_parameters: int = MAX_IR_PARAMETERS,
    max_nodes: int = MAX_IR_NODES,
    allowed_ops: Collection[OpType] | None = None,
) -> ShapeReport:
    """Check size, ops, attributes and shapes of ``ir`` under these limits; raise BlueprintRejected if refused."""
    if len(ir.nodes) > max_nodes:
        raise BlueprintRejected(f"blueprint {ir.name!r} has {len(ir.nodes)} nodes; "
                                f"this Urza accepts at most {max_nodes}")
    if allowed_ops is not None:
        banned = sorted({n.op.value for n in ir.nodes} - {op.value for op in allowed_ops})
        if banned:
            raise BlueprintRejected(f"blueprint {ir.name!r} uses op(s) {banned} that this Urza does not accept")
    try:
        return infer_ir_shapes(ir, max_parameters=max_parameters)
    except IRShapeError as exc:
        raise BlueprintRejected(str(exc)) from exc
