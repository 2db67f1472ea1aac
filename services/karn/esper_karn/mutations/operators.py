"""The mutation operators: small edits of a BlueprintIR graph that keep its input/output interface.

Each operator edits an :class:`EditableGraph` in place at one site drawn from ``rng`` and returns what it
did, in words; it raises :class:`MutationRefused` when the parent offers no site for it (no activation to
swap, no attention to widen, a layout the edit does not apply to). Operators only rewire and re-size: the
caller rebuilds the IR and lets the contracts' shape inference decide whether the child can be built, so
an edit that breaks a shape somewhere downstream is refused there, never shipped.

Adding an operator is one function and one entry in ``OPERATORS``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from esper_contracts import OpType
from esper_contracts.blueprints import INPUT_NODE, OUTPUT_NODE

from .graph import ACTIVATIONS, NORMS, EditableGraph, MutationRefused, is_depthwise, is_projection, largest_divisor

ALL_LAYOUTS = frozenset({"BD", "BTD", "BCHW"})
#: How far a width or rank moves in one mutation (multiplicative, rounded, at least 1).
WIDTH_FACTORS = (0.5, 1.5, 2.0)
KERNEL_SIZES = (1, 3, 5, 7)


@dataclass(frozen=True)
class MutationOperator:
    """A named edit, the layouts it can apply to, and the function performing it."""

    name: str
    description: str
    edit: Callable[[EditableGraph, random.Random], str]
    layouts: frozenset[str] = ALL_LAYOUTS


def _pick(rng: random.Random, sites: list[str], what: str) -> str:
    if not sites:
        raise MutationRefused(f"the parent has no {what}")
    return rng.choice(sites)


def _edges(g: EditableGraph) -> list[tuple[str, str, int]]:
    """Every (source, reader, port) edge, the graph output included as reader ``output``."""
    found = [(s, i, p) for i, n in g.nodes.items() for p, s in enumerate(n.sources)]
    return [*found, (g.output_src, OUTPUT_NODE, 0)]


def _set_source(g: EditableGraph, reader: str, port: int, new: str) -> None:
    if reader == OUTPUT_NODE:
        g.output_src = new
    else:
        g.nodes[reader].sources[port] = new


def _project(g: EditableGraph, prefix: str, src: str, fin: int, fout: int) -> str:
    """A learned map of the feature axis: linear on BD/BTD, a 1x1 convolution on BCHW."""
    if g.layout == "BCHW":
        return g.add(prefix, OpType.CONV2D, src, in_channels=fin, out_channels=fout, kernel_size=1)
    return g.add(prefix, OpType.LINEAR, src, in_features=fin, out_features=fout)


def _norm(g: EditableGraph, prefix: str, src: str, features: int) -> str:
    """Layer norm on token/feature layouts; a group norm (batch-size independent) on images."""
    if g.layout == "BCHW":
        return g.add(prefix, OpType.GROUP_NORM, src, num_groups=largest_divisor(features, 4), num_channels=features)
    return g.add(prefix, OpType.LAYER_NORM, src, normalized_shape=features)


def _resize(g: EditableGraph, node_id: str, width: int) -> None:
    node = g.nodes[node_id]
    node.attrs["out_features" if node.op is OpType.LINEAR else "out_channels"] = width
    g.reflow()


# --- activations --------------------------------------------------------------------------------------------


def swap_activation(g: EditableGraph, rng: random.Random) -> str:
    """Replace one activation function by another."""
    site = _pick(rng, g.of_op(*ACTIVATIONS), "activation")
    old = g.nodes[site].op
    new = rng.choice([a for a in ACTIVATIONS if a is not old])
    g.nodes[site].op = new
    return f"{site}: {old.value} -> {new.value}"


# --- widths and ranks ---------------------------------------------------------------------------------------


def _width_is_free(g: EditableGraph, node_id: str) -> bool:
    """Whether the width ``node_id`` produces can change: it reaches no add, mul or output before a projection."""
    todo, seen = [node_id], set()
    while todo:
        for reader, _port in g.consumers(todo.pop()):
            if reader == OUTPUT_NODE or g.nodes[reader].op in (OpType.ADD, OpType.MUL):
                return False
            if reader not in seen and not is_projection(g.nodes[reader]):
                seen.add(reader)
                todo.append(reader)
    return True


def _reads_into_projection(g: EditableGraph, node_id: str) -> bool:
    readers = g.consumers(node_id)
    return len(readers) == 1 and readers[0][0] in g.nodes and is_projection(g.nodes[readers[0][0]])


def _hidden_projections(g: EditableGraph) -> list[str]:
    """Projections of free width whose output goes through something else first (a hidden layer)."""
    return [i for i, n in g.nodes.items()
            if is_projection(n) and _width_is_free(g, i) and not _reads_into_projection(g, i)]


def _factorised_projections(g: EditableGraph) -> list[str]:
    """Projections read only by another projection: together a factorised map whose rank is this width."""
    return [i for i, n in g.nodes.items() if is_projection(n) and _reads_into_projection(g, i)]


def change_width(g: EditableGraph, rng: random.Random) -> str:
    """Widen or narrow one hidden layer; the layers reading it follow the new width."""
    site = _pick(rng, _hidden_projections(g), "hidden projection whose width can change")
    old = g.widths()[site]
    new = max(1, round(old * rng.choice(WIDTH_FACTORS)))
    if new == old:
        new = old + 1
    _resize(g, site, new)
    return f"{site}: width {old} -> {new}"


def change_rank(g: EditableGraph, rng: random.Random) -> str:
    """Halve or double the rank of a factorised projection (B·A, as in a low-rank adapter)."""
    site = _pick(rng, _factorised_projections(g), "factorised (low-rank) projection")
    w = g.widths()
    old, full = w[site], w[g.nodes[site].sources[0]]
    choices = [r for r in (old // 2, old * 2) if 1 <= r <= max(full, 1) and r != old]
    if not choices:
        raise MutationRefused(f"{site}: rank {old} of a {full}-wide map cannot move")
    new = rng.choice(choices)
    _resize(g, site, new)
    return f"{site}: rank {old} -> {new}"


# --- attention ----------------------------------------------------------------------------------------------


def add_attention_head(g: EditableGraph, rng: random.Random) -> str:
    """Give a self-attention layer more heads (the next count that divides its width)."""
    site = _pick(rng, g.of_op(OpType.MULTIHEAD_ATTENTION), "self-attention layer")
    a = g.nodes[site].attrs
    dim, heads = int(a["embed_dim"]), int(a["num_heads"])
    more = [h for h in range(heads + 1, dim + 1) if dim % h == 0]
    if not more:
        raise MutationRefused(f"{site}: {heads} heads already split {dim} features as finely as possible")
    a["num_heads"] = more[0]
    return f"{site}: heads {heads} -> {more[0]}"


def insert_attention_block(g: EditableGraph, rng: random.Random) -> str:
    """Add a pre-norm residual self-attention block, x + attn(norm(x)), after one node."""
    sites = [INPUT_NODE, *g.nodes]
    src = rng.choice(sites)
    w = g.widths()[src]
    readers = g.consumers(src)
    h = _norm(g, "attn_norm", src, w)
    h = g.add("attn", OpType.MULTIHEAD_ATTENTION, h, embed_dim=w, num_heads=largest_divisor(w, 4))
    out = g.add("attn_residual", OpType.ADD, src, h)
    for reader, port in readers:
        _set_source(g, reader, port, out)
    return f"attention block ({largest_divisor(w, 4)} heads, {w} features) after {src}"


# --- normalisation ------------------------------------------------------------------------------------------


def add_normalisation(g: EditableGraph, rng: random.Random) -> str:
    """Normalise what flows along one edge (only that reader sees the normalised value)."""
    edges = [(s, r, p) for s, r, p in _edges(g)
             if not (s in g.nodes and g.nodes[s].op in NORMS) and not (r in g.nodes and g.nodes[r].op in NORMS)]
    if not edges:
        raise MutationRefused("every edge already touches a normalisation")
    src, reader, port = rng.choice(edges)
    norm = _norm(g, "norm", src, g.widths()[src])
    _set_source(g, reader, port, norm)
    return f"{g.nodes[norm].op.value} between {src} and {reader}"


def drop_normalisation(g: EditableGraph, rng: random.Random) -> str:
    """Remove one normalisation layer."""
    site = _pick(rng, g.of_op(*NORMS), "normalisation layer")
    op = g.nodes[site].op
    g.remove_passthrough(site)
    return f"{site} ({op.value}) removed"


def swap_normalisation(g: EditableGraph, rng: random.Random) -> str:
    """Exchange a normalisation for another kind valid on the layout (layer <-> group, group <-> batch)."""
    alternatives = {"BD": (OpType.LAYER_NORM, OpType.GROUP_NORM), "BCHW": (OpType.GROUP_NORM, OpType.BATCH_NORM2D)}
    kinds = alternatives.get(g.layout)
    if kinds is None:
        raise MutationRefused(f"layout {g.layout} has a single kind of normalisation")
    site = _pick(rng, g.of_op(*kinds), "normalisation layer")
    w = g.widths()[site]
    old = g.nodes[site].op
    new = kinds[1] if old is kinds[0] else kinds[0]
    attrs = {OpType.LAYER_NORM: {"normalized_shape": w}, OpType.BATCH_NORM2D: {"num_features": w},
             OpType.GROUP_NORM: {"num_groups": largest_divisor(w, 4), "num_channels": w}}[new]
    g.nodes[site].op, g.nodes[site].attrs = new, attrs
    return f"{site}: {old.value} -> {new.value}"


# --- residual connections and depth -------------------------------------------------------------------------


def add_residual(g: EditableGraph, rng: random.Random) -> str:
    """Add a skip connection: a node's output plus an earlier value of the same width."""
    w = g.widths()
    pairs = []
    for v, node in g.nodes.items():
        if node.op is OpType.ADD:
            continue
        direct = {s for r, _p in g.consumers(v) if r in g.nodes and g.nodes[r].op is OpType.ADD
                  for s in g.nodes[r].sources}
        pairs += [(u, v) for u in g.ancestors(v) if w[u] == w[v] and u not in direct and u not in node.sources]
    if not pairs:
        raise MutationRefused("no node has an earlier value of its width to skip from")
    u, v = rng.choice(sorted(pairs))
    skip = g.insert_after(v, "skip", OpType.ADD)
    g.nodes[skip].sources = [u, v]
    return f"{skip} = {u} + {v}"


def drop_residual(g: EditableGraph, rng: random.Random) -> str:
    """Remove a skip connection: an add keeps only its deeper input; what fed only the skip goes."""
    skips = []
    for i, n in g.nodes.items():
        if n.op is OpType.ADD:
            a, b = n.sources
            if a in g.ancestors(b) or a == INPUT_NODE:
                skips.append((i, b, a))
            elif b in g.ancestors(a) or b == INPUT_NODE:
                skips.append((i, a, b))
    if not skips:
        raise MutationRefused("the parent has no skip connection")
    site, keep, skip = rng.choice(skips)
    g.redirect(site, keep)
    del g.nodes[site]
    g.prune_dead()
    return f"{site}: skip from {skip} removed, {keep} kept"


def add_hidden_layer(g: EditableGraph, rng: random.Random) -> str:
    """Insert a same-width projection and an activation along one edge (one layer deeper)."""
    src, reader, port = rng.choice(_edges(g))
    w = g.widths()[src]
    proj = _project(g, "hidden", src, w, w)
    act = g.add("hidden_act", rng.choice(ACTIVATIONS), proj)
    _set_source(g, reader, port, act)
    return f"{g.nodes[proj].op.value} {w}->{w} + {g.nodes[act].op.value} between {src} and {reader}"


def change_kernel_size(g: EditableGraph, rng: random.Random) -> str:
    """Change the receptive field of one convolution (odd sizes: the padding keeps H and W)."""
    site = _pick(rng, g.of_op(OpType.CONV2D), "convolution")
    a = g.nodes[site].attrs
    old = int(a["kernel_size"])
    new = rng.choice([k for k in KERNEL_SIZES if k != old])
    a["kernel_size"] = new
    if "padding" in a:
        a["padding"] = new // 2
    kind = "depthwise " if is_depthwise(g.nodes[site]) else ""
    return f"{site}: {kind}kernel {old}x{old} -> {new}x{new}"


_BTD = frozenset({"BTD"})
_NOT_BTD = frozenset({"BD", "BCHW"})

#: Every operator Karn can apply, by name (the bandit's arms).
OPERATORS: dict[str, MutationOperator] = {op.name: op for op in (
    MutationOperator("swap_activation", swap_activation.__doc__ or "", swap_activation),
    MutationOperator("change_width", change_width.__doc__ or "", change_width),
    MutationOperator("change_rank", change_rank.__doc__ or "", change_rank),
    MutationOperator("add_attention_head", add_attention_head.__doc__ or "", add_attention_head, _BTD),
    MutationOperator("insert_attention_block", insert_attention_block.__doc__ or "", insert_attention_block, _BTD),
    MutationOperator("add_normalisation", add_normalisation.__doc__ or "", add_normalisation),
    MutationOperator("drop_normalisation", drop_normalisation.__doc__ or "", drop_normalisation),
    MutationOperator("swap_normalisation", swap_normalisation.__doc__ or "", swap_normalisation, _NOT_BTD),
    MutationOperator("add_residual", add_residual.__doc__ or "", add_residual),
    MutationOperator("drop_residual", drop_residual.__doc__ or "", drop_residual),
    MutationOperator("add_hidden_layer", add_hidden_layer.__doc__ or "", add_hidden_layer),
    MutationOperator("change_kernel_size", change_kernel_size.__doc__ or "", change_kernel_size,
                     frozenset({"BCHW"})),
)}
