"""Backpressure: how many children Karn may submit now without flooding Tezzeret and Urabrask.

Two limits, both counted before a round: the work waiting in Urza's pipeline (compilation jobs not
finished plus artifacts not yet judged, as Urza reports it), and Karn's own children the pipeline has not
judged yet. A child adds at least one compilation job, so the allowance in children never exceeds the free
room in jobs. When Urza cannot be asked, the allowance is zero: Karn waits rather than guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper_contracts import PipelineBacklog


@dataclass(frozen=True)
class Allowance:
    """How many children may go now, and why not more."""

    children: int
    reason: str


@dataclass(frozen=True)
class Pacing:
    """The two limits: work waiting in Urza's pipeline, and Karn's own children not yet judged."""

    max_pipeline_backlog: int = 8
    max_unresolved_children: int = 8

    def allowance(self, backlog: PipelineBacklog | None, unresolved: int) -> Allowance:
        """The room left under both limits (``backlog`` None: Urza could not be asked)."""
        if backlog is None:
            return Allowance(0, "Urza's backlog is unknown (unreachable): waiting")
        room_pipeline = self.max_pipeline_backlog - backlog.total
        room_children = self.max_unresolved_children - unresolved
        if room_pipeline <= 0:
            return Allowance(0, f"pipeline full: {backlog.compilation_pending} compilations and "
                                f"{backlog.validation_pending} validations waiting (limit {self.max_pipeline_backlog})")
        if room_children <= 0:
            return Allowance(0, f"{unresolved} of Karn's children not judged yet (limit "
                                f"{self.max_unresolved_children})")
        if room_pipeline <= room_children:
            return Allowance(room_pipeline, f"pipeline room: {backlog.total} of {self.max_pipeline_backlog} jobs busy")
        return Allowance(room_children, f"{unresolved} of {self.max_unresolved_children} children awaiting judgement")
