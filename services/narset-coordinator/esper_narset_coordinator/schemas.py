"""Bodies of the coordinator's REST API (``/openapi.json`` publishes them).

The trainer-side client keeps its own copy of these shapes (services may not import each other);
``tests/integration/test_control_schema.py`` checks the two stay the same JSON. Health reports travel
as the Leyline contract itself.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from esper_contracts import HealthSummaryReport


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionSpec(_Body):
    """A region (Kasmina layer) and how many seeds it holds."""

    region_id: str = Field(min_length=1)
    seed_count: int = Field(ge=0)


class RegionRegistration(_Body):
    """Regions a trainer process brings to the pool."""

    regions: list[RegionSpec]


class Heartbeat(_Body):
    """One window from a trainer process: which workers are alive, which crashed, their region reports."""

    window: int = Field(ge=0)
    epoch: int = Field(ge=0)
    workers: list[str] = Field(default_factory=list)
    crashed: list[str] = Field(default_factory=list)
    reports: list[HealthSummaryReport] = Field(default_factory=list)
    complete: bool = Field(default=True, description="Last heartbeat of the window: the coordinator may fold it")


class WorkerQuota(_Body):
    """What one worker may carry and spend."""

    max_seeds: int
    max_regions: int
    atp_per_cycle: float


class WorkerAssignment(_Body):
    """One worker's regions and quota."""

    regions: list[str]
    quota: WorkerQuota


class Assignment(_Body):
    """The whole region -> worker map; ``generation`` grows with every change."""

    generation: int
    workers: dict[str, WorkerAssignment]


class WorkerView(_Body):
    """A worker as the coordinator sees it (GET /api/v1/workers)."""

    worker_id: str
    regions: list[str]
    load: int
    seconds_since_heartbeat: float
    quota: WorkerQuota


class PoolView(_Body):
    """The pool: live workers, the ones declared dead, and the last windows' telemetry fan-in."""

    workers: list[WorkerView]
    dead: list[str]
    generation: int
    windows_folded: int
    last_tree_levels: list[int]
