"""Urza's seed library: human-designed blueprints, registered at start-up so Tezzeret has work on day one.

Each builder takes a tensor interface (and its own knobs) and returns a BlueprintIR whose output
interface equals its input interface, because a seed stands in for the activation it receives.
Residual designs start their last projection at zero, so a freshly grafted seed is an exact identity.
The first tag of every blueprint names its family (Tamiyo shows it as the kernel's name).
``library_blueprints()`` lists what is seeded; seeding is idempotent because blueprint ids are IR hashes.
"""

from __future__ import annotations

from esper_contracts import BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, ScaffoldSunset, TensorInterface

Attr = int | float | bool | str | list[int]


class _Graph:
    """Append-only graph builder: ``node`` adds an op fed by earlier nodes (or ``input``), ``build`` closes it."""

    def __init__(self, iface: TensorInterface) -> None:
        self.iface = iface
        self.nodes: list[IRNode] = []
        self.edges: list[IREdge] = []

    def node(self, node_id: str, op: OpType, *inputs: str, **attrs: Attr) -> str:
        self.nodes.append(IRNode(id=node_id, op=op, attrs=attrs))
        self.edges.extend(IREdge(src=src, dst=node_id, port=port) for port, src in enumerate(inputs))
        return node_id

    def project(self, node_id: str, src: str, fin: int, fout: int, *, bias: bool = True, zero: bool = False) -> str:
        """A learned map of the feature axis: linear on BD/BTD, 1x1 convolution on BCHW."""
        init = "zeros" if zero else "default"
        if self.iface.layout == "BCHW":
            return self.node(node_id, OpType.CONV2D, src, in_channels=fin, out_channels=fout, kernel_size=1,
                             bias=bias, init=init)
        return self.node(node_id, OpType.LINEAR, src, in_features=fin, out_features=fout, bias=bias, init=init)

    def norm(self, node_id: str, src: str, features: int) -> str:
        """Layer norm on token/feature layouts, a one-group group norm on images."""
        if self.iface.layout == "BCHW":
            return self.node(node_id, OpType.GROUP_NORM, src, num_groups=1, num_channels=features)
        return self.node(node_id, OpType.LAYER_NORM, src, normalized_shape=[features])

    def build(self, last: str, *, name: str, cls: BlueprintClass, tags: list[str], description: str,
              sunset: ScaffoldSunset | None = None) -> BlueprintIR:
        self.edges.append(IREdge(src=last, dst="output"))
        return BlueprintIR(name=name, blueprint_class=cls, description=description, input=self.iface,
                           output=self.iface, nodes=self.nodes, edges=self.edges, tags=[*tags, "library"],
                           sunset=sunset)


def _suffix(iface: TensorInterface) -> str:
    return f"{iface.layout.lower()}{iface.features}"


# --- MLP family ------------------------------------------------------------------------------------------


def residual_mlp(iface: TensorInterface, expansion: int = 2) -> BlueprintIR:
    """Pre-norm residual MLP: x + W2·gelu(W1·norm(x)), hidden = expansion × features, W2 starts at zero."""
    f, g = iface.features, _Graph(iface)
    h = g.project("up", g.norm("norm", "input", f), f, f * expansion)
    h = g.project("down", g.node("act", OpType.GELU, h), f * expansion, f, zero=True)
    out = g.node("residual", OpType.ADD, "input", h)
    return g.build(out, name=f"residual-mlp-x{expansion}-{_suffix(iface)}", cls=BlueprintClass.MLP,
                   tags=["residual_mlp", "residual", "capacity"], description=residual_mlp.__doc__ or "")


def bottleneck_mlp(iface: TensorInterface, reduction: int = 4) -> BlueprintIR:
    """Residual bottleneck: x + up(relu(down(x))) through features / reduction units; up starts at zero."""
    f, g = iface.features, _Graph(iface)
    r = max(1, f // reduction)
    h = g.node("act", OpType.RELU, g.project("down", "input", f, r))
    out = g.node("residual", OpType.ADD, "input", g.project("up", h, r, f, zero=True))
    return g.build(out, name=f"bottleneck-mlp-r{reduction}-{_suffix(iface)}", cls=BlueprintClass.MLP,
                   tags=["bottleneck_mlp", "residual", "compact"], description=bottleneck_mlp.__doc__ or "")


# --- convolution family ------------------------------------------------------------------------------------


def depthwise_conv_block(iface: TensorInterface, kernel_size: int = 3) -> BlueprintIR:
    """MobileNet-style block: x + pointwise(gelu(batchnorm(depthwise k×k(x)))); pointwise starts at zero."""
    c, g = iface.features, _Graph(iface)
    h = g.node("depthwise", OpType.CONV2D, "input", in_channels=c, out_channels=c, kernel_size=kernel_size,
               groups=c, bias=False)
    h = g.node("act", OpType.GELU, g.node("bn", OpType.BATCH_NORM2D, h, num_features=c))
    out = g.node("residual", OpType.ADD, "input", g.project("pointwise", h, c, c, zero=True))
    return g.build(out, name=f"depthwise-conv-k{kernel_size}-{_suffix(iface)}", cls=BlueprintClass.CONV,
                   tags=["depthwise_conv", "residual", "spatial", "compact"],
                   description=depthwise_conv_block.__doc__ or "")


def conv_residual(iface: TensorInterface) -> BlueprintIR:
    """ResNet basic block: x + bn(conv3×3(relu(bn(conv3×3(x))))); the second convolution starts at zero."""
    c, g = iface.features, _Graph(iface)
    h = g.node("conv1", OpType.CONV2D, "input", in_channels=c, out_channels=c, kernel_size=3, bias=False)
    h = g.node("act", OpType.RELU, g.node("bn1", OpType.BATCH_NORM2D, h, num_features=c))
    h = g.node("conv2", OpType.CONV2D, h, in_channels=c, out_channels=c, kernel_size=3, bias=False, init="zeros")
    out = g.node("residual", OpType.ADD, "input", g.node("bn2", OpType.BATCH_NORM2D, h, num_features=c))
    return g.build(out, name=f"conv-residual-{_suffix(iface)}", cls=BlueprintClass.CONV,
                   tags=["conv_residual", "residual", "spatial", "capacity"], description=conv_residual.__doc__ or "")


# --- attention -------------------------------------------------------------------------------------------------


def attention_head(iface: TensorInterface, heads: int = 4) -> BlueprintIR:
    """Pre-norm self-attention over tokens: x + 0.1 · attention(norm(x)), a gentle start for a new head."""
    f, g = iface.features, _Graph(iface)
    h = g.node("attn", OpType.MULTIHEAD_ATTENTION, g.norm("norm", "input", f), embed_dim=f, num_heads=heads)
    out = g.node("residual", OpType.ADD, "input", g.node("gate", OpType.SCALE, h, value=0.1))
    return g.build(out, name=f"attention-h{heads}-{_suffix(iface)}", cls=BlueprintClass.ATTENTION,
                   tags=["attention_head", "residual", "context"], description=attention_head.__doc__ or "")


# --- low-rank adapters ---------------------------------------------------------------------------------------


def low_rank_adapter(iface: TensorInterface, rank: int = 8) -> BlueprintIR:
    """LoRA-style adapter: x + B·A·x with A: features→rank and B: rank→features, no biases, B starts at zero."""
    f, g = iface.features, _Graph(iface)
    h = g.project("lora_a", "input", f, rank, bias=False)
    out = g.node("residual", OpType.ADD, "input", g.project("lora_b", h, rank, f, bias=False, zero=True))
    return g.build(out, name=f"low-rank-r{rank}-{_suffix(iface)}", cls=BlueprintClass.LOW_RANK,
                   tags=["low_rank_adapter", f"rank_{rank}", "residual", "compact"],
                   description=low_rank_adapter.__doc__ or "")


# --- normalization -------------------------------------------------------------------------------------------


def normalization(iface: TensorInterface) -> BlueprintIR:
    """A learned re-normalisation of the activation: layer norm (group norm on images), affine starts at identity."""
    g = _Graph(iface)
    out = g.norm("norm", "input", iface.features)
    return g.build(out, name=f"normalization-{_suffix(iface)}", cls=BlueprintClass.NORMALIZATION,
                   tags=["normalization", "stabilizer"], description=normalization.__doc__ or "")


# --- scaffolds -------------------------------------------------------------------------------------------------


def scaffold_mlp(iface: TensorInterface, ttl_epochs: int = 20) -> BlueprintIR:
    """Temporary support: x + tanh-bounded MLP correction, weaned off within ``ttl_epochs``."""
    f, g = iface.features, _Graph(iface)
    h = g.node("act", OpType.TANH, g.project("up", g.norm("norm", "input", f), f, f))
    out = g.node("residual", OpType.ADD, "input", g.project("down", h, f, f, zero=True))
    sunset = ScaffoldSunset(ttl_epochs=ttl_epochs, wean_epochs=max(1, ttl_epochs // 4), max_jitter=0.05,
                            max_drift=0.05, min_diversity=0.0)
    return g.build(out, name=f"scaffold-mlp-ttl{ttl_epochs}-{_suffix(iface)}", cls=BlueprintClass.SCAFFOLD,
                   tags=["scaffold_mlp", "scaffold", "temporary"], description=scaffold_mlp.__doc__ or "",
                   sunset=sunset)


def scaffold_conv(iface: TensorInterface, ttl_epochs: int = 10) -> BlueprintIR:
    """Temporary spatial support: x + 1×1(silu(3×3 conv(x))), weaned off within ``ttl_epochs``."""
    c, g = iface.features, _Graph(iface)
    h = g.node("conv", OpType.CONV2D, "input", in_channels=c, out_channels=c, kernel_size=3)
    out = g.node("residual", OpType.ADD, "input", g.project("mix", g.node("act", OpType.SILU, h), c, c, zero=True))
    sunset = ScaffoldSunset(ttl_epochs=ttl_epochs, wean_epochs=max(1, ttl_epochs // 4))
    return g.build(out, name=f"scaffold-conv-ttl{ttl_epochs}-{_suffix(iface)}", cls=BlueprintClass.SCAFFOLD,
                   tags=["scaffold_conv", "scaffold", "temporary", "spatial"], description=scaffold_conv.__doc__ or "",
                   sunset=sunset)


#: The standard interfaces the library is instantiated for: a feature vector, a token sequence, an image.
VECTOR = TensorInterface(layout="BD", features=64)
SEQUENCE = TensorInterface(layout="BTD", features=64)
IMAGE = TensorInterface(layout="BCHW", features=32)


def library_blueprints() -> list[BlueprintIR]:
    """Every blueprint Urza seeds at start-up (16 designs over three interfaces)."""
    return [
        residual_mlp(VECTOR),
        residual_mlp(SEQUENCE, expansion=4),
        bottleneck_mlp(VECTOR),
        depthwise_conv_block(IMAGE),
        conv_residual(IMAGE),
        attention_head(SEQUENCE, heads=4),
        attention_head(SEQUENCE, heads=1),
        low_rank_adapter(VECTOR, rank=4),
        low_rank_adapter(VECTOR, rank=8),
        low_rank_adapter(VECTOR, rank=16),
        low_rank_adapter(SEQUENCE, rank=8),
        normalization(VECTOR),
        normalization(SEQUENCE),
        normalization(IMAGE),
        scaffold_mlp(VECTOR),
        scaffold_conv(IMAGE),
    ]
