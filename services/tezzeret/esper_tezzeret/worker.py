"""One Tezzeret worker: take a CompilationJob, make sure its artifact exists in Urza exactly once, report it.

The handler is written so that any number of workers, crashes and redeliveries converge on one artifact
per id:

1. The artifact id is computed before compiling (it is deterministic). If Urza already records the
   artifact as compiled (or beyond), or as FAILED, the job is a repeat: acknowledge it and stop.
2. If Urza already holds *bytes* for the id (a worker stored them and died before reporting), adopt
   them: report COMPILED with their sha256. No second compile, no second artifact.
3. Otherwise report COMPILING, compile (up to ``max_attempts`` times for compiler errors; a static
   validation error is final at once), upload the bytes, and report COMPILED. The upload is the
   arbiter between racing workers: Urza stores the first bytes and answers 409 to different ones, and
   AOTInductor packages are not byte-identical from run to run, so the loser adopts the stored blob
   (fetching its digest) instead of reporting its own.
4. A compile that keeps failing is reported FAILED with the compiler's message, and the job is
   acknowledged: it is not retried forever.

:meth:`CompileWorker.process` is the handler of the service's job worker (``esper_runtime.JobWorker``),
which acknowledges the job only after it returns and the results are flushed to the bus, i.e. after the
bytes are stored and the result is on the broker. A worker killed at any point before that leaves the job
unacknowledged, and the broker hands it to the next worker, which resumes at step 1 or 2. Infrastructure
errors (Urza down) raise, so the bus redelivers the job later and dead-letters it after its redelivery limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from esper_contracts import ArtifactId, CompilationJob, CompiledKernelArtifact, Envelope, KernelStatus, Topic
from esper_kernels import KernelNotFoundError
from esper_urza_client import BinaryConflictError, UrzaClient

from .pipelines import CompiledOutput, CompileError, StaticValidationError, compile_artifact, plan_artifact_id

if TYPE_CHECKING:
    from esper_oona import Bus

log = logging.getLogger(__name__)

S = KernelStatus
#: Statuses after which a job for the artifact has nothing left to do.
FINISHED = frozenset({S.COMPILED, S.VALIDATING, S.VALIDATED, S.REJECTED, S.FAILED})
_MAX_ERROR = 19000

Compiler = Callable[..., CompiledOutput]


@dataclass(frozen=True)
class JobOutcome:
    """What one job came to, for logs, metrics and tests."""

    artifact_id: str
    outcome: str  # compiled | adopted | repeat | failed | skipped | invalid
    status: KernelStatus | None
    compile_time_s: float | None = None
    attempts: int = 0


class CompileWorker:
    """Handles ``compilation.jobs`` for one hardware target; publish results on ``compilation.results``."""

    def __init__(self, bus: Bus, urza: UrzaClient, *, hardware: str, device: str = "cpu",
                 compiler: Compiler = compile_artifact) -> None:
        self.bus = bus
        self.urza = urza
        self.hardware = hardware
        self.device = device
        self.compiler = compiler

    def process(self, job: CompilationJob, parent: Envelope[Any] | None = None) -> JobOutcome:
        """Run steps 1-4 of the module docstring for ``job`` (``parent``: the job's envelope, for tracing).

        Returning means the job is done (the job worker then flushes the results and acknowledges it);
        raising hands it back for redelivery.
        """
        if job.hardware != self.hardware:
            # Another pool's job: each hardware target has its own subscription, so acknowledging it here
            # takes nothing away from the pool that compiles for that target.
            log.info("job for other hardware skipped", extra={"job_id": job.job_id, "hardware": job.hardware})
            return JobOutcome("", "skipped", None)
        if job.blueprint_id != job.ir.ir_hash():
            # No artifact id can satisfy both: Urza checks ids against blueprint_id, the bytes follow the IR.
            log.error("job's blueprint_id is not its IR's hash; dropped",
                      extra={"job_id": job.job_id, "blueprint_id": job.blueprint_id, "ir_hash": job.ir.ir_hash()})
            return JobOutcome("", "invalid", None)
        aid = plan_artifact_id(job.ir, job.pipeline, self.hardware, job.input_shape, self.device)
        ctx = {"job_id": job.job_id, "artifact_id": aid, "pipeline": job.pipeline.value}
        try:
            record = self.urza.kernel(aid)
        except KernelNotFoundError:
            record = None
        if record is not None and record.artifact.status in FINISHED:
            log.info("job already done", extra={**ctx, "status": record.artifact.status.value})
            return JobOutcome(aid, "repeat", record.artifact.status)
        stored = record.binary_sha256 if record is not None else self.urza.binary_sha256(aid)
        if stored is not None:
            log.info("adopting bytes already stored for this artifact", extra={**ctx, "sha256": stored})
            self._publish(self._result(job, aid, S.COMPILED, sha256=stored), parent)
            return JobOutcome(aid, "adopted", S.COMPILED)

        self._publish(self._result(job, aid, S.COMPILING), parent)
        output, error, attempts = self._compile(job, ctx)
        if output is None:
            log.error("compile failed; reporting FAILED", extra={**ctx, "attempts": attempts, "error": error[:500]})
            self._publish(self._result(job, aid, S.FAILED, error=error), parent)
            return JobOutcome(aid, "failed", S.FAILED, attempts=attempts)
        if output.artifact_id != aid:  # the planner and the compiler must agree, or ids stop being deterministic
            raise RuntimeError(f"compiled artifact id {output.artifact_id} differs from the planned {aid}")
        sha256, outcome = output.sha256, "compiled"
        try:
            self.urza.put_binary(aid, output.blob, output.sha256)
        except BinaryConflictError:
            winner = self.urza.binary_sha256(aid)
            if winner is None:
                raise  # a conflict with nothing stored cannot be resolved here: retry the job later
            log.info("another worker stored this artifact first; adopting its bytes",
                     extra={**ctx, "ours": output.sha256, "stored": winner})
            sha256, outcome = winner, "adopted"
        self._publish(self._result(job, aid, S.COMPILED, sha256=sha256, compile_time_s=output.compile_time_s,
                                   size_bytes=len(output.blob) if sha256 == output.sha256 else None), parent)
        log.info("artifact compiled", extra={**ctx, "outcome": outcome, "size_bytes": len(output.blob),
                                             "compile_time_s": round(output.compile_time_s, 3)})
        return JobOutcome(aid, outcome, S.COMPILED, output.compile_time_s, attempts)

    def _compile(self, job: CompilationJob, ctx: dict[str, Any]) -> tuple[CompiledOutput | None, str, int]:
        error = ""
        for attempt in range(1, job.max_attempts + 1):
            t0 = time.perf_counter()
            try:
                return (self.compiler(job.ir, job.pipeline, self.hardware, job.input_shape, self.device), "",
                        attempt)
            except StaticValidationError as exc:
                return None, f"static validation failed: {exc}", attempt
            except CompileError as exc:
                error = str(exc)
                log.warning("compile attempt failed", extra={**ctx, "attempt": attempt,
                                                              "seconds": round(time.perf_counter() - t0, 2),
                                                              "error": error[:300]})
        return None, f"{error} (after {job.max_attempts} attempts)", job.max_attempts

    def _result(self, job: CompilationJob, aid: str, status: KernelStatus, *, sha256: str | None = None,
                compile_time_s: float | None = None, size_bytes: int | None = None,
                error: str | None = None) -> CompiledKernelArtifact:
        return CompiledKernelArtifact(
            artifact_id=aid, blueprint_id=job.blueprint_id, hardware=self.hardware, pipeline=job.pipeline,
            toolchain_hash=ArtifactId.parse(aid).toolchain_hash, status=status, input_shape=job.input_shape,
            sha256=sha256, size_bytes=size_bytes, compile_time_s=compile_time_s,
            error=error[-_MAX_ERROR:] if error else None,
        )

    def _publish(self, result: CompiledKernelArtifact, parent: Envelope[Any] | None) -> None:
        self.bus.publish(Topic.COMPILATION_RESULTS, result, key=result.artifact_id, parent=parent)
