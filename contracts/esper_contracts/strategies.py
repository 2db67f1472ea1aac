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
