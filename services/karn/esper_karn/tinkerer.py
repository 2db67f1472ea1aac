"""Stage 1, the Tinkerer at work: learn what Urza holds, judge the children in flight, propose, submit.

A round (:meth:`Tinkerer.run_round`):

1. sync the library view with Urza (new blueprints, and the validation reports their records carry);
2. look at the children still unjudged: Urza may have judged them while a report was lost, or every
   compile may have FAILED (no validation report ever comes for those);
3. ask :class:`~esper_karn.pacing.Pacing` how many children the pipeline can take now;
4. rebuild the mutation policy from the stored outcomes and let the
   :class:`~esper_karn.architect.Architect` pick parents, operators and children;
5. submit each child to Urza with its lineage, then remember it as Karn's own.

Submitting before remembering means a crash in between loses nothing: the next sync finds the child in
Urza, and its mutation record says Karn made it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, Field

from esper_contracts import BlueprintIR, BlueprintRecord, KernelStatus, PipelineBacklog

from .architect import Architect, Parent
from .bandit import ArmKey, ThompsonBandit
from .history import KarnHistory
from .pacing import Allowance, Pacing
from .rewards import Evidence, RewardWeights, evidence

log = logging.getLogger(__name__)

PROPOSER = "karn"


class UrzaPort(Protocol):
    """What Karn asks of Urza (``esper_urza_client.UrzaClient`` answers all of it)."""

    def submit_blueprint(self, ir: BlueprintIR) -> BlueprintRecord: ...

    def blueprint(self, blueprint_id: str) -> BlueprintRecord: ...

    def blueprints(self, *, limit: int = 100, offset: int = 0, layout: str | None = None,
                   features: int | None = None) -> tuple[list[BlueprintRecord], int]: ...

    def backlog(self) -> PipelineBacklog: ...


class Submitted(BaseModel):
    """One child sent to Urza."""

    blueprint_id: str
    name: str
    parent_id: str
    operator: str
    generation: int
    detail: str
    novelty_bonus: float


class RoundReport(BaseModel):
    """What a round did and saw: the children submitted, the room it had and why, the library's diversity."""

    submitted: list[Submitted] = Field(default_factory=list)
    allowance: int = 0
    reason: str = ""
    parents: int = 0
    diversity: float = 0.0
    bonus_weight: float = 0.0
    refusals: dict[str, int] = Field(default_factory=dict)


class Tinkerer:
    """Runs proposal rounds against one Urza; one round at a time (rounds are serialised)."""

    def __init__(self, history: KarnHistory, urza: UrzaPort, *, architect: Architect | None = None,
                 pacing: Pacing | None = None, rng: random.Random | None = None, children_per_round: int = 2,
                 refresh_limit: int = 20, page_size: int = 100, weights: RewardWeights | None = None) -> None:
        self.history = history
        self.urza = urza
        self.architect = architect or Architect()
        self.pacing = pacing or Pacing()
        self.rng = rng or random.Random()
        self.children_per_round = children_per_round
        self.refresh_limit = refresh_limit
        self.page_size = page_size
        self.weights = weights
        self._synced = 0  # Urza lists oldest first: the records before this offset are already known
        self._lock = threading.Lock()
        self.last_round: RoundReport | None = None

    # --- learning what Urza knows ------------------------------------------------------------------------

    def sync_library(self) -> int:
        """Remember every blueprint Urza stored since the last sync; returns how many were new to Karn."""
        new = 0
        while True:
            records, total = self.urza.blueprints(limit=self.page_size, offset=self._synced)
            for record in records:
                new += self._learn(record)
            self._synced += len(records)
            if not records or self._synced >= total:
                return new

    def _learn(self, record: BlueprintRecord) -> int:
        mine = record.ir.mutation is not None and record.ir.mutation.proposer == PROPOSER
        new = self.history.remember(record.ir, proposed_by_karn=mine)
        for artifact in record.artifacts:
            if artifact.validation is not None:
                self.history.record_validation_report(artifact.validation)
        return int(new)

    def refresh_unresolved(self) -> list[str]:
        """Re-read Karn's unjudged children from Urza; returns those still unjudged."""
        for blueprint_id in self.history.unresolved_children()[: self.refresh_limit]:
            record = self.urza.blueprint(blueprint_id)
            self._learn(record)
            if record.artifacts and all(a.status is KernelStatus.FAILED for a in record.artifacts):
                self.history.mark_failed(blueprint_id)
        return self.history.unresolved_children()

    def allowance(self, unresolved: int) -> Allowance:
        """How many children may go now (zero when Urza's backlog cannot be read)."""
        try:
            backlog: PipelineBacklog | None = self.urza.backlog()
        except Exception as exc:  # an unreachable Urza must pause Karn, never crash its loop
            log.warning("cannot read Urza's backlog: %s", exc)
            backlog = None
        return self.pacing.allowance(backlog, unresolved)

    # --- what the outcomes say ---------------------------------------------------------------------------

    def arm_evidence(self) -> dict[ArmKey, Evidence]:
        """Summed evidence of every mutated blueprint's outcome, per (parent kind, operator)."""
        library = {e.blueprint_id: e for e in self.history.library()}
        found = self.history.outcomes()
        arms: dict[ArmKey, Evidence] = {}
        for entry in library.values():
            if entry.operator is None or entry.blueprint_id not in found:
                continue
            parent = library.get(entry.parent_id or "")
            kind = parent.kind if parent is not None else entry.kind
            arm = arms.setdefault((kind, entry.operator), Evidence())
            arm += evidence(found[entry.blueprint_id], self.weights)
        return arms

    def policy(self) -> ThompsonBandit:
        """The mutation policy as the stored outcomes make it now."""
        return ThompsonBandit(self.arm_evidence())

    def parents(self, parent_ids: Sequence[str] | None = None, layout: str | None = None,
                features: int | None = None) -> list[Parent]:
        """Validated blueprints of the library (optionally only ``parent_ids`` / one interface), with their record."""
        found = self.history.outcomes()
        wanted = set(parent_ids) if parent_ids is not None else None
        chosen = []
        for entry in self.history.library(layout=layout, features=features):
            outcome = found.get(entry.blueprint_id)
            if outcome is None or outcome.validated is not True:
                continue
            if wanted is not None and entry.blueprint_id not in wanted:
                continue
            ir = self.history.ir(entry.blueprint_id)
            if ir is not None:
                chosen.append(Parent(entry.blueprint_id, ir, evidence(outcome, self.weights),
                                     tested=bool(outcome.outcomes)))
        return chosen

    # --- a round -----------------------------------------------------------------------------------------

    def run_round(self, count: int | None = None, *, tags: tuple[str, ...] = (),
                  parent_ids: Sequence[str] | None = None, layout: str | None = None,
                  features: int | None = None) -> RoundReport:
        """Propose up to ``count`` children (default ``children_per_round``) within the pipeline's room."""
        with self._lock:
            report = self._round(self.children_per_round if count is None else count, tags, parent_ids, layout,
                                 features)
            self.last_round = report
            return report

    def _round(self, count: int, tags: tuple[str, ...], parent_ids: Sequence[str] | None, layout: str | None,
               features: int | None) -> RoundReport:
        self.sync_library()
        unresolved = self.refresh_unresolved()
        room = self.allowance(len(unresolved))
        report = RoundReport(allowance=room.children, reason=room.reason)
        wanted = min(count, room.children)
        parents = self.parents(parent_ids, layout, features)
        report.parents = len(parents)
        if not parents:
            report.reason = "no validated parent to mutate"
        if wanted <= 0 or not parents:
            return report
        library = {e.blueprint_id: e.vector for e in self.history.library(layout=layout, features=features)}
        result = self.architect.propose(parents, library, self.arm_evidence(), wanted, self.rng, tags)
        report.diversity, report.bonus_weight = result.diversity, result.bonus_weight
        report.refusals = dict(Counter(result.refusals))
        for proposal in result.proposals:
            child = proposal.child
            self.urza.submit_blueprint(child.ir)  # raises on refusal: the round stops, nothing half-written
            self.history.remember(child.ir, proposed_by_karn=True)
            report.submitted.append(Submitted(
                blueprint_id=child.blueprint_id, name=child.ir.name, parent_id=child.parent_id, operator=child.operator,
                generation=child.generation, detail=child.detail, novelty_bonus=proposal.novelty_bonus))
            log.info("child submitted", extra={"blueprint_id": child.blueprint_id, "parent_id": child.parent_id,
                                               "operator": child.operator, "generation": child.generation})
        return report
