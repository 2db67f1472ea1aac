"""One Urabrask worker: ValidationJob in, UrabraskValidationReport out.

For each job: fetch the artifact's record and bytes from Urza (sha256-checked against the record), run
the gauntlet in the sandbox (gatekeeper, then profiler), tag the result against this hardware's
population, and publish the report on ``validation.reports`` — Urza marks the artifact VALIDATED or
REJECTED. :meth:`ValidateWorker.process` is the handler of the service's job worker
(``esper_runtime.JobWorker``), which acknowledges the job after the report is flushed to the broker; a
worker killed earlier leaves it to be redelivered. A repeat of a job whose artifact is already VALIDATED
or REJECTED is acknowledged without measuring again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from esper_contracts import (
    CompiledKernelArtifact,
    Envelope,
    KernelQuery,
    KernelStatus,
    Topic,
    UrabraskValidationReport,
    ValidationJob,
)
from esper_kernels import KernelNotFoundError, sha256_hex
from esper_urza_client import UrzaClient

from .characterizer import Characterizer
from .profiler import ProfileSettings
from .sandbox import KernelSandbox, SandboxCrash, SandboxTimeout

if TYPE_CHECKING:
    from esper_oona import Bus

log = logging.getLogger(__name__)

DONE = frozenset({KernelStatus.VALIDATED, KernelStatus.REJECTED})


@dataclass(frozen=True)
class ValidationOutcome:
    """What one job came to, for logs, metrics and tests."""

    artifact_id: str
    outcome: str  # validated | rejected | repeat | skipped | unknown
    report: UrabraskValidationReport | None = None


class ValidateWorker:
    """Handles ``validation.jobs`` for one hardware target."""

    def __init__(self, bus: Bus, urza: UrzaClient, *, hardware: str, device: str = "cpu",
                 sandbox: KernelSandbox | None = None, characterizer: Characterizer | None = None,
                 profile: ProfileSettings | None = None) -> None:
        self.bus = bus
        self.urza = urza
        self.hardware = hardware
        self.device = device
        self.sandbox = sandbox or KernelSandbox()
        self.characterizer = characterizer or Characterizer()
        self.profile = profile or ProfileSettings()

    def seed_population(self, limit: int = 1000) -> int:
        """Rebuild this hardware's distributions from the reports Urza holds; returns how many were read."""
        result = self.urza.query(KernelQuery(hardware=self.hardware, status=KernelStatus.VALIDATED, limit=limit,
                                             sort_by="created_at"))
        n = 0
        for art in result.artifacts:
            v = art.validation
            if v is not None and v.passed and art.hardware == self.hardware:
                self.characterizer.record(self.hardware, art.artifact_id, v.latency_ms_mean, v.memory_mb_peak,
                                          v.precision_drift_vs_fp32)
                n += 1
        return n

    def process(self, job: ValidationJob, parent: Envelope[Any] | None = None) -> ValidationOutcome:
        """Validate one artifact and publish its report (``parent``: the job's envelope, for tracing).

        Returning means the job is done (the job worker then flushes the report and acknowledges it);
        raising hands it back for redelivery.
        """
        ctx = {"job_id": job.job_id, "artifact_id": job.artifact_id}
        if job.hardware != self.hardware:
            log.info("job for other hardware skipped", extra={**ctx, "hardware": job.hardware})
            return ValidationOutcome(job.artifact_id, "skipped")
        try:
            record = self.urza.kernel(job.artifact_id)
        except KernelNotFoundError:
            log.error("validation job for an artifact Urza does not know; dropped", extra=ctx)
            return ValidationOutcome(job.artifact_id, "unknown")
        art = record.artifact
        if art.status in DONE:
            log.info("artifact already judged", extra={**ctx, "status": art.status.value})
            return ValidationOutcome(job.artifact_id, "repeat")
        report = self._judge(art, job)
        self.bus.publish(Topic.VALIDATION_REPORTS, report, key=report.artifact_id, parent=parent)
        log.info("artifact validated" if report.passed else "artifact rejected",
                 extra={**ctx, "tags": report.tags, "reason": report.rejection_reason,
                        "latency_ms_p50": round(report.latency_ms_p50, 4), "cv": round(report.measurement_cv, 4)})
        return ValidationOutcome(job.artifact_id, "validated" if report.passed else "rejected", report)

    def _reject(self, art: CompiledKernelArtifact, reason: str) -> UrabraskValidationReport:
        return UrabraskValidationReport(artifact_id=art.artifact_id, hardware=self.hardware, passed=False,
                                        rejection_reason=reason[:4000])

    def _judge(self, art: CompiledKernelArtifact, job: ValidationJob) -> UrabraskValidationReport:
        if art.sha256 is None:
            return self._reject(art, f"artifact is {art.status.value} with no recorded binary")
        data, _sent = self.urza.binary(art.artifact_id)
        actual = sha256_hex(data)
        if actual != art.sha256:
            return self._reject(art, f"stored bytes hash to {actual}, the record says {art.sha256}")
        try:
            ev = self.sandbox.evaluate(art, data, job.tolerance, self.device, self.profile)
        except (SandboxCrash, SandboxTimeout) as exc:
            return self._reject(art, f"gatekeeper: {exc}")
        if not ev.passed:
            return self._reject(art, f"gatekeeper: {ev.reason}")
        traits = self.characterizer.characterize(self.hardware, art.artifact_id, ev.latency_ms_mean,
                                                 ev.memory_mb_peak, ev.drift, ev.stable)
        return UrabraskValidationReport(
            artifact_id=art.artifact_id, hardware=self.hardware, passed=True,
            latency_ms_mean=ev.latency_ms_mean, latency_ms_p50=ev.latency_ms_p50, latency_ms_p99=ev.latency_ms_p99,
            throughput_ops_per_sec=ev.throughput_per_s, memory_mb_peak=ev.memory_mb_peak,
            precision_drift_vs_fp32=ev.drift, measurement_cv=ev.cv, repeats=ev.calls, tags=traits.tags,
        )
