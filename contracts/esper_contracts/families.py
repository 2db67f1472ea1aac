"""Blueprint families: the one IR builder and the one table of human-designed blueprint families.

A family is a design (a small graph of standard layers) instantiated for one tensor interface, with
optional knobs (a rank, a head count, an expansion factor). Its output interface equals its input
interface, because a seed stands in for the activation it receives. Residual families zero-initialise
their last projection where they can, so a freshly grafted seed is an exact identity on its chunk.

Two users instantiate the same table: the in-process kernel library offers the ``builtin`` families for
every seed slot's interface (``builtin_blueprints``), and Urza seeds its library with chosen
interfaces and knobs (``origin="library"``). Every blueprint's tags are ``[family, origin, *family tags]``:
the first tag names the family (Tamiyo shows it as the kernel's name), the second says where it came from.

Changing a design changes the IR hash of every blueprint of its family: the built-in hashes are pinned
by ``contracts/tests/test_families.py``, because compiled kernels are cached by them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

from .blueprints import (
    INPUT_NODE,
    OUTPUT_NODE,
    AttrValue,
    BlueprintIR,
    IREdge,
    IRNode,
    OpType,
    ScaffoldSunset,
    TensorInterface,
)
from .enums import BlueprintClass

Layout = Literal["BD", "BTD", "BCHW"]
ALL_LAYOUTS: frozenset[str] = frozenset({"BD", "BTD", "BCHW"})


class IRBuilder:
    """Append-only BlueprintIR builder for one interface.

    ``node`` adds an op fed by earlier nodes (or ``input``) and returns its id; ``build`` closes the graph
    with an edge into ``output``. ``project`` and ``norm`` pick the layer that fits the layout.
    """

    def __init__(self, interface: TensorInterface) -> None:
        self.interface = interface
        self.features = interface.features
        self.nodes: list[IRNode] = []
        self.edges: list[IREdge] = []

    def node(self, node_id: str, op: OpType, *inputs: str, **attrs: AttrValue) -> str:
        """Add ``op`` as ``node_id``, its input ports fed by ``inputs`` in order; returns ``node_id``."""
        self.nodes.append(IRNode(id=node_id, op=op, attrs=dict(attrs)))
        self.edges.extend(IREdge(src=src, dst=node_id, port=port) for port, src in enumerate(inputs))
        return node_id

    def project(self, node_id: str, src: str, fin: int, fout: int, *, bias: bool = True, zero: bool = False) -> str:
        """A learned map of the feature axis: linear on BD/BTD, 1x1 convolution on BCHW (``zero``: starts at 0)."""
        init = "zeros" if zero else "default"
        if self.interface.layout == "BCHW":
            return self.node(node_id, OpType.CONV2D, src, in_channels=fin, out_channels=fout, kernel_size=1,
                             bias=bias, init=init)
        return self.node(node_id, OpType.LINEAR, src, in_features=fin, out_features=fout, bias=bias, init=init)

    def norm(self, node_id: str, src: str, features: int) -> str:
        """Layer norm on feature and token layouts, a one-group group norm on images."""
        if self.interface.layout == "BCHW":
            return self.node(node_id, OpType.GROUP_NORM, src, num_groups=1, num_channels=features)
        return self.node(node_id, OpType.LAYER_NORM, src, normalized_shape=[features])

    def build(self, last: str, *, name: str, blueprint_class: BlueprintClass, tags: list[str], description: str,
              sunset: ScaffoldSunset | None = None) -> BlueprintIR:
        """The finished BlueprintIR, ``last`` feeding ``output``; same interface in and out."""
        self.edges.append(IREdge(src=last, dst=OUTPUT_NODE))
        return BlueprintIR(name=name, blueprint_class=blueprint_class, input=self.interface, output=self.interface,
                           nodes=self.nodes, edges=self.edges, tags=tags, description=description, sunset=sunset)


class Design(NamedTuple):
    """What a family's design function returns: the last node, the description, extra tags, a sunset."""

    last: str
    description: str
    tags: tuple[str, ...] = ()
    sunset: ScaffoldSunset | None = None


#: A design adds a family's nodes to a builder; its keyword arguments are the family's knobs, defaulting
#: to the built-in design (``None`` where the default depends on the interface).
DesignFn = Callable[..., Design]


@dataclass(frozen=True)
class BlueprintFamily:
    """One row of the family table: a named design, its class, the layouts it serves and its knobs."""

    name: str
    blueprint_class: BlueprintClass
    layouts: frozenset[str]
    tags: tuple[str, ...]
    design: DesignFn
    #: Knob name -> the label that names an explicitly set knob in the blueprint's name (``rank`` -> ``r4``).
    knobs: Mapping[str, str] = field(default_factory=dict)
    #: Offered for every seed slot by the in-process kernel library (``builtin_blueprints``).
    builtin: bool = False
    #: Prefix of blueprint names (the family name with dashes, unless set).
    stem: str = ""

    def blueprint(self, interface: TensorInterface, *, origin: str, **knobs: int) -> BlueprintIR:
        """The family's design for ``interface``, tagged ``[name, origin, *tags]``.

        Knobs left out take the design's defaults; knobs given are named in the blueprint's name (and may
        add tags), so the same design seeded with different knobs gets distinct names. Raises ValueError
        for a layout the family does not serve or a knob it does not have.
        """
        if interface.layout not in self.layouts:
            raise ValueError(f"blueprint family {self.name!r} serves layouts {sorted(self.layouts)}, "
                             f"not {interface.layout!r}")
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            raise ValueError(f"blueprint family {self.name!r} has no knob(s) {unknown}; "
                             f"its knobs: {sorted(self.knobs)}")
        g = IRBuilder(interface)
        design = self.design(g, **knobs)
        parts = [self.stem or self.name.replace("_", "-")]
        parts += [f"{label}{knobs[knob]}" for knob, label in self.knobs.items() if knob in knobs]
        if len(self.layouts) > 1:
            parts.append(interface.layout.lower())
        parts.append(str(interface.features))
        return g.build(design.last, name="-".join(parts), blueprint_class=self.blueprint_class,
                       tags=[self.name, origin, *self.tags, *design.tags], description=design.description,
                       sunset=design.sunset)


# --- designs -------------------------------------------------------------------------------------------------
# Each returns the node that feeds ``output``. Node ids, attributes and creation order are part of the IR
# hash: keep them when editing a design, or every cached kernel of the family is compiled again.


def _residual_mlp(g: IRBuilder, expansion: int = 1) -> Design:
    f = g.features
    h = g.project("up", g.norm("norm", INPUT_NODE, f), f, f * expansion)
    h = g.project("down", g.node("act", OpType.GELU, h), f * expansion, f, zero=True)
    width = "features" if expansion == 1 else f"{expansion} × features"
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, h),
                  f"x + W2·gelu(W1·norm(x)), hidden width = {width}; W2 starts at zero.")


def _bottleneck(g: IRBuilder, reduction: int = 4) -> Design:
    f = g.features
    r = max(1, f // reduction)
    h = g.node("act1", OpType.RELU, g.project("reduce", INPUT_NODE, f, r))
    if g.interface.layout == "BCHW":
        h = g.node("act2", OpType.RELU, g.node("spatial", OpType.CONV2D, h, in_channels=r, out_channels=r,
                                               kernel_size=3))
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, g.project("expand", h, r, f)),
                  f"x + expand(relu(reduce(x))) through features/{reduction} units (a 3x3 conv in the middle on BCHW).")


def _depthwise_conv(g: IRBuilder, kernel_size: int = 3) -> Design:
    f, k = g.features, kernel_size
    h = g.node("depthwise", OpType.CONV2D, INPUT_NODE, in_channels=f, out_channels=f, kernel_size=k, groups=f)
    h = g.node("act", OpType.GELU, g.norm("norm", h, f))
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, g.project("pointwise", h, f, f, zero=True)),
                  f"x + pointwise(gelu(norm(depthwise{k}x{k}(x)))): spatial mixing per channel (BCHW only).")


def _low_rank_adapter(g: IRBuilder, rank: int | None = None) -> Design:
    f = g.features
    r = min(8, f) if rank is None else rank
    h = g.project("b", g.project("a", INPUT_NODE, f, r, bias=False), r, f, bias=False, zero=True)
    shown = "min(8, features)" if rank is None else str(rank)
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, h),
                  f"x + B·A·x with rank {shown} and B starting at zero (LoRA-shaped, on the activation).",
                  tags=() if rank is None else (f"rank_{rank}",))


def _attention_head(g: IRBuilder, heads: int | None = None) -> Design:
    f = g.features
    n = next(h for h in (4, 2, 1) if f % h == 0) if heads is None else heads
    h = g.node("attn", OpType.MULTIHEAD_ATTENTION, g.norm("norm", INPUT_NODE, f), embed_dim=f, num_heads=n)
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, h),
                  "x + attn(norm(x)): one self-attention block over the tokens (BTD only).")


def _conv_residual(g: IRBuilder) -> Design:
    c = g.features
    h = g.node("conv1", OpType.CONV2D, INPUT_NODE, in_channels=c, out_channels=c, kernel_size=3, bias=False)
    h = g.node("act", OpType.RELU, g.node("bn1", OpType.BATCH_NORM2D, h, num_features=c))
    h = g.node("conv2", OpType.CONV2D, h, in_channels=c, out_channels=c, kernel_size=3, bias=False, init="zeros")
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, g.node("bn2", OpType.BATCH_NORM2D, h, num_features=c)),
                  "ResNet basic block: x + bn(conv3×3(relu(bn(conv3×3(x))))); the second convolution starts at zero.")


def _normalization(g: IRBuilder) -> Design:
    return Design(g.norm("norm", INPUT_NODE, g.features),
                  "A learned re-normalisation of the activation: layer norm (group norm on images), "
                  "affine starts at identity.")


def _sunset(ttl_epochs: int) -> ScaffoldSunset:
    """A scaffold's retirement: weaned off over the last quarter of its life (at least one epoch)."""
    return ScaffoldSunset(ttl_epochs=ttl_epochs, wean_epochs=max(1, ttl_epochs // 4))


def _scaffold_mlp(g: IRBuilder, ttl_epochs: int = 20) -> Design:
    f = g.features
    h = g.node("act", OpType.TANH, g.project("up", g.norm("norm", INPUT_NODE, f), f, f))
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, g.project("down", h, f, f, zero=True)),
                  f"Temporary support: x + tanh-bounded MLP correction, weaned off within {ttl_epochs} epochs.",
                  sunset=_sunset(ttl_epochs))


def _scaffold_conv(g: IRBuilder, ttl_epochs: int = 10) -> Design:
    c = g.features
    h = g.node("act", OpType.SILU, g.node("conv", OpType.CONV2D, INPUT_NODE, in_channels=c, out_channels=c,
                                          kernel_size=3))
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, g.project("mix", h, c, c, zero=True)),
                  f"Temporary spatial support: x + 1×1(silu(3×3 conv(x))), weaned off within {ttl_epochs} epochs.",
                  sunset=_sunset(ttl_epochs))


def _fixed_tanh(g: IRBuilder) -> Design:
    h = g.node("half", OpType.SCALE, g.node("squash", OpType.TANH, INPUT_NODE), value=0.5)
    return Design(g.node("residual", OpType.ADD, INPUT_NODE, h),
                  "A kernel with no trainable parameters (x + 0.5·tanh(x)); it skips TRAINING and FINE_TUNING.")


_BCHW = frozenset({"BCHW"})

#: Every blueprint family, built-in ones first in the order the kernel library offers them.
FAMILIES: Mapping[str, BlueprintFamily] = MappingProxyType({f.name: f for f in (
    BlueprintFamily("residual_mlp", BlueprintClass.MLP, ALL_LAYOUTS, ("residual", "mlp", "capacity"),
                    _residual_mlp, {"expansion": "x"}, builtin=True),
    BlueprintFamily("bottleneck", BlueprintClass.MLP, ALL_LAYOUTS, ("residual", "compact"),
                    _bottleneck, {"reduction": "r"}, builtin=True),
    BlueprintFamily("depthwise_conv", BlueprintClass.CONV, _BCHW, ("residual", "conv", "spatial"),
                    _depthwise_conv, {"kernel_size": "k"}, builtin=True),
    BlueprintFamily("low_rank_adapter", BlueprintClass.LOW_RANK, ALL_LAYOUTS,
                    ("residual", "low_rank", "adapter", "cheap"), _low_rank_adapter, {"rank": "r"}, builtin=True,
                    stem="low-rank"),
    BlueprintFamily("attention_head", BlueprintClass.ATTENTION, frozenset({"BTD"}),
                    ("residual", "attention", "token_mixing"), _attention_head, {"heads": "h"}, builtin=True),
    BlueprintFamily("conv_residual", BlueprintClass.CONV, _BCHW, ("residual", "spatial", "capacity"), _conv_residual),
    BlueprintFamily("normalization", BlueprintClass.NORMALIZATION, ALL_LAYOUTS, ("stabilizer",), _normalization),
    BlueprintFamily("scaffold_mlp", BlueprintClass.SCAFFOLD, ALL_LAYOUTS, ("scaffold", "temporary"),
                    _scaffold_mlp, {"ttl_epochs": "ttl"}),
    BlueprintFamily("scaffold_conv", BlueprintClass.SCAFFOLD, _BCHW, ("scaffold", "temporary", "spatial"),
                    _scaffold_conv, {"ttl_epochs": "ttl"}),
    # Parameter-free: not built in (it would always win a latency sort); registered where one is wanted.
    BlueprintFamily("fixed_tanh", BlueprintClass.MLP, ALL_LAYOUTS, ("fixed_function",), _fixed_tanh),
)})

#: The families the in-process kernel library offers for every seed slot, in offering order.
BUILTIN_FAMILIES: tuple[BlueprintFamily, ...] = tuple(f for f in FAMILIES.values() if f.builtin)


def family(name: str) -> BlueprintFamily:
    """The family called ``name``; raises ValueError naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown blueprint family {name!r}; known: {sorted(FAMILIES)}") from None


def builtin_blueprints(interface: TensorInterface) -> list[BlueprintIR]:
    """Every built-in family that serves ``interface``'s layout, instantiated for its feature size.

    BD gets 3 (residual MLP, bottleneck, low-rank), BTD adds the attention head, BCHW adds the
    depthwise conv block. Output shape always equals input shape.
    """
    return [f.blueprint(interface, origin="builtin") for f in BUILTIN_FAMILIES if interface.layout in f.layouts]


def fixed_function_blueprint(interface: TensorInterface) -> BlueprintIR:
    """A kernel with no trainable parameters (x + 0.5·tanh(x)); it skips TRAINING and FINE_TUNING."""
    return FAMILIES["fixed_tanh"].blueprint(interface, origin="builtin")
