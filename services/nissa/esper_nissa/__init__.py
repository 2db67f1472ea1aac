"""Esper nissa service: the platform's telemetry on the bus, exposed to Prometheus.

Nissa follows ``telemetry.system.state``, ``telemetry.health.summaries``, ``telemetry.narset.allocations`` and
``innovation.field_reports`` and keeps the latest picture of every training run, region and seed, so that a
run is visible in Prometheus and Grafana without anyone scraping the trainer. Torch-free.
"""

from .service import NissaService, create_service
from .settings import NissaSettings
from .store import TelemetryStore

__all__ = ["NissaService", "NissaSettings", "TelemetryStore", "create_service"]
