"""The Nissa process: the bus telemetry in, Prometheus's text format out on ``/metrics``.

Nissa subscribes (as ``settings.subscription``, from the next message on) to the topics the trainer and the
control plane report on, and answers every scrape from its :class:`~esper_nissa.store.TelemetryStore`. It
never answers back on the bus and never fails a message: anything the bus delivered has passed its contract,
so the handlers only record it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_contracts import Envelope, Topic
from esper_runtime import Service, load_settings

from .settings import NissaSettings
from .store import TelemetryStore

if TYPE_CHECKING:
    from esper_oona import Subscription

log = logging.getLogger(__name__)


class NissaService(Service):
    """Observability: the platform's bus telemetry as Prometheus metrics."""

    description = ("Nissa: follows the trainer's heartbeats, the health summaries, the Narset allocator's decisions "
                   "and the field reports on the bus, and exposes them on /metrics for Prometheus and Grafana.")

    def __init__(self, settings: NissaSettings) -> None:
        super().__init__(settings)
        self.settings: NissaSettings = settings
        self.store = TelemetryStore(settings.max_runs, settings.per_seed_metrics)
        self._subscriptions: list[Subscription] = []
        self.add_metrics_text(self.store.exposition)
        self.add_health_check("consuming", lambda: bool(self._subscriptions)
                              and not any(s.closed for s in self._subscriptions))
        self.add_health_view("telemetry", lambda: {"runs": self.store.runs, "seeds": self.store.seed_count()})

    def on_start(self) -> None:
        """Follow every telemetry topic."""
        store, bus, name = self.store, self.bus, self.settings.subscription
        self._subscriptions = [
            bus.subscribe(Topic.SYSTEM_STATE, name, self._recording(store.on_packet)),
            bus.subscribe(Topic.HEALTH_SUMMARIES, name, self._recording(store.on_health_summary)),
            bus.subscribe(Topic.NARSET_ALLOCATIONS, name, self._recording(store.on_allocation)),
            bus.subscribe(Topic.FIELD_REPORTS, name, self._recording(store.on_field_report)),
        ]
        log.info("nissa ready", extra={"subscription": name})

    def _recording(self, record: Callable[[Any], None]) -> Callable[[Envelope[Any]], None]:
        """A bus handler that counts the message by topic and hands its payload to ``record``."""
        def handle(envelope: Envelope[Any]) -> None:
            self.store.count_message(envelope.topic)
            record(envelope.payload)

        return handle

    def on_stop(self) -> None:
        """Stop following (the base class closes the bus)."""
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions = []


def create_service(config_file: str | Path | None = None, **overrides: Any) -> NissaService:
    """Entry point of ``esper serve nissa``."""
    return NissaService(load_settings(NissaSettings, config_file, **overrides))
