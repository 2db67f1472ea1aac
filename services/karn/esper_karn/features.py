"""What a BlueprintIR looks like as numbers: the features Karn's diversity score and novelty bonus compare.

Counts of each kind of layer (log-scaled, so one more layer matters less in a deep design than in a
shallow one), depth, the widest and narrowest hidden widths relative to the interface, and the parameter
count in decades. Two designs that differ only by a renamed node have the same features; a swapped
activation, a new norm, a wider layer or a skip connection each move them.
"""

from __future__ import annotations

import math

from esper_contracts import BlueprintIR, OpType
from esper_contracts.blueprints import INPUT_NODE
from esper_contracts.ir_shapes import infer_ir_shapes

#: Layer kinds counted, each one coordinate.
COUNTED: tuple[tuple[str, tuple[OpType, ...]], ...] = (
    ("linear", (OpType.LINEAR,)),
    ("conv", (OpType.CONV2D,)),
    ("relu", (OpType.RELU,)),
    ("gelu", (OpType.GELU,)),
    ("silu", (OpType.SILU,)),
    ("tanh", (OpType.TANH,)),
    ("sigmoid", (OpType.SIGMOID,)),
    ("layer_norm", (OpType.LAYER_NORM,)),
    ("group_norm", (OpType.GROUP_NORM,)),
    ("batch_norm", (OpType.BATCH_NORM2D,)),
    ("attention", (OpType.MULTIHEAD_ATTENTION,)),
    ("add", (OpType.ADD,)),
    ("mul", (OpType.MUL,)),
    ("other", (OpType.DROPOUT, OpType.SCALE, OpType.IDENTITY)),
)
FEATURE_NAMES: tuple[str, ...] = (*(name for name, _ops in COUNTED), "depth", "widest", "narrowest",
                                  "kernel_area", "parameters")

FeatureVector = tuple[float, ...]


def ir_features(ir: BlueprintIR) -> FeatureVector:
    """The feature vector of a buildable IR (raises IRShapeError for one that is not)."""
    shapes = infer_ir_shapes(ir)
    ops = list(shapes.ops.values())
    counts = [math.log1p(sum(op in kinds for op in ops)) for _name, kinds in COUNTED]
    depth: dict[str, int] = {INPUT_NODE: 0}
    for node in shapes.order:
        depth[node] = 1 + max(depth[s] for s in shapes.sources[node])
    base = shapes.features[INPUT_NODE]
    ratios = [math.log2(shapes.features[n] / base) for n in shapes.order]
    kernel = max((int(a.get("kernel_size", 1)) for n, a in shapes.attrs.items() if shapes.ops[n] is OpType.CONV2D),
                 default=1)
    return (*counts, math.log1p(depth[shapes.output_src]), max(ratios, default=0.0), min(ratios, default=0.0),
            math.log2(kernel), math.log10(1 + shapes.parameter_count))


def parent_kind(ir: BlueprintIR) -> str:
    """The context a mutation policy conditions on: the blueprint's class and layout (``mlp:BD``)."""
    return f"{ir.blueprint_class.value}:{ir.input.layout}"


def distance(a: FeatureVector, b: FeatureVector) -> float:
    """Euclidean distance between two feature vectors."""
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
