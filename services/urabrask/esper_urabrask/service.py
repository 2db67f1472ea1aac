"""The Urabrask process: one validation worker on the ``validation.jobs`` subscription of its hardware target.

Replicas share the subscription; each measures one kernel at a time (concurrent benchmarks on one
machine would disturb each other's timings), in a sandbox child process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from esper_contracts import Topic, ValidationJob
from esper_runtime import JobHandler, JobService, JobSettings, load_settings
from esper_runtime.metrics import counter, histogram
from esper_urza_client import UrzaClient, UrzaError

from .characterizer import Characterizer
from .profiler import ProfileSettings
from .sandbox import KernelSandbox
from .worker import ValidateWorker, ValidationOutcome

log = logging.getLogger(__name__)

class UrabraskSettings(JobSettings):
    """Urabrask's settings (``ESPER_*`` environment variables override the YAML file)."""

    service_name: str = "urabrask"
    urza_url: str = Field(default="http://127.0.0.1:8000", description="base URL of Urza's REST API")
    urza_token: str | None = Field(default=None, description="bearer token for Urza (viewer role: it fetches binaries)")
    hardware: str = Field(default="cpu", pattern=r"^[a-z0-9_]+$", description="the hardware target measured here")
    device: Literal["cpu", "cuda"] = "cpu"
    sandbox: bool = Field(default=True, description="measure in a child process (a crashing kernel is rejected)")
    sandbox_timeout_s: float = Field(default=600.0, gt=0)
    min_population: int = Field(default=20, ge=1, description="kernels per hardware before percentile tags")
    target_cv: float = Field(default=0.02, gt=0, description="the profiler stops once rounds agree this well")
    budget_s: float = Field(default=8.0, gt=0, description="time limit of one kernel's timing loop")

    def subscription_name(self) -> str:
        """``subscription`` when set, else ``urabrask-<hardware>``: each hardware target is its own pool."""
        return self.subscription or f"urabrask-{self.hardware}"


class UrabraskService(JobService[ValidationJob, ValidationOutcome]):
    """Characterization engine: gatekeeper, profiler and tags for every compiled artifact."""

    description = "Validates, benchmarks and tags compiled kernel artifacts on the hardware they will run on."
    jobs_topic = Topic.VALIDATION_JOBS
    settings: UrabraskSettings

    def __init__(self, settings: UrabraskSettings) -> None:
        super().__init__(settings)
        self.urza = UrzaClient(settings.urza_url, token=settings.urza_token)
        self.sandbox = KernelSandbox(isolated=settings.sandbox, timeout_s=settings.sandbox_timeout_s)
        self.characterizer = Characterizer(min_population=settings.min_population)
        self.verdicts = counter(self.registry, "esper_urabrask_jobs")
        self.latency = histogram(self.registry, "esper_urabrask_latency_ms")
        self.worker: ValidateWorker | None = None
        self.seeded = 0  # validated kernels read back from Urza at start

    def job_handler(self) -> JobHandler[ValidationJob, ValidationOutcome]:
        """A validation worker whose distributions are seeded from Urza's earlier reports (when reachable)."""
        s = self.settings
        profile = ProfileSettings(target_cv=s.target_cv, budget_s=s.budget_s)
        self.worker = ValidateWorker(self.bus, self.urza, hardware=s.hardware, device=s.device,
                                     sandbox=self.sandbox, characterizer=self.characterizer, profile=profile)
        try:
            self.seeded = self.worker.seed_population()
        except UrzaError as exc:  # Urza may start after us: tags fall back to rules until the population regrows
            log.warning("could not read earlier reports from Urza: %s", exc)
            self.seeded = 0
        return self.worker.process

    def observe(self, job: ValidationJob, outcome: ValidationOutcome) -> None:
        """Count the verdict; record the latency of a validated kernel."""
        self.verdicts.labels(outcome.outcome).inc()
        if outcome.report is not None and outcome.report.passed:
            self.latency.observe(outcome.report.latency_ms_p50)

    def on_start(self) -> None:
        """Seed the distributions from Urza (when reachable) and take jobs."""
        super().on_start()
        log.info("urabrask ready", extra={"subscription": self.settings.subscription_name(),
                                          "hardware": self.settings.hardware, "population": self.seeded})

    def on_stop(self) -> None:
        """Stop taking jobs, stop the sandbox, close the Urza client."""
        super().on_stop()
        self.sandbox.close()
        self.urza.close()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> UrabraskService:
    """Entry point of ``esper serve urabrask``."""
    return UrabraskService(load_settings(UrabraskSettings, config_file, **overrides))
