"""Built-in blueprint families, instantiated for one chunk interface.

Each family is a small function from a :class:`TensorInterface` to a :class:`BlueprintIR` whose output
interface equals its input interface (a seed replaces a chunk by something of the same shape). A
family registers itself in ``FAMILIES`` with the layouts it supports, so adding one touches one place.

Residual families zero-initialise their last projection: at the start of GRAFTING the seed is then an
exact identity on its chunk, so blending it in cannot shock the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esper_contracts import BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, TensorInterface


class _Graph:
    """A tiny builder: ``add`` appends a node fed by earlier nodes (or ``input``), ``finish`` closes it.

    The first tag is the family name; it travels with the artifact as its readable name.
    """

    def __init__(self) -> None:
        self.nodes: list[IRNode] = []
        self.edges: list[IREdge] = []

    def add(self, node_id: str, op: OpType, *srcs: str, **attrs: int | float | bool | str | list[int]) -> str:
        self.nodes.append(IRNode(id=node_id, op=op, attrs=dict(attrs)))
        self.edges.extend(IREdge(src=s, dst=node_id, port=i) for i, s in enumerate(srcs))
        return node_id

    def finish(self, last: str, *, name: str, cls: BlueprintClass, interface: TensorInterface,
               tags: list[str], description: str) -> BlueprintIR:
        self.edges.append(IREdge(src=last, dst="output"))
        return BlueprintIR(name=name, blueprint_class=cls, input=interface, output=interface, nodes=self.nodes,
                           edges=self.edges, tags=[*tags[:1], "builtin", *tags[1:]], description=description)


def _pointwise(g: _Graph, node_id: str, src: str, layout: str, fin: int, fout: int, *,
               bias: bool = True, init: str = "default") -> str:
    """A feature projection: linear on BD/BTD, 1x1 convolution on BCHW."""
    if layout == "BCHW":
        return g.add(node_id, OpType.CONV2D, src, in_channels=fin, out_channels=fout, kernel_size=1,
                     bias=bias, init=init)
    return g.add(node_id, OpType.LINEAR, src, in_features=fin, out_features=fout, bias=bias, init=init)


def _norm(g: _Graph, node_id: str, src: str, layout: str, features: int) -> str:
    if layout == "BCHW":
        return g.add(node_id, OpType.GROUP_NORM, src, num_groups=1, num_channels=features)
    return g.add(node_id, OpType.LAYER_NORM, src, normalized_shape=[features])


def residual_mlp(iface: TensorInterface) -> BlueprintIR:
    """x + W2·gelu(W1·norm(x)), hidden width = features; W2 starts at zero."""
    f, lay, g = iface.features, iface.layout, _Graph()
    h = _norm(g, "norm", "input", lay, f)
    h = _pointwise(g, "up", h, lay, f, f)
    h = g.add("act", OpType.GELU, h)
    h = _pointwise(g, "down", h, lay, f, f, init="zeros")
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"residual-mlp-{lay.lower()}-{f}", cls=BlueprintClass.MLP, interface=iface,
                    tags=["residual_mlp", "residual", "mlp", "capacity"], description=residual_mlp.__doc__ or "")


def bottleneck(iface: TensorInterface) -> BlueprintIR:
    """x + expand(relu(reduce(x))) through features/4 units (a 3x3 conv in the middle on BCHW)."""
    f, lay, g = iface.features, iface.layout, _Graph()
    r = max(1, f // 4)
    h = _pointwise(g, "reduce", "input", lay, f, r)
    h = g.add("act1", OpType.RELU, h)
    if lay == "BCHW":
        h = g.add("spatial", OpType.CONV2D, h, in_channels=r, out_channels=r, kernel_size=3)
        h = g.add("act2", OpType.RELU, h)
    h = _pointwise(g, "expand", h, lay, r, f)
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"bottleneck-{lay.lower()}-{f}", cls=BlueprintClass.MLP, interface=iface,
                    tags=["bottleneck", "residual", "compact"], description=bottleneck.__doc__ or "")


def depthwise_conv(iface: TensorInterface) -> BlueprintIR:
    """x + pointwise(gelu(norm(depthwise3x3(x)))): spatial mixing per channel (BCHW only)."""
    f, lay, g = iface.features, iface.layout, _Graph()
    h = g.add("depthwise", OpType.CONV2D, "input", in_channels=f, out_channels=f, kernel_size=3, groups=f)
    h = _norm(g, "norm", h, lay, f)
    h = g.add("act", OpType.GELU, h)
    h = _pointwise(g, "pointwise", h, lay, f, f, init="zeros")
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"depthwise-conv-{f}", cls=BlueprintClass.CONV, interface=iface,
                    tags=["depthwise_conv", "residual", "conv", "spatial"], description=depthwise_conv.__doc__ or "")


def low_rank_adapter(iface: TensorInterface) -> BlueprintIR:
    """x + B·A·x with rank min(8, features) and B starting at zero (LoRA-shaped, on the activation)."""
    f, lay, g = iface.features, iface.layout, _Graph()
    r = min(8, f)
    h = _pointwise(g, "a", "input", lay, f, r, bias=False)
    h = _pointwise(g, "b", h, lay, r, f, bias=False, init="zeros")
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"low-rank-{lay.lower()}-{f}", cls=BlueprintClass.LOW_RANK, interface=iface,
                    tags=["low_rank_adapter", "residual", "low_rank", "adapter", "cheap"],
                    description=low_rank_adapter.__doc__ or "")


def attention_head(iface: TensorInterface) -> BlueprintIR:
    """x + attn(norm(x)): one self-attention block over the tokens (BTD only)."""
    f, lay, g = iface.features, iface.layout, _Graph()
    heads = next(h for h in (4, 2, 1) if f % h == 0)
    h = _norm(g, "norm", "input", lay, f)
    h = g.add("attn", OpType.MULTIHEAD_ATTENTION, h, embed_dim=f, num_heads=heads)
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"attention-head-{f}", cls=BlueprintClass.ATTENTION, interface=iface,
                    tags=["attention_head", "residual", "attention", "token_mixing"],
                    description=attention_head.__doc__ or "")


@dataclass(frozen=True)
class BlueprintFamily:
    """A named blueprint generator and the chunk layouts it can serve."""

    name: str
    layouts: frozenset[str]
    make: Callable[[TensorInterface], BlueprintIR]


_ALL = frozenset({"BD", "BTD", "BCHW"})
#: The built-in families, in the order ``builtin_blueprints`` lists them.
FAMILIES: tuple[BlueprintFamily, ...] = (
    BlueprintFamily("residual_mlp", _ALL, residual_mlp),
    BlueprintFamily("bottleneck", _ALL, bottleneck),
    BlueprintFamily("depthwise_conv", frozenset({"BCHW"}), depthwise_conv),
    BlueprintFamily("low_rank_adapter", _ALL, low_rank_adapter),
    BlueprintFamily("attention_head", frozenset({"BTD"}), attention_head),
)


def builtin_blueprints(interface: TensorInterface) -> list[BlueprintIR]:
    """Every built-in family that applies to ``interface``'s layout, instantiated for its feature size.

    BD gets 3 (residual MLP, bottleneck, low-rank), BTD adds the attention head, BCHW adds the
    depthwise conv block; across layouts there are 5 families. Output shape always equals input shape.
    """
    return [fam.make(interface) for fam in FAMILIES if interface.layout in fam.layouts]


def fixed_function_blueprint(interface: TensorInterface) -> BlueprintIR:
    """A kernel with no trainable parameters (x + 0.5·tanh(x)); it skips TRAINING and FINE_TUNING.

    Not part of ``builtin_blueprints`` (a parameter-free kernel would always win a latency sort);
    register it explicitly where a fixed-function kernel is wanted.
    """
    g = _Graph()
    h = g.add("squash", OpType.TANH, "input")
    h = g.add("half", OpType.SCALE, h, value=0.5)
    out = g.add("residual", OpType.ADD, "input", h)
    return g.finish(out, name=f"fixed-tanh-{interface.layout.lower()}-{interface.features}",
                    cls=BlueprintClass.MLP, interface=interface, tags=["fixed_tanh", "fixed_function"],
                    description=fixed_function_blueprint.__doc__ or "")
