"""Removal over the bus: Tolaria asks Elesh, takes Emrakul's plans for its run, and reports every outcome.

At a boundary :meth:`RemovalLink.request_importance` stores the model's weights in the blob store (safetensors:
Elesh never unpickles) and publishes an :class:`~esper_contracts.ImportanceRequest` on
``analysis.importance.requests``. Plans for this run arrive on ``pruning.plans`` and wait in a queue until the
trainer's next safe boundary calls :meth:`RemovalLink.apply_pending`, which applies (or refuses) each one with
the :class:`~esper.tolaria.pruning.Compactor` and publishes its :class:`~esper_contracts.PruningOutcome` on
``pruning.outcomes``. Zones on ``control.protected_zones`` are not read here: Emrakul plans around them and Elesh
marks them, and a plan that names a zoned module is refused by the compactor against the zones it was given.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from esper_contracts import Envelope, ImportanceRequest, PruningOutcome, PruningPlan, Topic

from .pruning import Batch, Compactor

if TYPE_CHECKING:
    from esper_oona import Bus, Subscription
    from esper_storage import BlobStore

log = logging.getLogger(__name__)


class RemovalLink:
    """One trainer's link to Elesh and Emrakul (``subscription`` must be unique to the run)."""

    def __init__(self, bus: Bus, blobs: BlobStore, compactor: Compactor, *, subscription: str) -> None:
        self.bus = bus
        self.blobs = blobs
        self.compactor = compactor
        self._plans: queue.Queue[PruningPlan] = queue.Queue()
        self._subscription: Subscription = bus.subscribe(Topic.PRUNING_PLANS, subscription, self._on_plan,
                                                         initial_position="earliest")

    def _on_plan(self, envelope: Envelope[Any]) -> None:
        plan: PruningPlan = envelope.payload
        if plan.run_id == self.compactor.run_id:
            self._plans.put(plan)

    def request_importance(self, epoch: int, train_batches: Iterable[Batch]) -> ImportanceRequest:
        """Store the current weights and ask Elesh to score them."""
        key = f"checkpoints/{self.compactor.run_id}/{self.compactor.version}.safetensors"
        self.blobs.put(key, self.compactor.checkpoint_bytes())
        request = self.compactor.request(epoch, key, train_batches)
        self.bus.publish(Topic.IMPORTANCE_REQUESTS, request, key=request.run_id)
        self.bus.flush()
        return request

    def next_plan(self, timeout_s: float) -> PruningPlan | None:
        """The next plan for this run, waiting up to ``timeout_s``; None if none came."""
        try:
            return self._plans.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def apply(self, plan: PruningPlan, epoch: int) -> PruningOutcome:
        """Apply (or refuse) one plan at this safe boundary and publish its outcome."""
        outcome = self.compactor.apply(plan, epoch)
        self.bus.publish(Topic.PRUNING_OUTCOMES, outcome, key=outcome.run_id)
        self.bus.flush()
        log.info("pruning plan %s", "applied" if outcome.accepted else "refused",
                 extra={"plan_id": plan.plan_id, "reason": outcome.reason})
        return outcome

    def apply_pending(self, epoch: int) -> list[PruningOutcome]:
        """Apply every plan that has arrived, in arrival order."""
        done: list[PruningOutcome] = []
        while True:
            try:
                plan = self._plans.get_nowait()
            except queue.Empty:
                return done
            done.append(self.apply(plan, epoch))

    def close(self) -> None:
        """Stop taking plans."""
        self._subscription.close()
