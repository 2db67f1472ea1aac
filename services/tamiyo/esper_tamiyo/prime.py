"""Tamiyo-Prime: score each domain's criticality from its health summaries and share the budget by it.

Prime sees no seeds, only constant-size :class:`~esper_contracts.HealthSummaryReport` s, one per domain
and window. Each report gets a criticality score in [0, 1]:

    worsening  = clamp01(0.5 + loss_trend / (2 · trend_scale))    flat loss scores 0.5, a rising one more
    volatility = clamp01((max_grad / mean_grad - 1) / volatility_scale)
    waste      = (dead_node_ratio + activation_sparsity) / 2
    score      = 0.4 · worsening + 0.3 · volatility + 0.3 · waste

A domain's criticality is the mean score of its reports among the last ``attention_window`` reports
received. Budget shares mix the configured priors with a softmax "attention" over criticality:

    share_d = (1 - λ) · prior_d + λ · softmax(criticality / τ)_d

Amounts are integers of micro-ATP and are split by largest remainder (ties in configuration order), so
shares always add up to exactly what was distributed and the result never depends on float rounding.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from esper_contracts import HealthSummaryReport

from .domains import HierarchicalControlConfig

#: Budgets are kept in integer micro-ATP so sums are exact.
MICRO = 1_000_000

TREND_SCALE = 0.05  # a 5% loss rise per window already counts as fully worsening
VOLATILITY_SCALE = 4.0  # a max/mean gradient ratio of 5 counts as fully volatile
WEIGHTS = (0.4, 0.3, 0.3)  # worsening, volatility, waste


def to_micro(amount: float) -> int:
    """ATP as integer micro-ATP, rounded down (a budget is never rounded up)."""
    return max(0, math.floor(amount * MICRO))


def from_micro(amount: int) -> float:
    """Integer micro-ATP as ATP."""
    return amount / MICRO


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


@dataclass(frozen=True)
class Criticality:
    """A report's score and the three parts it is made of (shown by the budgets API)."""

    score: float
    worsening: float
    volatility: float
    waste: float


def score_report(report: HealthSummaryReport) -> Criticality:
    """The deterministic criticality of one health summary."""
    worsening = _clamp01(0.5 + report.loss_trend / (2 * TREND_SCALE))
    ratio = report.max_gradient_norm / report.mean_gradient_norm if report.mean_gradient_norm > 0 else 1.0
    volatility = _clamp01((ratio - 1.0) / VOLATILITY_SCALE)
    waste = (report.mean_dead_node_ratio + report.mean_activation_sparsity) / 2
    w_worse, w_vol, w_waste = WEIGHTS
    return Criticality(w_worse * worsening + w_vol * volatility + w_waste * waste, worsening, volatility, waste)


def split_by_weight(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` integer units in proportion to ``weights`` by largest remainder.

    The parts add up to ``total`` exactly (0 everywhere when every weight is 0); remainders are handed
    out largest first, ties to the key that comes first in ``weights``.
    """
    keys = list(weights)
    weight_sum = math.fsum(max(0.0, w) for w in weights.values())
    if total <= 0 or weight_sum <= 0:
        return dict.fromkeys(keys, 0)
    exact = [total * max(0.0, weights[k]) / weight_sum for k in keys]
    parts = [math.floor(x) for x in exact]
    leftover = total - sum(parts)
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[: max(0, leftover)]:
        parts[i] += 1
    # Float division can round a part up past an integer; take such excess back, smallest remainder first.
    while leftover < 0:
        for i in reversed(by_remainder):
            if leftover < 0 and parts[i] > 0:
                parts[i] -= 1
                leftover += 1
    return dict(zip(keys, parts, strict=True))


class TamiyoPrime:
    """Keeps the recent health summaries and turns them into domain budgets."""

    def __init__(self, config: HierarchicalControlConfig) -> None:
        self.config = config
        self._recent: deque[tuple[str, Criticality]] = deque(maxlen=config.tamiyo_prime.attention_window)
        self._latest: dict[str, HealthSummaryReport] = {}

    def observe(self, report: HealthSummaryReport) -> None:
        """Take one domain's summary (its ``domain_id``, else its ``region_id``, names the domain).

        A redelivered summary (same domain and window as the latest) is ignored, so it cannot count twice.
        """
        domain = report.domain_id or report.region_id
        latest = self._latest.get(domain)
        if latest is not None and latest.window == report.window and latest == report:
            return
        self._recent.append((domain, score_report(report)))
        self._latest[domain] = report

    def latest(self) -> dict[str, HealthSummaryReport]:
        """The most recent summary of each domain."""
        return dict(self._latest)

    def criticality(self, domains: Sequence[str]) -> dict[str, Criticality]:
        """Mean criticality of each domain over the attention window (0 for a domain with no recent report)."""
        result: dict[str, Criticality] = {}
        for domain in domains:
            mine = [c for d, c in self._recent if d == domain]
            if not mine:
                result[domain] = Criticality(0.0, 0.0, 0.0, 0.0)
                continue
            n = len(mine)
            result[domain] = Criticality(
                math.fsum(c.score for c in mine) / n,
                math.fsum(c.worsening for c in mine) / n,
                math.fsum(c.volatility for c in mine) / n,
                math.fsum(c.waste for c in mine) / n,
            )
        return result

    def shares(self, domains: Sequence[str], criticality: Mapping[str, Criticality]) -> dict[str, float]:
        """Each domain's share of the distributable budget (they add up to 1)."""
        prime = self.config.tamiyo_prime
        initial = self.config.initial_budgets()
        priors = {d: initial.get(d, 0.0) for d in domains}
        prior_sum = math.fsum(priors.values())
        if prior_sum <= 0:
            priors = dict.fromkeys(domains, 1.0)
            prior_sum = float(len(domains))
        # Softmax with the maximum subtracted, so large scores cannot overflow.
        top = max((criticality[d].score for d in domains), default=0.0)
        exps = {d: math.exp((criticality[d].score - top) / prime.attention_temperature) for d in domains}
        exp_sum = math.fsum(exps.values())
        lam = prime.attention_share
        return {d: (1 - lam) * priors[d] / prior_sum + lam * exps[d] / exp_sum for d in domains}

    def domain_budgets(
        self, distributable: int, domains: Sequence[str]
    ) -> tuple[dict[str, int], dict[str, Criticality]]:
        """Split ``distributable`` micro-ATP between ``domains``; also return the criticality used."""
        criticality = self.criticality(domains)
        return split_by_weight(distributable, self.shares(domains, criticality)), criticality
