"""What ``make evolve`` measured, as numbers and as one picture: the lineage tree and the success rate per generation.

The data is plain: per generation, the children Karn proposed (id, parent, operator, validated or not) and the
episodes run on them (each with its field reports). The figures printed at the end are

* ``karn_children_validated_fraction``: Karn's children whose kernels Urabrask VALIDATED, over all children;
* ``karn_fossilized_rate_last_vs_first``: the fossilization rate of the blueprints Tamiyo chose in the last
  half of Karn's generations over the first half, with a 95 % bootstrap interval (episodes resampled within
  each half);
* ``library_diversity_last_vs_first``: Karn's diversity score of the library after the last generation over
  the score before the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np

OUTCOME_COLOURS = {"fossilized": "#1a9850", "chosen": "#fdae61", "validated": "#bdbdbd", "rejected": "#d73027"}


@dataclass
class Child:
    """One blueprint in the tree: a built-in parent (generation 0) or a child Karn proposed."""

    blueprint_id: str
    name: str
    generation: int  # the evolve generation it was proposed in (0: the built-in library)
    parent_id: str | None = None
    operator: str | None = None
    validated: bool = False
    outcomes: list[str] = field(default_factory=list)  # field report outcomes, in arrival order

    @property
    def verdict(self) -> str:
        """fossilized / chosen (but never fossilized) / validated (never chosen) / rejected."""
        if "FOSSILIZED" in self.outcomes:
            return "fossilized"
        if self.outcomes:
            return "chosen"
        return "validated" if self.validated else "rejected"


@dataclass
class Episode:
    """One training run: its seed, test accuracy and the field reports it produced (outcomes only)."""

    seed: int
    test_accuracy: float
    outcomes: list[str]

    @property
    def fossilized(self) -> int:
        """FOSSILIZED reports."""
        return self.outcomes.count("FOSSILIZED")


@dataclass
class Generation:
    """What one generation proposed and what its episodes made of it."""

    index: int
    children: list[Child]
    episodes: list[Episode]
    diversity: float  # the library's diversity (Karn's score) before this generation's children

    @property
    def reports(self) -> int:
        """Field reports of this generation's episodes."""
        return sum(len(e.outcomes) for e in self.episodes)

    @property
    def fossilized(self) -> int:
        """FOSSILIZED reports among them."""
        return sum(e.fossilized for e in self.episodes)

    @property
    def fossil_rate(self) -> float:
        """Fossilized over reported (NaN without reports)."""
        return self.fossilized / self.reports if self.reports else math.nan

    @property
    def validated_fraction(self) -> float:
        """Validated children over children (NaN without children)."""
        return sum(c.validated for c in self.children) / len(self.children) if self.children else math.nan


def halves(generations: Sequence[Generation]) -> tuple[list[Generation], list[Generation]]:
    """Karn's generations (1 and on) split into a first and a last half (the middle one is left out)."""
    karn = [g for g in generations if g.index > 0]
    k = max(1, len(karn) // 2)
    return karn[:k], karn[-k:]


def _rate(episodes: Sequence[Episode]) -> float:
    reports = sum(len(e.outcomes) for e in episodes)
    return sum(e.fossilized for e in episodes) / reports if reports else math.nan


def fossil_ratio(generations: Sequence[Generation], *, resamples: int = 4000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Rate in the last half over the first half, and the 2.5 / 97.5 % bootstrap percentiles of that ratio."""
    first, last = halves(generations)
    a = [e for g in first for e in g.episodes]
    b = [e for g in last for e in g.episodes]
    point = _rate(b) / _rate(a) if _rate(a) > 0 else (math.inf if _rate(b) > 0 else math.nan)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(resamples):
        ra = _rate([a[i] for i in rng.integers(0, len(a), len(a))]) if a else math.nan
        rb = _rate([b[i] for i in rng.integers(0, len(b), len(b))]) if b else math.nan
        if ra > 0 and not math.isnan(rb):
            ratios.append(rb / ra)
    if not ratios:
        return point, math.nan, math.nan
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, float(lo), float(hi)


def summary_lines(generations: Sequence[Generation], diversity_end: float) -> list[str]:
    """The three ``name: value`` lines ``make evolve`` ends with."""
    children = [c for g in generations for c in g.children if g.index > 0]
    validated = sum(c.validated for c in children)
    fraction = validated / len(children) if children else math.nan
    point, lo, hi = fossil_ratio(generations)
    first, last = halves(generations)

    def counts(gens: list[Generation]) -> str:
        span = f"{gens[0].index}" if len(gens) == 1 else f"{gens[0].index}-{gens[-1].index}"
        return f"generation{'s' if len(gens) > 1 else ''} {span}: {sum(g.fossilized for g in gens)}/" \
               f"{sum(g.reports for g in gens)} fossilized"

    start = next((g.diversity for g in generations if g.index == 1), math.nan)
    growth = diversity_end / start if start > 0 else math.nan
    return [
        f"karn_children_validated_fraction: {fraction:.3f} ({validated}/{len(children)} children)",
        f"karn_fossilized_rate_last_vs_first: {point:.3f} (95% CI {lo:.3f}-{hi:.3f}; last {counts(last)}, "
        f"first {counts(first)})",
        f"library_diversity_last_vs_first: {growth:.3f} ({start:.3f} -> {diversity_end:.3f})",
    ]


def _tree_positions(nodes: Sequence[Child]) -> dict[str, tuple[float, float]]:
    """x = generation; within a generation, children sit in their parents' order (fewer crossing edges)."""
    pos: dict[str, tuple[float, float]] = {}
    for gen in sorted({n.generation for n in nodes}):
        column = [n for n in nodes if n.generation == gen]
        column.sort(key=lambda n: (pos.get(n.parent_id or "", (0.0, 0.0))[1], n.operator or "", n.blueprint_id))
        for i, node in enumerate(column):
            pos[node.blueprint_id] = (float(gen), i - (len(column) - 1) / 2)
    return pos


def draw(generations: Sequence[Generation], path: Path, title: str) -> None:
    """The lineage tree (left) and the success rate per generation (right), as one PNG."""
    nodes = [c for g in generations for c in g.children]
    pos = _tree_positions(nodes)
    fig, (tree, rates) = plt.subplots(1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1.6, 1]})
    for node in nodes:
        if node.parent_id in pos:
            (x0, y0), (x1, y1) = pos[node.parent_id], pos[node.blueprint_id]
            tree.plot([x0, x1], [y0, y1], color="#969696", lw=0.8, zorder=1)
    for verdict, colour in OUTCOME_COLOURS.items():
        pts = [pos[n.blueprint_id] for n in nodes if n.verdict == verdict]
        if pts:
            tree.scatter([p[0] for p in pts], [p[1] for p in pts], s=90, color=colour, edgecolor="black",
                         lw=0.5, zorder=2, label=f"{verdict} ({len(pts)})")
    for node in nodes:
        x, y = pos[node.blueprint_id]
        label = node.name if node.generation == 0 else (node.operator or "").replace("_", " ")
        if node.outcomes:  # chosen by Tamiyo: how often it fossilized out of how often it was grafted
            label += f" ({node.outcomes.count('FOSSILIZED')}/{len(node.outcomes)})"
        tree.annotate(label, (x, y), xytext=(6, 3), textcoords="offset points", fontsize=6.5)
    tree.set_xlabel("generation (0 = built-in library)")
    tree.set_yticks([])
    tree.set_xticks(sorted({n.generation for n in nodes}))
    tree.set_title("lineage: every child Karn proposed, edge from its parent; (fossilized/grafted)")
    tree.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4, fontsize=8, frameon=False)

    xs = [g.index for g in generations]
    fossil = [g.fossil_rate for g in generations]
    rates.bar(xs, [0 if math.isnan(f) else f for f in fossil], color="#1a9850", alpha=0.75,
              label="fossilized / chosen (field reports)")
    for g in generations:
        rates.annotate(f"{g.fossilized}/{g.reports}", (g.index, 0 if math.isnan(g.fossil_rate) else g.fossil_rate),
                       ha="center", va="bottom", fontsize=8)
    karn = [g for g in generations if g.index > 0]
    rates.plot([g.index for g in karn], [g.validated_fraction for g in karn], "o-", color="#2166ac",
               label="children validated")
    rates.set_ylim(0, 1.3)
    rates.set_xticks(xs)
    rates.set_xlabel("generation")
    rates.set_title("success per generation")
    rates.legend(loc="upper left", ncol=2, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def as_json(generations: Sequence[Generation], extra: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, for ``evolve.json``."""
    return {**extra, "generations": [{
        "index": g.index, "diversity_before": g.diversity, "fossilized": g.fossilized, "reports": g.reports,
        "children": [vars(c) for c in g.children],
        "episodes": [vars(e) for e in g.episodes],
    } for g in generations]}
