"""Checks of the observability configuration: which metrics a PromQL expression reads, and whether each is catalogued.

Dashboards (deploy/grafana/dashboards/*.json) and alert rules (deploy/prometheus/rules/*.yml) may only read
metrics of the catalogue (``esper_contracts.metrics``) and Prometheus's own ``up``. :func:`metric_names` finds
the metric names in an expression without a PromQL parser: strings, label matchers, ranges and grouping
clauses are cut out, and what is left that is neither a function, a keyword nor a number is a metric name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from esper_contracts import metric_of_series

#: Series Prometheus makes itself that dashboards and rules may read.
BUILTIN_SERIES = frozenset({"up"})
#: Grafana's interval variables, and what tests substitute for them.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                       "group_right", "inf", "nan", "atan2"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKENS = re.compile(r"(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[a-zA-Z]*)|(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
                     r"(?P<call>\s*\()?")
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's interval variables and ``$name``/``${name}`` replaced (unknown ones by ``.*``)."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ".*"), expr)


def metric_names(expr: str) -> set[str]:
    """The metric (series) names ``expr`` selects."""
    text = _STRINGS.sub('""', substitute(expr, {}))
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _TOKENS.finditer(text):
        name = m.group("name")
        if name and not m.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def uncatalogued(expr: str) -> list[str]:
    """The names ``expr`` reads that are neither catalogued series nor Prometheus's own."""
    return sorted(n for n in metric_names(expr) if n not in BUILTIN_SERIES and metric_of_series(n) is None)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard panel or an alert rule, and where it is."""

    where: str
    expr: str


def dashboard_queries(path: Path) -> Iterator[Query]:
    """Every panel target's expression in a Grafana dashboard JSON file (rows' nested panels too)."""
    dashboard = json.loads(path.read_text())

    def panels(items: list[dict]) -> Iterator[dict]:  # type: ignore[type-arg]
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield Query(f"{path.name}: {panel.get('title', '?')} [{target.get('refId', '?')}]", target["expr"])


def rule_queries(path: Path) -> Iterator[Query]:
    """Every alerting and recording rule's expression in a Prometheus rule file."""
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield Query(f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
