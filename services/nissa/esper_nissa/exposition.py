"""The Prometheus text format, written directly: Nissa's families are too many for prometheus-client to format.

A run of 10,000 seeds is 60,000 per-seed samples. prometheus-client escapes and formats every label of every
sample at every scrape; here each seed's label text is escaped once, when the seed is first seen, and a scrape
only joins strings. Every family takes its name, type, help and labels from the metric catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from esper_contracts import MetricType, metric_spec


@lru_cache(maxsize=65536)  # the same names (runs, regions, stages) come back at every scrape
def escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="x",b="y"``: the inside of a label set (without the braces)."""
    return ",".join(f'{name}="{escape(value)}"' for name, value in zip(names, values, strict=True))


def number(value: float) -> str:
    """A sample value: integers without a decimal point, floats in their shortest exact form."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


class TextFamily:
    """One metric family of the catalogue, written as text: a HELP and a TYPE line, then its samples."""

    def __init__(self, name: str) -> None:
        spec = metric_spec(name)
        if spec.type is MetricType.HISTOGRAM:
            raise TypeError(f"{name}: histograms are not written here")
        self.labels = spec.labels
        self.sample = f"{name}_total" if spec.type is MetricType.COUNTER else name
        help_text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines = [f"# HELP {self.sample} {help_text}\n# TYPE {self.sample} {spec.type.value}\n"]

    def add(self, values: Sequence[str], value: float) -> None:
        """One sample, its label values in the catalogue's label order."""
        if len(values) != len(self.labels):
            raise ValueError(f"{self.sample} takes labels {self.labels}, got {len(values)} values")
        self.add_escaped(label_text(self.labels, values), value)

    def add_escaped(self, labels: str, value: float) -> None:
        """One sample whose label text (from :func:`label_text`, in the catalogue's order) is already written."""
        self.lines.append(f"{self.sample}{{{labels}}} {number(value)}\n" if labels
                          else f"{self.sample} {number(value)}\n")

    def add_lines(self, lines: Iterable[str]) -> None:
        """Samples written by the caller: ``<self.sample>{<labels>} <value>\\n`` each (the fast path for many)."""
        self.lines.extend(lines)

    def text(self) -> str:
        """The family as text."""
        return "".join(self.lines)
