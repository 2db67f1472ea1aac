"""The trainer side of the coordinator's REST API: register regions, send heartbeats, read assignments.

The request and response bodies are Leyline contracts (``esper_contracts.narset``), shared with the
coordinator, which serves them.

When no coordinator is configured, :class:`LocalCoordinator` plays its part in-process with a single
worker (a fresh one replaces it if it crashes) and no telemetry tree: fine for small models.
"""

from __future__ import annotations

from typing import Protocol

import httpx
from opentelemetry import propagate
from pydantic import BaseModel

from esper_contracts import Assignment, Heartbeat, RegionRegistration, WorkerAssignment, WorkerQuota


class CoordinatorLink(Protocol):
    """What the host needs from a coordinator, remote or local."""

    def register(self, registration: RegionRegistration) -> Assignment:
        """Bring regions to the pool; returns the map."""
        ...

    def heartbeat(self, beat: Heartbeat) -> Assignment:
        """Report a window; returns the (possibly changed) map."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class HttpCoordinator:
    """The coordinator service over REST, with the trainer's bearer token (operator role) when given.

    Every request carries the current trace context (W3C ``traceparent``), so the coordinator's span of a
    heartbeat sits in the trace of the boundary that sent it.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, client: httpx.Client | None = None,
                 token: str | None = None) -> None:
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        if token:
            self._client.headers["Authorization"] = f"Bearer {token}"

    def register(self, registration: RegionRegistration) -> Assignment:
        """POST /api/v1/regions."""
        return self._post("/api/v1/regions", registration)

    def heartbeat(self, beat: Heartbeat) -> Assignment:
        """POST /api/v1/heartbeat."""
        return self._post("/api/v1/heartbeat", beat)

    def _post(self, path: str, body: BaseModel) -> Assignment:
        headers = {"content-type": "application/json"}
        propagate.inject(headers)
        response = self._client.post(path, content=body.model_dump_json(), headers=headers)
        if response.status_code >= 400:
            raise RuntimeError(f"coordinator refused {path}: {response.status_code} {response.text[:500]}")
        return Assignment.model_validate_json(response.content)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class LocalCoordinator:
    """A one-worker pool kept in-process, for runs without a coordinator service."""

    def __init__(self) -> None:
        self._regions: dict[str, int] = {}
        self._serial = 0
        self._generation = 0

    def _worker(self) -> str:
        return f"local-{self._serial}"

    def register(self, registration: RegionRegistration) -> Assignment:
        """Every region goes to the single worker."""
        for spec in registration.regions:
            self._regions[spec.region_id] = spec.seed_count
        self._generation += 1
        return self._assignment()

    def heartbeat(self, beat: Heartbeat) -> Assignment:
        """A crash of the single worker hands everything to a fresh one."""
        if self._worker() in beat.crashed:
            self._serial += 1
            self._generation += 1
        return self._assignment()

    def _assignment(self) -> Assignment:
        quota = WorkerQuota(max_seeds=sum(self._regions.values()), max_regions=len(self._regions),
                            atp_per_cycle=0.0)
        return Assignment(generation=self._generation,
                          workers={self._worker(): WorkerAssignment(regions=sorted(self._regions), quota=quota)})

    def close(self) -> None:
        """Nothing to release."""
