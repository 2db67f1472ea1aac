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

from pydantic import Field

from esper_contracts import CompilationJob, CompilationPipeline, Topic
from esper_runtime import JobHandler, JobService, JobSettings, load_settings
from esper_runtime.metrics import counter, histogram
from esper_urza_client import UrzaClient

from .worker import CompileWorker, JobOutcome

log = logging.getLogger(__name__)

class TezzeretSettings(JobSettings):
    """Tezzeret's settings (``ESPER_*`` environment variables override the YAML file)."""

    service_name: str = "tezzeret"
    urza_url: str = Field(default="http://127.0.0.1:8000", description="base URL of Urza's REST API")
    urza_token: str | None = Field(default=None,
                                   description="bearer token for Urza (operator role: it uploads binaries and results)")
    hardware: str = Field(default="cpu", pattern=r"^[a-z0-9_]+$",
                          description="the hardware target this pool compiles for (jobs for others are skipped)")
    device: Literal["cpu", "cuda"] = "cpu"
    compile_threads: int = Field(default=1, ge=1, description="Inductor's parallel compile workers")
    urza_timeout_s: float = Field(default=60.0, gt=0)

    def subscription_name(self) -> str:
        """``subscription`` when set, else ``tezzeret-<hardware>``: each hardware target is its own pool."""
        return self.subscription or f"tezzeret-{self.hardware}"


class TezzeretService(JobService[CompilationJob, JobOutcome]):
    """Compilation forge: BlueprintIR -> compiled kernel artifacts stored in Urza."""

    description = "Compiles BlueprintIRs into kernel artifacts (torch.export, AOTInductor) and stores them in Urza."
    jobs_topic = Topic.COMPILATION_JOBS
    settings: TezzeretSettings

    def __init__(self, settings: TezzeretSettings) -> None:
        # Inductor reads this when it is first imported; one compile worker per process keeps replicas predictable.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(settings.compile_threads))
        super().__init__(settings)
        self.urza = UrzaClient(settings.urza_url, token=settings.urza_token, timeout_s=settings.urza_timeout_s)
        self.jobs = counter(self.registry, "esper_tezzeret_jobs")
        self.compile_seconds = histogram(self.registry, "esper_tezzeret_compile_seconds")
        # Every compiled pipeline's series exists from the start at zero: a rate or increase over the first
        # compile then sees it rise (a series born already counting would show an increase of nothing).
        for pipeline in (CompilationPipeline.FAST, CompilationPipeline.STANDARD, CompilationPipeline.AGGRESSIVE):
            self.compile_seconds.labels(pipeline.value)
        self.worker: CompileWorker | None = None

    def job_handler(self) -> JobHandler[CompilationJob, JobOutcome]:
        """One compile worker for the settings' hardware target."""
        self.worker = CompileWorker(self.bus, self.urza, hardware=self.settings.hardware, device=self.settings.device)
        return self.worker.process

    def observe(self, job: CompilationJob, outcome: JobOutcome) -> None:
        """Count the job by outcome and pipeline; record the compile time."""
        pipeline = job.pipeline.value
        self.jobs.labels(outcome.outcome, pipeline).inc()
        if outcome.compile_time_s is not None:
            self.compile_seconds.labels(pipeline).observe(outcome.compile_time_s)

    def on_start(self) -> None:
        """Take jobs on the hardware target's subscription."""
        super().on_start()
        log.info("tezzeret ready", extra={"subscription": self.settings.subscription_name(),
                                          "hardware": self.settings.hardware, "urza_url": self.settings.urza_url})

    def on_stop(self) -> None:
        """Stop taking jobs (one in flight gets the shutdown timeout, else it is redelivered) and close Urza."""
        super().on_stop()
        self.urza.close()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> TezzeretService:
    """Entry point of ``esper serve tezzeret``."""
    return TezzeretService(load_settings(TezzeretSettings, config_file, **overrides))
