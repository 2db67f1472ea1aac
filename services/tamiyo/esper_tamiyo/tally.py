"""What Tamiyo has done since it started, counted for Prometheus: decisions, commands, budgets, proposals.

The controller stays free of any metrics library: it adds to a :class:`Tally`, and :func:`tamiyo_families`
turns the tally and the current cycle's books into the catalogue's families when Prometheus scrapes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from esper_runtime.metrics import family

from .prime import from_micro

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .controller import TamiyoController

#: How a proposal was answered: funded, turned down for want of room in the cycle, or refused outright.
PROPOSAL_RESULTS = ("funded", "unfunded", "refused")


@dataclass
class Tally:
    """Running totals of one Tamiyo process (they restart at zero with it, as Prometheus counters do)."""

    decisions: Counter[str] = field(default_factory=Counter)  # DecisionRecord.kind -> count
    commands: Counter[str] = field(default_factory=Counter)  # CommandType value -> count
    proposals: Counter[str] = field(default_factory=Counter)  # PROPOSAL_RESULTS -> count
    minted_atp: float = 0.0
    granted_atp: float = 0.0
    spent_atp: dict[str, float] = field(default_factory=dict)  # domain -> ATP reported spent


def tamiyo_families(controller: TamiyoController) -> list[Metric]:
    """The catalogue's ``esper_tamiyo_*`` families from the controller's tally and books (caller holds its lock)."""
    tally = controller.tally
    decisions, commands = family("esper_tamiyo_decisions"), family("esper_tamiyo_commands")
    for kind in ("adaptation", "allocation", "proposal", "scaffold", "policy"):
        decisions.add_metric([kind], tally.decisions[kind])
    for command in ("GERMINATE", "ADVANCE", "CULL", "CANCEL"):
        commands.add_metric([command], tally.commands[command])
    proposals = family("esper_tamiyo_proposals")
    for result in PROPOSAL_RESULTS:
        proposals.add_metric([result], tally.proposals[result])
    minted, granted = family("esper_tamiyo_budget_minted_atp"), family("esper_tamiyo_proposal_granted_atp")
    minted.add_metric([], tally.minted_atp)
    granted.add_metric([], tally.granted_atp)
    spent = family("esper_tamiyo_budget_spent_atp")
    for domain, atp in sorted(tally.spent_atp.items()):
        spent.add_metric([domain], atp)
    books = family("esper_tamiyo_budget_atp")
    cycle = controller.books
    if cycle is not None:
        for part, micro in (("pool", cycle.pool), ("emergency_pool", cycle.emergency_pool),
                            ("allocated", cycle.allocated()), ("unallocated", cycle.unallocated()),
                            ("emergency_left", cycle.emergency_left())):
            books.add_metric([part], from_micro(micro))
    zones, failures = family("esper_tamiyo_protected_zones"), family("esper_tamiyo_kernel_source_failures")
    zones.add_metric([], len(controller.zones.active()))
    failures.add_metric([], controller.kernel_source_failures)
    summaries = family("esper_tamiyo_health_summaries")
    summaries.add_metric([], controller.summaries_received)
    return [decisions, commands, proposals, minted, granted, spent, books, zones, failures, summaries]
