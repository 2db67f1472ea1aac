"""The Elesh process: importance requests in, importance reports out.

Each :class:`~esper_contracts.ImportanceRequest` on ``analysis.importance.requests`` names a safetensors state
dict in the blob store and carries the trainer's unit statistics. Elesh reads the bytes (safetensors only:
nothing stored is ever unpickled), scores every unit under every criterion the inputs allow
(:func:`esper_pruning.importance.score_state`), marks the units of modules inside a protected zone or its ring
as diagnostic-only (zones from ``control.protected_zones``), and publishes the
:class:`~esper_contracts.ImportanceReport` on ``analysis.importance``, keyed by run.

A request that can never be scored (its checkpoint missing or not safetensors, a tensor it names absent,
statistics that do not fit) is dead-lettered with the reason; a malformed message is dead-lettered by Oona.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import Field
from safetensors import SafetensorError

from esper_contracts import Envelope, ImportanceReport, ImportanceRequest, ProtectedZone, Topic
from esper_pruning.importance import ScoringError, score_state
from esper_pruning.model import load_state
from esper_runtime import JobHandler, JobService, JobSettings, load_settings
from esper_runtime.jobs import PermanentJobError
from esper_runtime.metrics import counter
from esper_storage import BlobNotFoundError, BlobStore, open_blob_store

log = logging.getLogger(__name__)


class EleshSettings(JobSettings):
    """Elesh's settings (``ESPER_*`` environment variables override the YAML file)."""

    service_name: str = "elesh"
    blob_url: str | None = Field(default=None, description="the blob store trainers write checkpoints to: "
                                 "file:///... or s3://bucket/prefix?endpoint_url=...; default file:///<data_dir>/blobs")
    data_dir: Path = Field(default=Path("~/.esper/elesh"), description="where the default blob folder lives")
    zones_subscription: str | None = Field(default=None, description="subscription on control.protected_zones "
                                           "(default: elesh-zones-<port>: every replica needs every zone)")


class Scorer:
    """Scores one request and publishes its report; keeps the zones Tamiyo has published."""

    def __init__(self, bus: Any, blobs: BlobStore) -> None:
        self.bus = bus
        self.blobs = blobs
        self._zones: dict[str, ProtectedZone] = {}
        self._lock = threading.Lock()

    def on_zone(self, envelope: Envelope[Any]) -> None:
        """Keep (or replace) one protected zone."""
        zone: ProtectedZone = envelope.payload
        with self._lock:
            self._zones[zone.zone_id] = zone

    def zones(self) -> list[ProtectedZone]:
        """The zones known now."""
        with self._lock:
            return list(self._zones.values())

    def process(self, request: ImportanceRequest, parent: Envelope[Any] | None = None) -> ImportanceReport:
        """Score the checkpoint ``request`` names and publish the report (PermanentJobError when it cannot be)."""
        try:
            state = load_state(self.blobs.get(request.checkpoint_key))
        except BlobNotFoundError as exc:
            raise PermanentJobError(f"checkpoint {request.checkpoint_key!r} is not in the blob store") from exc
        except (SafetensorError, ValueError) as exc:
            raise PermanentJobError(f"checkpoint {request.checkpoint_key!r} is not a safetensors file: {exc}") from exc
        try:
            report = score_state(state, request.modules, request.statistics, zones=self.zones(),
                                 epoch=request.epoch, checkpoint_id=request.checkpoint_id, run_id=request.run_id,
                                 region_id=request.region_id, request_id=request.job_id)
        except ScoringError as exc:
            raise PermanentJobError(str(exc)) from exc
        self.bus.publish(Topic.IMPORTANCE, report, key=report.run_id, parent=parent)
        log.info("importance scored", extra={"run_id": request.run_id, "checkpoint_id": request.checkpoint_id,
                                              "units": len(report.scores), "primary": report.primary.value})
        return report


class EleshService(JobService[ImportanceRequest, ImportanceReport]):
    """Importance analysis of the host's units at checkpoint boundaries."""

    description = "Scores the importance of neurons, channels, heads and seeds of stored checkpoints."
    jobs_topic = Topic.IMPORTANCE_REQUESTS
    settings: EleshSettings

    def __init__(self, settings: EleshSettings) -> None:
        super().__init__(settings)
        self.blobs = open_blob_store(settings.blob_url or (settings.data_dir.expanduser().resolve() / "blobs").as_uri())
        self.scorer = Scorer(self.bus, self.blobs)
        self.reports = counter(self.registry, "esper_elesh_reports")

    def job_handler(self) -> JobHandler[ImportanceRequest, ImportanceReport]:
        """Each request: read, score, publish."""
        return self.scorer.process

    def observe(self, job: ImportanceRequest, result: ImportanceReport) -> None:
        """Count the report by its primary criterion."""
        self.reports.labels(result.primary.value).inc()

    def on_start(self) -> None:
        """Follow the protected zones (from the oldest held), then take requests."""
        name = self.settings.zones_subscription or f"elesh-zones-{self.settings.port}"
        self.bus.subscribe(Topic.PROTECTED_ZONES, name, self.scorer.on_zone, initial_position="earliest")
        super().on_start()

    def on_stop(self) -> None:
        """Stop taking requests; close the blob store."""
        super().on_stop()
        self.blobs.close()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> EleshService:
    """Entry point of ``esper serve elesh``."""
    return EleshService(load_settings(EleshSettings, config_file, **overrides))
