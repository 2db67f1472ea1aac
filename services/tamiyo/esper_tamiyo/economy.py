"""The budget economy: Tamiyo mints a pool each cycle, allocates it per region, funds proposals, and
keeps an emergency pool for scaffolds in crisis.

One cycle (one epoch boundary) splits the pool like this, in integer micro-ATP so nothing can round up:

    pool = atp_global_budget × posture × resource_budget
         = emergency pool                    (emergency_fraction; scaffolds in crisis)
         + proposal reserve                  (proposal_reserve_fraction; never pre-allocated)
         + distributable                     (Tamiyo-Prime shares it between populated domains,
                                              each domain shares its part between its regions by seed count)

Whatever no region takes (the reserve, and the share of a domain that has no regions) is the cycle's
*unallocated capacity*. Proposals are funded from it, best return per unit asked first, whole or not at
all, ties broken by proposal id; every proposal gets a :class:`~esper_contracts.ProposalDecision`.
So ``base + grants <= pool - emergency pool`` and ``emergency grants <= emergency pool``: the sum of
allocations never exceeds the pool, however many requests compete for it.

Spending is Narset's job: the worker that owns a region prices each adaptation as
``risk × disruption`` (the kernel's validated risk times the share of the graph it perturbs) and pays
for it from the region's allocation; when the allocation is short it files a proposal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from esper_contracts import AllocationCommand, ProposalDecision, StrategicOpportunityProposal

from .domains import HierarchicalControlConfig
from .prime import MICRO, Criticality, TamiyoPrime, from_micro, split_by_weight, to_micro

#: Multiplier of the minted pool and of each region's allocator pool, per risk posture.
POSTURE_BUDGET = {"conservative": 0.5, "balanced": 1.0, "aggressive": 1.5}
POSTURE_ENERGY = {"conservative": 0.8, "balanced": 1.0, "aggressive": 1.2}


@dataclass(frozen=True)
class Region:
    """A region Tamiyo knows about: a Kasmina layer, its domain and how many seeds it holds."""

    region_id: str
    domain_id: str
    seed_count: int


@dataclass
class Cycle:
    """One cycle's books, in micro-ATP."""

    cycle: int
    pool: int
    emergency_pool: int
    energy: float
    domain_budgets: dict[str, int] = field(default_factory=dict)
    criticality: dict[str, Criticality] = field(default_factory=dict)
    base: dict[str, int] = field(default_factory=dict)  # region -> minted allocation
    grants: dict[str, int] = field(default_factory=dict)  # region -> funded proposals
    emergency: dict[str, int] = field(default_factory=dict)  # region -> emergency pool grants
    unfunded: set[str] = field(default_factory=set)  # proposals turned down because the cycle had no room left

    def unallocated(self) -> int:
        """Capacity left for proposals: the pool minus the emergency pool, allocations and grants."""
        return self.pool - self.emergency_pool - sum(self.base.values()) - sum(self.grants.values())

    def emergency_left(self) -> int:
        """What is left of the emergency pool."""
        return self.emergency_pool - sum(self.emergency.values())

    def allocated(self) -> int:
        """Everything handed to regions this cycle."""
        return sum(self.base.values()) + sum(self.grants.values()) + sum(self.emergency.values())

    def region_total(self, region_id: str) -> int:
        """A region's whole allocation this cycle."""
        return self.base.get(region_id, 0) + self.grants.get(region_id, 0) + self.emergency.get(region_id, 0)

    def commands(self, regions: Sequence[Region]) -> list[AllocationCommand]:
        """One AllocationCommand per region, in the order given."""
        return [
            AllocationCommand(
                cycle=self.cycle,
                region_id=r.region_id,
                domain_id=r.domain_id,
                atp_budget=from_micro(self.region_total(r.region_id)),
                energy_budget=self.energy,
                valid_until_epoch=self.cycle + 1,
            )
            for r in regions
        ]

    def summary(self) -> dict[str, object]:
        """The cycle as plain JSON for the budgets API."""
        return {
            "cycle": self.cycle,
            "pool": from_micro(self.pool),
            "emergency_pool": from_micro(self.emergency_pool),
            "emergency_left": from_micro(self.emergency_left()),
            "unallocated": from_micro(self.unallocated()),
            "allocated": from_micro(self.allocated()),
            "energy_per_region": self.energy,
            "domains": {
                d: {
                    "budget": from_micro(b),
                    "criticality": round(self.criticality[d].score, 6) if d in self.criticality else 0.0,
                }
                for d, b in self.domain_budgets.items()
            },
            "regions": {
                r: {
                    "base": from_micro(self.base.get(r, 0)),
                    "granted": from_micro(self.grants.get(r, 0)),
                    "emergency": from_micro(self.emergency.get(r, 0)),
                    "total": from_micro(self.region_total(r)),
                }
                for r in sorted(set(self.base) | set(self.grants) | set(self.emergency))
            },
        }


class BudgetEconomy:
    """Mints cycles and settles what competes for them."""

    def __init__(self, config: HierarchicalControlConfig, allocator_pool: float = 1.5) -> None:
        self.config = config
        self.prime = TamiyoPrime(config)
        self.allocator_pool = allocator_pool

    def mint(self, cycle: int, regions: Sequence[Region], posture: str = "balanced",
             resource_budget: float = 1.0) -> Cycle:
        """Mint this cycle's pool and allocate it to ``regions`` through Tamiyo-Prime's domain shares."""
        prime = self.config.tamiyo_prime
        pool = to_micro(prime.atp_global_budget * POSTURE_BUDGET[posture] * resource_budget)
        emergency = math.floor(pool * prime.emergency_fraction)
        reserve = math.floor(pool * prime.proposal_reserve_fraction)
        books = Cycle(cycle=cycle, pool=pool, emergency_pool=emergency,
                      energy=self.allocator_pool * POSTURE_ENERGY[posture])

        by_domain: dict[str, list[Region]] = {}
        for region in regions:
            if region.seed_count > 0:
                by_domain.setdefault(region.domain_id, []).append(region)
        # Configured domains first (file order), then any unassigned one: the order breaks remainder ties.
        order = [d for d in self.config.domains if d in by_domain] + [d for d in by_domain
                                                                       if d not in self.config.domains]
        books.domain_budgets, books.criticality = self.prime.domain_budgets(pool - emergency - reserve, order)
        for domain in order:
            members = by_domain[domain]
            books.base.update(split_by_weight(books.domain_budgets[domain],
                                              {r.region_id: float(r.seed_count) for r in members}))
        return books

    def settle_proposals(
        self,
        books: Cycle,
        proposals: Sequence[StrategicOpportunityProposal],
        known: Mapping[str, Region],
        protected: Callable[[str], bool] = lambda _region: False,
    ) -> list[ProposalDecision]:
        """Fund the best proposals that fit the cycle's unallocated capacity; answer every one.

        Order: return per unit asked (``expected_roi / ask``) descending, then proposal id, so the same
        proposals always get the same answers whatever order they arrived in.
        """
        decisions: list[ProposalDecision] = []
        candidates: list[StrategicOpportunityProposal] = []
        for p in proposals:
            if p.region_id not in known:
                decisions.append(reject_unknown_region(p, known))
            elif protected(p.region_id):
                decisions.append(_reject(p, f"region {p.region_id!r} is protected from adaptation by policy"))
            elif p.expected_roi <= 0:
                decisions.append(_reject(p, f"expected_roi {p.expected_roi:g} promises no return"))
            else:
                candidates.append(p)
        candidates.sort(key=lambda p: (-(p.expected_roi / p.ask), p.proposal_id))
        for p in candidates:
            ask = math.ceil(p.ask * MICRO)
            capacity = books.unallocated()
            if ask <= capacity:
                books.grants[p.region_id] = books.grants.get(p.region_id, 0) + ask
                decisions.append(ProposalDecision(
                    proposal_id=p.proposal_id, region_id=p.region_id, approved=True, granted=from_micro(ask),
                    reason=(f"funded in cycle {books.cycle}: roi/ask {p.expected_roi / p.ask:.4g}, "
                            f"{from_micro(capacity - ask):.4f} ATP left unallocated"),
                ))
            else:
                books.unfunded.add(p.proposal_id)
                decisions.append(_reject(
                    p, f"ask {p.ask:.4f} ATP exceeds the {from_micro(capacity):.4f} ATP left unallocated "
                       f"in cycle {books.cycle} after better proposals"))
        return decisions

    def grant_emergency(self, books: Cycle, region_id: str, tranche: float) -> int:
        """Give a region up to ``tranche`` ATP from the emergency pool; returns the micro-ATP granted."""
        amount = min(to_micro(tranche), books.emergency_left())
        if amount > 0:
            books.emergency[region_id] = books.emergency.get(region_id, 0) + amount
        return amount


def reject_unknown_region(p: StrategicOpportunityProposal, known: Mapping[str, Region]) -> ProposalDecision:
    """The answer to a proposal naming a region Tamiyo has never seen."""
    names = sorted(known)
    listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return _reject(p, f"unknown region {p.region_id!r}; known regions: {listed or 'none yet'}")


def _reject(p: StrategicOpportunityProposal, reason: str) -> ProposalDecision:
    return ProposalDecision(proposal_id=p.proposal_id, region_id=p.region_id, approved=False, granted=0.0,
                            reason=reason[:2000])
