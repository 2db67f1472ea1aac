"""Shape and parameter-count inference over a BlueprintIR, in pure Python: the one place that knows op semantics.

The contract already guarantees a well-formed graph (known endpoints, port arity, no cycles, size
limits). Here each node's attributes are checked against the layer its op names, and the feature
size is propagated from ``input`` to ``output``: every op keeps the layout and the batch, token and
spatial axes (convolutions must pad to keep H and W), so the abstract value of a tensor is just its
feature count. Urza uses this to refuse a bad blueprint without importing torch; the SDK's
interpreter uses it before allocating a single layer, then builds exactly what was inferred.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .blueprints import INPUT_NODE, MAX_IR_PARAMETERS, OUTPUT_NODE, BlueprintIR, OpType

#: Which axis of a concrete tensor holds the features, per layout.
FEATURE_AXIS: dict[str, int] = {"BD": 1, "BTD": 2, "BCHW": 1}
#: The axes whose size may vary at run time (all but the feature axis): compiled kernels keep them dynamic.
DYNAMIC_AXES: dict[str, list[int]] = {"BD": [0], "BTD": [0, 1], "BCHW": [0, 2, 3]}


class IRShapeError(ValueError):
    """The blueprint cannot be built as declared; the message names the node and the wrong value.

    Callers re-raise it as their own error type (Urza's ``BlueprintRejected``, the SDK's
    ``IRValidationError``) with the same message.
    """


@dataclass(frozen=True)
class IRShapes:
    """What inference learned about a buildable BlueprintIR: enough to build it without re-deriving anything."""

    parameter_count: int
    layout: str
    #: node id (and ``input``) -> the feature size it produces
    features: dict[str, int]
    #: node ids in topological order
    order: tuple[str, ...]
    ops: dict[str, OpType]
    #: node id -> attributes checked, normalised (``normalized_shape`` is an int, ``padding`` is set)
    #: and with every default filled in
    attrs: dict[str, dict[str, Any]]
    #: node id -> the node feeding each of its input ports
    sources: dict[str, tuple[str, ...]]
    #: the node whose value is the graph's output
    output_src: str

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The concrete output shape for a concrete ``input_shape``: only the feature axis may change."""
        axis = FEATURE_AXIS[self.layout]
        # one letter of the layout per axis: BD is rank 2, BTD rank 3, BCHW rank 4
        if len(input_shape) != len(self.layout) or input_shape[axis] != self.features[INPUT_NODE]:
            raise IRShapeError(f"input shape {list(input_shape)} does not fit layout {self.layout} with "
                               f"{self.features[INPUT_NODE]} features")
        out = list(input_shape)
        out[axis] = self.features[self.output_src]
        return tuple(out)


# Attribute kinds: a checker returns the normalised value or raises ValueError with what it expected.
def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("a finite number")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _init(value: Any) -> str:
    if value not in ("default", "zeros"):
        raise ValueError("'default' or 'zeros'")
    return str(value)


def _one_int(value: Any) -> int:
    # normalized_shape: the size of the last axis, written as 7 or [7] (torch accepts both)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer or a list of exactly one integer")
    return value


_Attr = tuple[Callable[[Any], Any], Any]  # (checker, default); default _REQUIRED means "must be given"
_REQUIRED = object()
_SEQ, _IMG, _ANY = frozenset({"BD", "BTD"}), frozenset({"BCHW"}), frozenset({"BD", "BTD", "BCHW"})
_TWO_INPUTS = (OpType.ADD, OpType.MUL)

#: op -> (attribute schema, layouts it applies to)
_SCHEMA: dict[OpType, tuple[dict[str, _Attr], frozenset[str]]] = {
    OpType.LINEAR: ({"in_features": (_int, _REQUIRED), "out_features": (_int, _REQUIRED),
                     "bias": (_bool, True), "init": (_init, "default")}, _SEQ),
    OpType.CONV2D: ({"in_channels": (_int, _REQUIRED), "out_channels": (_int, _REQUIRED),
                     "kernel_size": (_int, _REQUIRED), "padding": (_int, None), "groups": (_int, 1),
                     "bias": (_bool, True), "init": (_init, "default")}, _IMG),
    OpType.LAYER_NORM: ({"normalized_shape": (_one_int, _REQUIRED)}, _SEQ),
    OpType.BATCH_NORM2D: ({"num_features": (_int, _REQUIRED)}, _IMG),
    OpType.GROUP_NORM: ({"num_groups": (_int, _REQUIRED), "num_channels": (_int, _REQUIRED)},
                        frozenset({"BD", "BCHW"})),
    OpType.DROPOUT: ({"p": (_float, 0.1)}, _ANY),
    OpType.SCALE: ({"value": (_float, _REQUIRED)}, _ANY),
    OpType.MULTIHEAD_ATTENTION: ({"embed_dim": (_int, _REQUIRED), "num_heads": (_int, _REQUIRED),
                                  "dropout": (_float, 0.0), "bias": (_bool, True)}, frozenset({"BTD"})),
}
for _op in (OpType.RELU, OpType.GELU, OpType.SILU, OpType.TANH, OpType.SIGMOID, OpType.ADD, OpType.MUL,
            OpType.IDENTITY):
    _SCHEMA[_op] = ({}, _ANY)


def _attrs(node_id: str, op: OpType, given: dict[str, Any]) -> dict[str, Any]:
    schema, _layouts = _SCHEMA[op]
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise IRShapeError(f"node {node_id!r} ({op.value}): unknown attribute(s) {unknown}; "
                           f"{op.value} takes {sorted(schema) or 'no attributes'}")
    out: dict[str, Any] = {}
    for name, (check, default) in schema.items():
        if name not in given:
            if default is _REQUIRED:
                raise IRShapeError(f"node {node_id!r} ({op.value}): attribute {name!r} is required")
            out[name] = default
            continue
        try:
            out[name] = check(given[name])
        except ValueError as exc:
            raise IRShapeError(f"node {node_id!r} ({op.value}): attribute {name}={given[name]!r} "
                               f"must be {exc}") from None
    return out


#: Attributes whose default the canonical form leaves out (every other default is written out). The split is
#: the built-in blueprints' own spelling, so that canonical hashing left most of their ids as they were
#: (decision 0015); what matters is only that there is one form.
_OMITTED_WHEN_DEFAULT = {(OpType.CONV2D, "padding"), (OpType.CONV2D, "groups"),
                         (OpType.MULTIHEAD_ATTENTION, "dropout"), (OpType.MULTIHEAD_ATTENTION, "bias")}


def canonical_attrs(op: OpType, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` as the blueprint id sees it: one spelling for every way of writing the same attributes.

    Two IRs that differ only in a default written or omitted (``bias: true``), in ``normalized_shape`` written
    as 7 or [7], in an integer written for a float, or in conv2d's padding given as the only value allowed,
    compute the same thing and get the same id. Lenient: a value its checker refuses is kept as given (shape
    inference reports it); the hash must not be where a bad IR fails.
    """
    schema, _layouts = _SCHEMA[op]
    out: dict[str, Any] = {}
    for name, value in given.items():
        check = schema[name][0] if name in schema else None
        try:
            out[name] = check(value) if check is not None else value
        except ValueError:
            out[name] = value
    if isinstance(out.get("normalized_shape"), int):
        out["normalized_shape"] = [out["normalized_shape"]]
    kernel = out.get("kernel_size")
    for name, (_check, default) in schema.items():
        if (op, name) in _OMITTED_WHEN_DEFAULT:
            if name == "padding" and isinstance(kernel, int):
                default = kernel // 2  # the one padding that keeps H and W (inference enforces it)
            if name in out and out[name] == default:
                del out[name]
        elif name not in out and default is not _REQUIRED:
            out[name] = default
    return out


def _at_least_one(node_id: str, op: OpType, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise IRShapeError(f"node {node_id!r} ({op.value}): {name}={value} must be at least 1")


def _rate(node_id: str, op: OpType, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise IRShapeError(f"node {node_id!r} ({op.value}): {name}={value} must be in [0, 1)")


def _infer_node(node_id: str, op: OpType, a: dict[str, Any], inputs: list[int]) -> tuple[int, int]:
    """(output features, parameters) of one node given the feature sizes of its inputs; may fill ``a``."""
    x = inputs[0]
    if op in _TWO_INPUTS:
        if inputs[0] != inputs[1]:
            raise IRShapeError(f"node {node_id!r} ({op.value}): inputs have different feature sizes "
                               f"{inputs[0]} and {inputs[1]}")
        return x, 0
    if op is OpType.LINEAR:
        fin, fout = a["in_features"], a["out_features"]
        _at_least_one(node_id, op, in_features=fin, out_features=fout)
        if fin != x:
            raise IRShapeError(f"node {node_id!r} (linear): in_features={fin} but its input has {x} features")
        return fout, fin * fout + (fout if a["bias"] else 0)
    if op is OpType.CONV2D:
        cin, cout, k, groups = a["in_channels"], a["out_channels"], a["kernel_size"], a["groups"]
        _at_least_one(node_id, op, in_channels=cin, out_channels=cout, kernel_size=k, groups=groups)
        if cin != x:
            raise IRShapeError(f"node {node_id!r} (conv2d): in_channels={cin} but its input has {x} channels")
        if k % 2 == 0:
            raise IRShapeError(f"node {node_id!r} (conv2d): kernel_size={k} must be odd so padding can "
                               f"keep the spatial size")
        if a["padding"] is not None and a["padding"] != k // 2:
            raise IRShapeError(f"node {node_id!r} (conv2d): padding={a['padding']} changes the spatial size "
                               f"(H and W); kernel_size={k} needs padding={k // 2}")
        a["padding"] = k // 2  # the builder needs the value, not "whatever keeps the size"
        if cin % groups or cout % groups:
            raise IRShapeError(f"node {node_id!r} (conv2d): groups={groups} must divide in_channels={cin} "
                               f"and out_channels={cout}")
        return cout, cout * (cin // groups) * k * k + (cout if a["bias"] else 0)
    if op is OpType.LAYER_NORM:
        if a["normalized_shape"] != x:
            raise IRShapeError(f"node {node_id!r} (layer_norm): normalized_shape={a['normalized_shape']} "
                               f"but its input has {x} features")
        return x, 2 * x
    if op is OpType.BATCH_NORM2D:
        if a["num_features"] != x:
            raise IRShapeError(f"node {node_id!r} (batch_norm2d): num_features={a['num_features']} "
                               f"but its input has {x} channels")
        return x, 2 * x
    if op is OpType.GROUP_NORM:
        groups, channels = a["num_groups"], a["num_channels"]
        _at_least_one(node_id, op, num_groups=groups)
        if channels != x:
            raise IRShapeError(f"node {node_id!r} (group_norm): num_channels={channels} but its input "
                               f"has {x} channels")
        if channels % groups:
            raise IRShapeError(f"node {node_id!r} (group_norm): num_groups={groups} does not divide "
                               f"num_channels={channels}")
        return x, 2 * channels
    if op is OpType.MULTIHEAD_ATTENTION:
        dim, heads = a["embed_dim"], a["num_heads"]
        _at_least_one(node_id, op, embed_dim=dim, num_heads=heads)
        if dim != x:
            raise IRShapeError(f"node {node_id!r} (multihead_attention): embed_dim={dim} but its input "
                               f"has {x} features")
        if dim % heads:
            raise IRShapeError(f"node {node_id!r} (multihead_attention): num_heads={heads} does not "
                               f"divide embed_dim={dim}")
        _rate(node_id, op, "dropout", a["dropout"])
        # q, k, v and output projections: 4 square matrices, plus 4 bias vectors
        return x, 4 * dim * dim + (4 * dim if a["bias"] else 0)
    if op is OpType.DROPOUT:
        _rate(node_id, op, "p", a["p"])
    return x, 0  # activations, scale, identity, dropout keep the shape and own no parameters


def infer_ir_shapes(ir: BlueprintIR, *, max_parameters: int = MAX_IR_PARAMETERS) -> IRShapes:
    """Check attributes, layouts and shapes of ``ir`` and count its parameters; raise IRShapeError if it can't be built.

    Counting stops, with an error, as soon as the running total passes ``max_parameters``, so a
    caller can refuse an oversized graph before allocating anything.
    """
    if ir.input.layout != ir.output.layout:
        raise IRShapeError(f"blueprint {ir.name!r}: input layout {ir.input.layout} differs from output "
                           f"layout {ir.output.layout}, and no op changes the layout")
    layout = ir.input.layout
    ops = {n.id: n.op for n in ir.nodes}
    sources: dict[str, list[str]] = {n.id: [""] * (2 if n.op in _TWO_INPUTS else 1) for n in ir.nodes}
    output_src = ""
    for e in ir.edges:
        if e.dst == OUTPUT_NODE:
            output_src = e.src
        else:
            sources[e.dst][e.port] = e.src
    _reject_dead_nodes(ir.name, output_src, sources)

    # Name the limit when it is the platform's, so the reason says which rule was hit.
    limit = f"MAX_IR_PARAMETERS={max_parameters}" if max_parameters == MAX_IR_PARAMETERS else str(max_parameters)
    given = {n.id: n.attrs for n in ir.nodes}
    features: dict[str, int] = {INPUT_NODE: ir.input.features}
    attrs: dict[str, dict[str, Any]] = {}
    order = ir.topological_order()
    total = 0
    for node_id in order:
        op = ops[node_id]
        layouts = _SCHEMA[op][1]
        if layout not in layouts:
            hint = "; use a 1x1 conv2d on BCHW" if op is OpType.LINEAR else ""
            raise IRShapeError(f"node {node_id!r} ({op.value}) does not apply to layout {layout}; "
                               f"it needs one of {sorted(layouts)}{hint}")
        attrs[node_id] = _attrs(node_id, op, dict(given[node_id]))
        out, params = _infer_node(node_id, op, attrs[node_id], [features[s] for s in sources[node_id]])
        features[node_id] = out
        total += params
        if total > max_parameters:
            raise IRShapeError(f"blueprint {ir.name!r} has more than {limit} parameters "
                               f"(reached {total} at node {node_id!r})")
    produced = features[output_src]
    if produced != ir.output.features:
        raise IRShapeError(f"blueprint {ir.name!r}: the graph produces {produced} features at the output "
                           f"but the output interface declares {ir.output.features}")
    return IRShapes(parameter_count=total, layout=layout, features=features, order=tuple(order), ops=ops,
                    attrs=attrs, sources={k: tuple(v) for k, v in sources.items()}, output_src=output_src)


def _reject_dead_nodes(name: str, final: str, sources: dict[str, list[str]]) -> None:
    """Every node must feed the output: a dangling branch costs compile time and memory for nothing."""
    live: set[str] = set()
    todo = [final]
    while todo:
        node = todo.pop()
        if node == INPUT_NODE or node in live:
            continue
        live.add(node)
        todo.extend(sources[node])
    dead = sorted(set(sources) - live)
    if dead:
        raise IRShapeError(f"blueprint {name!r}: node(s) {dead} do not reach the output")
