"""The Tezzeret process: one compile worker on the ``compilation.jobs`` subscription of its hardware target.

A pool is several processes (replicas), not threads: Dynamo and Inductor compile one graph at a time per
process, and a crashed compiler takes only its own job down (the broker redelivers it). Each process
prefetches at most one job, so a long compile does not hold back work other replicas could take.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from pydantic import Field

from esper_contracts import Topic
from esper_oona import Bus, Subscription, connect
from esper_runtime import Service, ServiceSettings, load_settings
from esper_urza_client import UrzaClient

from .worker import CompileWorker, JobOutcome

log = logging.getLogger(__name__)

class TezzeretSettings(ServiceSettings):
    """Tezzeret's settings (``ESPER_*`` environment variables override the YAML file)."""

    service_name: str = "tezzeret"
    urza_url: str = Field(default="http://127.0.0.1:8000", description="base URL of Urza's REST API")
    urza_token: str | None = Field(default=None, description="bearer token with write access to Urza")
    hardware: str = Field(default="cpu", pattern=r"^[a-z0-9_]+$",
                          description="the hardware target this pool compiles for (jobs for others are skipped)")
    device: Literal["cpu", "cuda"] = "cpu"
    subscription: str | None = Field(default=None, description="default: tezzeret-<hardware>")
    max_redeliveries: int = Field(default=5, ge=0, description="redeliveries of a job whose handler raised")
    nack_delay_ms: int = Field(default=2000, ge=0)
    compile_threads: int = Field(default=1, ge=1, description="Inductor's parallel compile workers")
    urza_timeout_s: float = Field(default=60.0, gt=0)


class TezzeretService(Service):
    """Compilation forge: BlueprintIR -> compiled kernel artifacts stored in Urza."""

    _bus: Bus | None
    description = "Compiles BlueprintIRs into kernel artifacts (torch.export, AOTInductor) and stores them in Urza."

    def __init__(self, settings: TezzeretSettings) -> None:
        # Inductor reads this when it is first imported; one compile worker per process keeps replicas predictable.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(settings.compile_threads))
        super().__init__(settings)
        self.tz = settings
        self.urza = UrzaClient(settings.urza_url, token=settings.urza_token, timeout_s=settings.urza_timeout_s)
        self.jobs = Counter("esper_tezzeret_jobs", "Compilation jobs handled, by outcome", ["outcome", "pipeline"],
                            registry=self.registry)
        self.compile_seconds = Histogram("esper_tezzeret_compile_seconds", "Compile time per pipeline",
                                         ["pipeline"], registry=self.registry,
                                         buckets=(0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600, 1800))
        self.worker: CompileWorker | None = None
        self._subscription: Subscription | None = None
        self.add_health_check("consuming", lambda: self._subscription is not None and not self._subscription.closed)

    @property
    def bus(self) -> Bus:
        """The bus, with a receive queue of one: a busy worker must not sit on jobs others could compile."""
        if self._bus is None:
            self._bus = connect(self.settings.bus_url, producer_name=self.name, receiver_queue_size=1,
                                max_redeliveries=self.tz.max_redeliveries, nack_delay_ms=self.tz.nack_delay_ms)
        return self._bus

    def _observe(self, outcome: JobOutcome, pipeline: str) -> None:
        self.jobs.labels(outcome.outcome, pipeline).inc()
        if outcome.compile_time_s is not None:
            self.compile_seconds.labels(pipeline).observe(outcome.compile_time_s)

    def on_start(self) -> None:
        """Subscribe the worker to its hardware target's subscription."""
        self.worker = CompileWorker(self.bus, self.urza, hardware=self.tz.hardware, device=self.tz.device,
                                    observe=self._observe)
        name = self.tz.subscription or f"tezzeret-{self.tz.hardware}"
        self._subscription = self.bus.subscribe(Topic.COMPILATION_JOBS, name, self.worker.handle,
                                                initial_position="earliest")
        log.info("tezzeret ready", extra={"subscription": name, "hardware": self.tz.hardware,
                                          "urza_url": self.tz.urza_url})

    def on_stop(self) -> None:
        """Stop taking jobs (one in flight gets the shutdown timeout, else it is redelivered) and close Urza."""
        if self._subscription is not None:
            self._subscription.close(self.tz.shutdown_timeout_s)
        self.urza.close()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> TezzeretService:
    """Entry point of ``esper serve tezzeret``."""
    return TezzeretService(load_settings(TezzeretSettings, config_file, **overrides))
