"""Narset's coordinator protocol: what a trainer process registers, reports and is assigned.

The coordinator serves these bodies over REST and the trainer-side workers send and read them; both
import them from here, so the two sides cannot drift apart.
"""

from __future__ import annotations

from pydantic import Field

from .base import (
    Identifier,
    NonNegativeInt,
    StrictModel,
    Text,
)
from .control import HealthSummaryReport


class RegionSpec(StrictModel):
    """A region (Kasmina layer) and how many seeds it holds."""

    region_id: Identifier
    seed_count: NonNegativeInt


class RegionRegistration(StrictModel):
    """Regions a trainer process brings to the pool."""

    regions: list[RegionSpec]


class Heartbeat(StrictModel):
    """One window from a trainer process: which workers are alive, which crashed, their region reports."""

    window: NonNegativeInt
    epoch: NonNegativeInt
    workers: list[Text] = Field(default_factory=list)
    crashed: list[Text] = Field(default_factory=list)
    reports: list[HealthSummaryReport] = Field(default_factory=list)
    complete: bool = Field(default=True, description="Last heartbeat of the window: the coordinator may fold it")


class WorkerQuota(StrictModel):
    """What one worker may carry and spend."""

    max_seeds: int
    max_regions: int
    atp_per_cycle: float


class WorkerAssignment(StrictModel):
    """One worker's regions and quota."""

    regions: list[Text]
    quota: WorkerQuota


class Assignment(StrictModel):
    """The whole region -> worker map; ``generation`` grows with every change."""

    generation: int
    workers: dict[str, WorkerAssignment]

    def owner_of(self) -> dict[str, str]:
        """region id -> worker id."""
        return {r: wid for wid, w in self.workers.items() for r in w.regions}
