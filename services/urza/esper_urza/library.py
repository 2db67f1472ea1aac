"""Urza's seed library: human-designed blueprints, registered at start-up so Tezzeret has work on day one.

The designs are the contracts' blueprint families (``esper_contracts.FAMILIES``, the same table the
in-process kernel library uses), instantiated here for three standard interfaces with chosen knobs and
tagged ``library``. Seeding is idempotent because blueprint ids are IR hashes.
"""

from __future__ import annotations

from esper_contracts import BlueprintIR, TensorInterface, family

#: The standard interfaces the library is instantiated for: a feature vector, a token sequence, an image.
VECTOR = TensorInterface(layout="BD", features=64)
SEQUENCE = TensorInterface(layout="BTD", features=64)
IMAGE = TensorInterface(layout="BCHW", features=32)

ORIGIN = "library"


def _seed(name: str, interface: TensorInterface, **knobs: int) -> BlueprintIR:
    return family(name).blueprint(interface, origin=ORIGIN, **knobs)


def library_blueprints() -> list[BlueprintIR]:
    """Every blueprint Urza seeds at start-up (16 designs over three interfaces, every blueprint class)."""
    return [
        _seed("residual_mlp", VECTOR, expansion=2),
        _seed("residual_mlp", SEQUENCE, expansion=4),
        _seed("bottleneck", VECTOR),
        _seed("depthwise_conv", IMAGE),
        _seed("conv_residual", IMAGE),
        _seed("attention_head", SEQUENCE, heads=4),
        _seed("attention_head", SEQUENCE, heads=1),
        _seed("low_rank_adapter", VECTOR, rank=4),
        _seed("low_rank_adapter", VECTOR, rank=8),
        _seed("low_rank_adapter", VECTOR, rank=16),
        _seed("low_rank_adapter", SEQUENCE, rank=8),
        _seed("normalization", VECTOR),
        _seed("normalization", SEQUENCE),
        _seed("normalization", IMAGE),
        _seed("scaffold_mlp", VECTOR),
        _seed("scaffold_conv", IMAGE),
    ]
