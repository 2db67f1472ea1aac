"""The one BlueprintIR interpreter: validate a declarative graph, then run it as an eager ``nn.Module``.

A BlueprintIR is data. ``build_module`` first runs the shared, torch-free inference of
:mod:`esper_contracts.ir_shapes` (every node's attributes against the layer it names, the feature
size from ``input`` to ``output``, the parameter count *before* allocating anything; Urza refuses
blueprints with the same rules), and only then instantiates standard PyTorch layers from the
normalised attributes it returns. The resulting :class:`IRModule` executes the
graph in topological order with a precomputed plan, so a forward pass is a short loop over calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import BlueprintIR, OpType
from esper_contracts.blueprints import INPUT_NODE
from esper_contracts.ir_shapes import IRShapeError, IRShapes, infer_ir_shapes

from .errors import IRValidationError

#: Bumped whenever the interpreter's semantics change: it is part of every eager artifact's toolchain hash.
INTERPRETER_VERSION = "1"

_ACTIVATIONS: dict[OpType, Callable[[torch.Tensor], torch.Tensor]] = {
    OpType.RELU: F.relu,
    OpType.GELU: F.gelu,
    OpType.SILU: F.silu,
    OpType.TANH: torch.tanh,
    OpType.SIGMOID: torch.sigmoid,
}


def _infer(ir: BlueprintIR) -> IRShapes:
    """The shared shape inference, with its refusals re-raised as the SDK's IRValidationError."""
    try:
        return infer_ir_shapes(ir)
    except IRShapeError as exc:
        raise IRValidationError(str(exc)) from exc


def ir_parameter_count(ir: BlueprintIR) -> int:
    """Validate ``ir`` and return how many parameters its module will have, without allocating them."""
    return _infer(ir).parameter_count


class _SelfAttention(nn.Module):
    """Batch-first self-attention returning only the attended values (the IR's multihead_attention)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, bias=bias, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _make_layer(op: OpType, a: dict[str, Any]) -> nn.Module:
    if op is OpType.LINEAR:
        m: nn.Module = nn.Linear(a["in_features"], a["out_features"], bias=a["bias"])
    elif op is OpType.CONV2D:
        m = nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], padding=a["padding"],
                      groups=a["groups"], bias=a["bias"])
    elif op is OpType.LAYER_NORM:
        m = nn.LayerNorm(a["normalized_shape"])
    elif op is OpType.BATCH_NORM2D:
        m = nn.BatchNorm2d(a["num_features"])
    elif op is OpType.GROUP_NORM:
        m = nn.GroupNorm(a["num_groups"], a["num_channels"])
    elif op is OpType.DROPOUT:
        m = nn.Dropout(a["p"])
    else:
        m = _SelfAttention(a["embed_dim"], a["num_heads"], a["dropout"], a["bias"])
    if a.get("init") == "zeros":
        with torch.no_grad():
            for p in m.parameters():
                p.zero_()
    return m


# (fn, first input slot, second input slot or -1, output slot)
_Step = tuple[Callable[..., torch.Tensor], int, int, int]


class IRModule(nn.Module):
    """An interpreted BlueprintIR. Layers live in ``layers`` (keyed ``n_<node id>``); ``forward`` runs the plan."""

    def __init__(self, ir: BlueprintIR, graph: IRShapes) -> None:
        super().__init__()
        self.blueprint_name = ir.name
        self.ir_hash = ir.ir_hash()
        self.parameter_count = graph.parameter_count
        self.layers = nn.ModuleDict()
        slot = {INPUT_NODE: 0}
        plan: list[_Step] = []
        for node_id in graph.order:
            op = graph.ops[node_id]
            srcs = [slot[s] for s in graph.sources[node_id]]
            if op is OpType.IDENTITY:
                slot[node_id] = srcs[0]  # an alias, not a step
                continue
            fn: Callable[..., torch.Tensor]
            if op in _ACTIVATIONS:
                fn = _ACTIVATIONS[op]
            elif op is OpType.ADD:
                fn = torch.add
            elif op is OpType.MUL:
                fn = torch.mul
            elif op is OpType.SCALE:
                fn = functools.partial(torch.mul, other=graph.attrs[node_id]["value"])
            else:
                layer = _make_layer(op, graph.attrs[node_id])
                self.layers[f"n_{node_id}"] = layer
                fn = layer
            slot[node_id] = len(slot)
            plan.append((fn, srcs[0], srcs[1] if len(srcs) > 1 else -1, slot[node_id]))
        self._plan = plan
        self._slots = len(slot)
        self._output_slot = slot[graph.output_src]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the graph on ``x`` (shaped by the blueprint's input interface)."""
        values: list[Any] = [None] * self._slots
        values[0] = x
        for fn, a, b, dst in self._plan:
            values[dst] = fn(values[a]) if b < 0 else fn(values[a], values[b])
        return values[self._output_slot]

    def extra_repr(self) -> str:
        return f"blueprint={self.blueprint_name!r}, ir_hash={self.ir_hash[:12]}, parameters={self.parameter_count}"


def build_module(ir: BlueprintIR) -> IRModule:
    """Validate ``ir`` (attributes, shapes, parameter count) and instantiate it as an eager module.

    Raises :class:`IRValidationError` naming the offending node and value when the graph cannot be
    built; nothing is allocated for a graph over ``MAX_IR_PARAMETERS``.
    """
    graph = _infer(ir)
    module = IRModule(ir, graph)
    actual = sum(p.numel() for p in module.parameters())
    if actual != graph.parameter_count:  # guards the shared counting rules against drifting from torch's layers
        raise IRValidationError(f"blueprint {ir.name!r}: counted {graph.parameter_count} parameters, built {actual}")
    return module
