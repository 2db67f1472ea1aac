"""The one BlueprintIR interpreter: validate a declarative graph, then run it as an eager ``nn.Module``.

A BlueprintIR is data. ``build_module`` checks every node's attributes against the layer it names,
propagates the tensor shape from ``input`` to ``output`` (layout and feature size; spatial and token
axes are kept by every op, so they stay symbolic), counts parameters *before* allocating anything,
and only then instantiates standard PyTorch layers. The resulting :class:`IRModule` executes the
graph in topological order with a precomputed plan, so a forward pass is a short loop over calls.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import MAX_IR_PARAMETERS, BlueprintIR, OpType
from esper_contracts.blueprints import INPUT_NODE, OUTPUT_NODE

from .errors import IRValidationError

#: Bumped whenever the interpreter's semantics change: it is part of every eager artifact's toolchain hash.
INTERPRETER_VERSION = "1"

_SEQUENCE_LAYOUTS = frozenset({"BD", "BTD"})


@dataclass(frozen=True)
class _AttrSpec:
    kind: type  # int, float, bool, str or list
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class _OpSpec:
    attrs: dict[str, _AttrSpec] = field(default_factory=dict)
    layouts: frozenset[str] = frozenset({"BD", "BTD", "BCHW"})


_INIT = _AttrSpec(str, required=False, default="default")
_OP_SPECS: dict[OpType, _OpSpec] = {
    OpType.LINEAR: _OpSpec(
        {"in_features": _AttrSpec(int), "out_features": _AttrSpec(int),
         "bias": _AttrSpec(bool, False, True), "init": _INIT},
        _SEQUENCE_LAYOUTS,
    ),
    OpType.CONV2D: _OpSpec(
        {"in_channels": _AttrSpec(int), "out_channels": _AttrSpec(int), "kernel_size": _AttrSpec(int),
         "padding": _AttrSpec(int, False, None), "groups": _AttrSpec(int, False, 1),
         "bias": _AttrSpec(bool, False, True), "init": _INIT},
        frozenset({"BCHW"}),
    ),
    OpType.LAYER_NORM: _OpSpec({"normalized_shape": _AttrSpec(list)}, _SEQUENCE_LAYOUTS),
    OpType.BATCH_NORM2D: _OpSpec({"num_features": _AttrSpec(int)}, frozenset({"BCHW"})),
    OpType.GROUP_NORM: _OpSpec({"num_groups": _AttrSpec(int), "num_channels": _AttrSpec(int)},
                               frozenset({"BD", "BCHW"})),
    OpType.DROPOUT: _OpSpec({"p": _AttrSpec(float, False, 0.1)}),
    OpType.SCALE: _OpSpec({"value": _AttrSpec(float)}),
    OpType.MULTIHEAD_ATTENTION: _OpSpec(
        {"embed_dim": _AttrSpec(int), "num_heads": _AttrSpec(int),
         "dropout": _AttrSpec(float, False, 0.0), "bias": _AttrSpec(bool, False, True)},
        frozenset({"BTD"}),
    ),
} | {op: _OpSpec() for op in (OpType.RELU, OpType.GELU, OpType.SILU, OpType.TANH, OpType.SIGMOID,
                               OpType.ADD, OpType.MUL, OpType.IDENTITY)}

_ACTIVATIONS: dict[OpType, Callable[[torch.Tensor], torch.Tensor]] = {
    OpType.RELU: F.relu,
    OpType.GELU: F.gelu,
    OpType.SILU: F.silu,
    OpType.TANH: torch.tanh,
    OpType.SIGMOID: torch.sigmoid,
}


def _coerce_attrs(node_id: str, op: OpType, attrs: dict[str, Any]) -> dict[str, Any]:
    """Check a node's attributes against its op and fill defaults; raises IRValidationError."""
    spec = _OP_SPECS[op]
    unknown = sorted(set(attrs) - set(spec.attrs))
    if unknown:
        raise IRValidationError(f"node {node_id!r} ({op.value}): unknown attribute(s) {unknown}; "
                                f"allowed: {sorted(spec.attrs)}")
    out: dict[str, Any] = {}
    for name, a in spec.attrs.items():
        if name not in attrs:
            if a.required:
                raise IRValidationError(f"node {node_id!r} ({op.value}): missing attribute {name!r}")
            out[name] = a.default
            continue
        value = attrs[name]
        if a.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif a.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        elif a.kind is bool:
            ok = isinstance(value, bool)
        elif a.kind is list:  # normalized_shape: one int, or a list of exactly one int
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            ok = isinstance(value, list) and len(value) == 1 and isinstance(value[0], int)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise IRValidationError(f"node {node_id!r} ({op.value}): attribute {name!r}={value!r} "
                                    f"is not a valid {a.kind.__name__}")
        out[name] = value
    return out


def _positive(node_id: str, **values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise IRValidationError(f"node {node_id!r}: {name} must be >= 1, got {v}")


def _node_output(node_id: str, op: OpType, attrs: dict[str, Any], layout: str, inputs: list[int]) -> tuple[int, int]:
    """Shape inference for one node: returns (output features, parameter count)."""
    spec = _OP_SPECS[op]
    if layout not in spec.layouts:
        hint = " (use a 1x1 conv2d on BCHW)" if op is OpType.LINEAR else ""
        raise IRValidationError(f"node {node_id!r}: {op.value} does not apply to layout {layout}; "
                                f"it needs one of {sorted(spec.layouts)}{hint}")
    feats = inputs[0]
    if op in (OpType.ADD, OpType.MUL):
        if inputs[0] != inputs[1]:
            raise IRValidationError(
                f"node {node_id!r}: {op.value} of mismatched feature sizes {inputs[0]} and {inputs[1]}")
        return feats, 0
    if op is OpType.LINEAR:
        fin, fout = attrs["in_features"], attrs["out_features"]
        _positive(node_id, in_features=fin, out_features=fout)
        if fin != feats:
            raise IRValidationError(f"node {node_id!r}: linear in_features={fin} but its input has {feats} features")
        return fout, fin * fout + (fout if attrs["bias"] else 0)
    if op is OpType.CONV2D:
        cin, cout, k, groups = attrs["in_channels"], attrs["out_channels"], attrs["kernel_size"], attrs["groups"]
        _positive(node_id, in_channels=cin, out_channels=cout, kernel_size=k, groups=groups)
        if cin != feats:
            raise IRValidationError(f"node {node_id!r}: conv2d in_channels={cin} but its input has {feats} channels")
        if k % 2 == 0:
            raise IRValidationError(f"node {node_id!r}: conv2d kernel_size={k} must be odd to keep the spatial size")
        padding = attrs["padding"] if attrs["padding"] is not None else k // 2
        if padding != k // 2:
            raise IRValidationError(f"node {node_id!r}: conv2d padding={padding} changes the spatial size; "
                                    f"kernel_size={k} needs padding={k // 2}")
        attrs["padding"] = padding
        if cin % groups or cout % groups:
            raise IRValidationError(f"node {node_id!r}: conv2d groups={groups} must divide in_channels={cin} "
                                    f"and out_channels={cout}")
        return cout, cout * (cin // groups) * k * k + (cout if attrs["bias"] else 0)
    if op is OpType.LAYER_NORM:
        n = attrs["normalized_shape"][0]
        if n != feats:
            raise IRValidationError(
                f"node {node_id!r}: layer_norm normalized_shape={n} but its input has {feats} features")
        return feats, 2 * n
    if op is OpType.BATCH_NORM2D:
        if attrs["num_features"] != feats:
            raise IRValidationError(f"node {node_id!r}: batch_norm2d num_features={attrs['num_features']} "
                                    f"but its input has {feats} channels")
        return feats, 2 * feats
    if op is OpType.GROUP_NORM:
        g, c = attrs["num_groups"], attrs["num_channels"]
        _positive(node_id, num_groups=g)
        if c != feats or c % g:
            raise IRValidationError(f"node {node_id!r}: group_norm num_channels={c}, num_groups={g} does not "
                                    f"fit an input of {feats} channels")
        return feats, 2 * c
    if op is OpType.MULTIHEAD_ATTENTION:
        e, h = attrs["embed_dim"], attrs["num_heads"]
        _positive(node_id, embed_dim=e, num_heads=h)
        if e != feats or e % h:
            raise IRValidationError(f"node {node_id!r}: multihead_attention embed_dim={e}, num_heads={h} does "
                                    f"not fit an input of {feats} features")
        if not 0.0 <= attrs["dropout"] < 1.0:
            raise IRValidationError(f"node {node_id!r}: dropout={attrs['dropout']} must be in [0, 1)")
        return feats, 4 * e * e + (4 * e if attrs["bias"] else 0)
    if op is OpType.DROPOUT and not 0.0 <= attrs["p"] < 1.0:
        raise IRValidationError(f"node {node_id!r}: dropout p={attrs['p']} must be in [0, 1)")
    return feats, 0


@dataclass(frozen=True)
class _ValidatedGraph:
    order: list[str]
    ops: dict[str, OpType]
    attrs: dict[str, dict[str, Any]]
    inputs: dict[str, list[str]]  # node id -> source ids by port
    output_src: str
    parameter_count: int


def _validate(ir: BlueprintIR) -> _ValidatedGraph:
    if ir.input.layout != ir.output.layout:
        raise IRValidationError(f"blueprint {ir.name!r}: no op changes the layout, so input {ir.input.layout} "
                                f"cannot become output {ir.output.layout}")
    ops = {n.id: n.op for n in ir.nodes}
    inputs: dict[str, list[str]] = {n.id: [""] * (2 if n.op in (OpType.ADD, OpType.MUL) else 1) for n in ir.nodes}
    output_src = ""
    for e in ir.edges:
        if e.dst == OUTPUT_NODE:
            output_src = e.src
        else:
            inputs[e.dst][e.port] = e.src
    # Every node must feed the output: a dead branch is a malformed blueprint, not free decoration.
    live, stack = set(), [output_src]
    while stack:
        n = stack.pop()
        if n in live or n == INPUT_NODE:
            continue
        live.add(n)
        stack.extend(inputs[n])
    dead = sorted(set(ops) - live)
    if dead:
        raise IRValidationError(f"blueprint {ir.name!r}: node(s) {dead} do not reach the output")

    order = ir.topological_order()
    features: dict[str, int] = {INPUT_NODE: ir.input.features}
    attrs: dict[str, dict[str, Any]] = {}
    total = 0
    node_attrs = {n.id: n.attrs for n in ir.nodes}
    for node_id in order:
        a = _coerce_attrs(node_id, ops[node_id], dict(node_attrs[node_id]))
        feats, params = _node_output(node_id, ops[node_id], a, ir.input.layout, [features[s] for s in inputs[node_id]])
        if a.get("init", "default") not in ("default", "zeros"):
            raise IRValidationError(f"node {node_id!r}: init={a['init']!r} must be 'default' or 'zeros'")
        features[node_id], attrs[node_id] = feats, a
        total += params
        if total > MAX_IR_PARAMETERS:
            raise IRValidationError(f"blueprint {ir.name!r}: more than MAX_IR_PARAMETERS={MAX_IR_PARAMETERS} "
                                    f"parameters (reached {total} at node {node_id!r})")
    if features[output_src] != ir.output.features:
        raise IRValidationError(f"blueprint {ir.name!r}: the graph produces {features[output_src]} features but "
                                f"the output interface declares {ir.output.features}")
    return _ValidatedGraph(order, ops, attrs, inputs, output_src, total)


def ir_parameter_count(ir: BlueprintIR) -> int:
    """Validate ``ir`` and return how many parameters its module will have, without allocating them."""
    return _validate(ir).parameter_count


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
        m = nn.LayerNorm(a["normalized_shape"][0])
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

    def __init__(self, ir: BlueprintIR, graph: _ValidatedGraph) -> None:
        super().__init__()
        self.blueprint_name = ir.name
        self.ir_hash = ir.ir_hash()
        self.parameter_count = graph.parameter_count
        self.layers = nn.ModuleDict()
        slot = {INPUT_NODE: 0}
        plan: list[_Step] = []
        for node_id in graph.order:
            op = graph.ops[node_id]
            srcs = [slot[s] for s in graph.inputs[node_id]]
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
    graph = _validate(ir)
    module = IRModule(ir, graph)
    actual = sum(p.numel() for p in module.parameters())
    if actual != graph.parameter_count:  # guards the counting rules above against drifting from torch's layers
        raise IRValidationError(f"blueprint {ir.name!r}: counted {graph.parameter_count} parameters, built {actual}")
    return module
