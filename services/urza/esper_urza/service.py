"""The Urza process: storage by URL, migrations and the seed library at start-up, REST API, bus consumers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from esper_contracts import KernelStatus, Topic
from esper_runtime import Service, load_settings
from esper_runtime.metrics import StateCollector, family, gauge
from esper_storage import open_blob_store, open_database, upgrade

from .api import install_api
from .catalog import Catalog
from .consumers import UrzaConsumers
from .context import UrzaContext
from .ledger import Ledger
from .library import library_blueprints
from .publisher import OutboxDispatcher
from .settings import UrzaSettings
from .store import outbox

log = logging.getLogger(__name__)

MIGRATIONS = "esper_urza.migrations"


class UrzaService(Service):
    """Central asset hub: blueprint IRs, compiled kernel artifacts, validation reports and lineage."""

    description = ("Central asset hub of Esper: blueprint IRs, compiled kernel artifacts, validation reports and "
                   "lineage, on SQL + blob storage. Tamiyo finds kernels with POST /api/v1/kernels/query.")

    def __init__(self, settings: UrzaSettings) -> None:
        super().__init__(settings)
        self.urza_settings = settings
        self.db = open_database(settings.resolved_database_url)
        self.blobs = open_blob_store(settings.resolved_blob_url)
        self.dispatcher = OutboxDispatcher(self.db, lambda: self.bus)
        ctx = UrzaContext(self.db, self.blobs, settings, after_commit=self.dispatcher.wake)
        self.catalog = Catalog(ctx)
        self.ledger = Ledger(ctx)
        self.consumers = UrzaConsumers(self.catalog, self.ledger)
        self._subscriptions: list[Any] = []
        install_api(self.app, self.catalog, self.ledger, settings)
        self.add_health_check("database", self.db.ping)
        gauge(self.registry, "esper_urza_outbox_backlog").set_function(lambda: float(self.dispatcher.backlog()))
        gauge(self.registry, "esper_urza_outbox_sent").set_function(lambda: float(self.dispatcher.sent))
        self.registry.register(StateCollector(self._queue_families))

    def _queue_families(self) -> list[Metric]:
        """The pipeline's queues and the artifacts by status, read from the store at scrape time.

        A store that cannot answer leaves these families out of the scrape (the health check reports it);
        the rest of /metrics still answers.
        """
        try:
            backlog = self.catalog.backlog()
            counts = self.catalog.artifact_counts()
        except Exception:
            log.warning("metrics: the store did not answer; queue metrics left out of this scrape", exc_info=True)
            return []
        queues, by_status = family("esper_urza_pipeline_backlog"), family("esper_urza_artifacts")
        queues.add_metric(["compilation"], backlog.compilation_pending)
        queues.add_metric(["validation"], backlog.validation_pending)
        for status in KernelStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        return [queues, by_status]

    def body_limit(self, scope: Any) -> int:
        """Kernel binaries (``PUT .../binary``) get their own, larger limit; every other body is JSON."""
        if scope["method"] == "PUT" and str(scope.get("path", "")).endswith("/binary"):
            return self.urza_settings.max_binary_bytes
        return self.urza_settings.max_body_bytes

    def on_start(self) -> None:
        """Migrate, seed the library, send what an earlier run left unsent, then start consuming."""
        s = self.urza_settings
        upgrade(self.db, MIGRATIONS)
        if s.seed_library:
            new = self.catalog.seed(library_blueprints())
            log.info("seed library registered", extra={"new_blueprints": new})
        if not self.bus.keeps_earlier_messages:
            # A new in-process bus: jobs an earlier run published on its own were lost with its process.
            with self.db.write() as conn:
                again = outbox.requeue_published(conn, [Topic.COMPILATION_JOBS, Topic.VALIDATION_JOBS])
            if again:
                log.info("in-process bus: sending earlier jobs again", extra={"jobs": again})
        if s.consume:
            self._subscriptions = self.consumers.attach(
                self.bus, s.subscription, max_redeliveries=s.max_redeliveries, nack_delay_ms=s.nack_delay_ms)
        self.dispatcher.start(s.outbox_interval_s)  # sends what is pending at once, then on every wake and tick
        log.info("urza ready", extra={"database": self.db.url, "blobs": self.blobs.url})

    def on_stop(self) -> None:
        """Stop consuming and dispatching, then release storage (the base class closes the bus)."""
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions = []
        self.dispatcher.stop()
        self.blobs.close()
        self.db.dispose()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> UrzaService:
    """Entry point of ``esper serve urza``: settings from the YAML file, overrides, then ``ESPER_*`` variables."""
    return UrzaService(load_settings(UrzaSettings, config_file, **overrides))
