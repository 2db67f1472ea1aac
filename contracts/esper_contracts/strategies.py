"""Hypothesis strategies generated from the JSON Schemas of our contracts (tests only: imports hypothesis).

Covers exactly the schema features the contracts use: objects, $ref/$defs, anyOf, enums, const,
strings (length, pattern, date-time), numbers and integers with bounds, arrays, maps, booleans.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


def from_schema(
    schema: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """A strategy producing JSON-compatible values valid against ``schema`` (a Pydantic-exported schema).

    ``overrides`` maps a ``$defs`` name (e.g. ``"BlueprintIR"``) to a hand-written strategy, for models
    whose validity is more than their schema (a graph must be acyclic and fully connected).
    """
    defs = dict(schema.get("$defs", {}))
    overrides = overrides or {}
    title = schema.get("title")
    if title in overrides:
        return overrides[title]
    return _strategy(schema, defs, overrides)


def _strategy(
    node: dict[str, Any], defs: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        if name in overrides:
            return overrides[name]
        return st.deferred(lambda: _strategy(defs[name], defs, overrides))
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "anyOf" in node:
        return st.one_of(*[_strategy(sub, defs, overrides) for sub in node["anyOf"]])
    kind = node.get("type", "string" if {"minLength", "maxLength", "pattern"} & set(node) else None)
    if kind == "object":
        return _object(node, defs, overrides)
    if kind == "array":
        items = _strategy(node.get("items", {"type": "integer"}), defs, overrides)
        return st.lists(items, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 4), 4))
    if kind == "string":
        return _string(node)
    if kind == "integer":
        lo = node.get("minimum", node["exclusiveMinimum"] + 1 if "exclusiveMinimum" in node else -(10**6))
        hi = node.get("maximum", node["exclusiveMaximum"] - 1 if "exclusiveMaximum" in node else 10**6)
        return st.integers(min_value=lo, max_value=hi)
    if kind == "number":
        return st.floats(
            min_value=node.get("minimum", node.get("exclusiveMinimum", -1e6)),
            max_value=node.get("maximum", node.get("exclusiveMaximum", 1e6)),
            exclude_min="exclusiveMinimum" in node,
            exclude_max="exclusiveMaximum" in node,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if not node:  # any JSON value (pydantic's JsonValue): small nested documents of finite scalars
        scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8) | st.floats(
            allow_nan=False, allow_infinity=False, width=32)
        return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.text(min_size=1, max_size=8), inner, max_size=3), max_leaves=6)
    raise NotImplementedError(f"schema node not supported by the test generator: {node}")


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    if node.get("format") == "date-time":
        return st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
            lambda d: d.isoformat()
        )
    lo, hi = node.get("minLength", 0), node.get("maxLength", 24)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: lo <= len(s.strip()) and len(s) <= hi)
    hi = min(hi, 24)
    base = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=max(lo, 0), max_size=max(hi, lo))
    return base if lo == 0 else base.filter(lambda s: len(s.strip()) >= lo)


def _object(
    node: dict[str, Any], defs: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    props: dict[str, Any] = node.get("properties", {})
    if not props:  # a map: dict[str, X]
        values = _strategy(node.get("additionalProperties", {"type": "number"}), defs, overrides)
        keys = _strategy(node.get("propertyNames", {"type": "string", "minLength": 1}), defs, overrides)
        return st.dictionaries(keys, values, max_size=3)
    required = set(node.get("required", []))
    fixed = {k: _strategy(v, defs, overrides) for k, v in props.items() if k in required}
    optional = {k: _strategy(v, defs, overrides) for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(fixed, optional=optional)


_UNARY = ["relu", "gelu", "silu", "tanh", "sigmoid", "identity"]


@st.composite
def blueprint_ir_json(draw: st.DrawFn) -> dict[str, Any]:
    """A valid BlueprintIR as JSON: a chain of element-wise ops, optionally closed by a residual add."""
    features = draw(st.integers(min_value=1, max_value=512))
    layout = draw(st.sampled_from(["BD", "BTD", "BCHW"]))
    ops = draw(st.lists(st.sampled_from(_UNARY), min_size=1, max_size=5))
    nodes: list[dict[str, Any]] = [{"id": f"n{i}", "op": op} for i, op in enumerate(ops)]
    edges: list[dict[str, Any]] = [{"src": "input" if i == 0 else f"n{i - 1}", "dst": f"n{i}"} for i in range(len(ops))]
    last = f"n{len(ops) - 1}"
    if draw(st.booleans()):
        nodes.append({"id": "res", "op": "add"})
        edges += [{"src": last, "dst": "res", "port": 0}, {"src": "input", "dst": "res", "port": 1}]
        last = "res"
    edges.append({"src": last, "dst": "output"})
    scaffold = draw(st.booleans())
    body: dict[str, Any] = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)),
        "blueprint_class": "scaffold" if scaffold else draw(st.sampled_from(["mlp", "conv", "low_rank"])),
        "input": {"layout": layout, "features": features},
        "output": {"layout": layout, "features": features},
        "nodes": nodes,
        "edges": edges,
    }
    if scaffold:
        body["sunset"] = {"ttl_epochs": draw(st.integers(min_value=1, max_value=50))}
    return body


_ACTIVATIONS = ["relu", "gelu", "silu", "tanh", "sigmoid"]


def _divisors(n: int, at_most: int) -> list[int]:
    return [d for d in range(1, min(n, at_most) + 1) if n % d == 0]


class _Chain:
    """Appends nodes to a JSON graph; ``project`` is a learned map of the feature axis for the layout."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []

    def add(self, op: str, *srcs: str, **attrs: Any) -> str:
        node_id = f"n{len(self.nodes)}"
        self.nodes.append({"id": node_id, "op": op, "attrs": attrs})
        self.edges += [{"src": s, "dst": node_id, "port": i} for i, s in enumerate(srcs)]
        return node_id

    def project(self, src: str, fin: int, fout: int, **extra: Any) -> str:
        if self.layout == "BCHW":
            return self.add("conv2d", src, in_channels=fin, out_channels=fout, kernel_size=1, **extra)
        return self.add("linear", src, in_features=fin, out_features=fout, **extra)


def _block(draw: st.DrawFn, g: _Chain, x: str, f: int) -> str:
    """One block of real layers on ``f`` features, from ``x``; returns the node producing its output."""
    kinds = ["projection", "activation", "norm", "dropout", "scale"]
    kinds += ["attention"] if g.layout == "BTD" else ["conv"] if g.layout == "BCHW" else []
    kind = draw(st.sampled_from(kinds))
    if kind == "projection":
        hidden = draw(st.integers(min_value=1, max_value=2 * f))
        h = g.add(draw(st.sampled_from(_ACTIVATIONS)), g.project(x, f, hidden))
        return g.project(h, hidden, f, init=draw(st.sampled_from(["default", "zeros"])))
    if kind == "activation":
        return g.add(draw(st.sampled_from(_ACTIVATIONS)), x)
    if kind == "norm":
        choices = {"BD": ["layer_norm", "group_norm"], "BTD": ["layer_norm"], "BCHW": ["group_norm", "batch_norm2d"]}
        op = draw(st.sampled_from(choices[g.layout]))
        if op == "layer_norm":
            return g.add(op, x, normalized_shape=f)
        if op == "batch_norm2d":
            return g.add(op, x, num_features=f)
        return g.add(op, x, num_groups=draw(st.sampled_from(_divisors(f, 8))), num_channels=f)
    if kind == "attention":
        return g.add("multihead_attention", x, embed_dim=f, num_heads=draw(st.sampled_from(_divisors(f, 8))))
    if kind == "conv":
        groups = f if draw(st.booleans()) else 1
        return g.add("conv2d", x, in_channels=f, out_channels=f, kernel_size=draw(st.sampled_from([1, 3, 5])),
                     groups=groups)
    if kind == "dropout":
        return g.add("dropout", x, p=draw(st.sampled_from([0.0, 0.1, 0.3])))
    return g.add("scale", x, value=draw(st.sampled_from([0.5, 1.0, 2.0])))


@st.composite
def buildable_blueprint_ir_json(draw: st.DrawFn, layouts: tuple[str, ...] = ("BD", "BTD", "BCHW"),
                                max_features: int = 48) -> dict[str, Any]:
    """A BlueprintIR (as JSON) that shape inference accepts: a chain of blocks of real layers.

    Blocks are a projection pair through a hidden width, an activation, a normalisation, self-attention
    (BTD), a plain or depthwise spatial convolution (BCHW), dropout or a constant scale; any block may be
    wrapped in a residual add, and some graphs end with a projection to another output width. This is
    the shape of the designs a mutation operator meets, which ``blueprint_ir_json`` (element-wise ops
    only) does not cover.
    """
    layout = draw(st.sampled_from(list(layouts)))
    features = draw(st.integers(min_value=1, max_value=max_features))
    g = _Chain(layout)
    x = "input"
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        out = _block(draw, g, x, features)
        x = g.add("add", x, out) if draw(st.booleans()) else out
    out_features = features
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        out_features = draw(st.integers(min_value=1, max_value=max_features))
        x = g.project(x, features, out_features)
    g.edges.append({"src": x, "dst": "output", "port": 0})
    scaffold = draw(st.integers(min_value=0, max_value=5)) == 0
    body: dict[str, Any] = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)),
        "blueprint_class": "scaffold" if scaffold else draw(
            st.sampled_from(["mlp", "conv", "attention", "low_rank", "normalization"])),
        "input": {"layout": layout, "features": features},
        "output": {"layout": layout, "features": out_features},
        "nodes": g.nodes,
        "edges": g.edges,
        "tags": draw(st.lists(st.sampled_from(["residual", "capacity", "compact", "builtin"]), max_size=2,
                              unique=True)),
    }
    if scaffold:
        body["sunset"] = {"ttl_epochs": draw(st.integers(min_value=1, max_value=50))}
    return body
