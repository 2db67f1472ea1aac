"""Bodies of the coordinator's REST API (``/openapi.json`` publishes them).

What the trainer side sends and reads (registration, heartbeats, assignments) is a Leyline contract
(``esper_contracts.narset``); the views below are the coordinator's own read-only answers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from esper_contracts import (
    Assignment,
    Heartbeat,
    RegionRegistration,
    RegionSpec,
    WorkerAssignment,
    WorkerQuota,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


__all__ = ["Assignment", "Heartbeat", "PoolView", "RegionRegistration", "RegionSpec", "WorkerAssignment",
           "WorkerQuota", "WorkerView"]
