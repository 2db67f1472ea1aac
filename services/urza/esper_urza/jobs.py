"""The jobs Urza hands out: what to compile for a new blueprint, what to validate for a compiled artifact.

Job ids are derived from what the job is, not drawn at random, so a job sent twice (after a crash, or a
redelivered cause) carries the same id and workers can recognise the repeat.
"""

from __future__ import annotations

import hashlib

from esper_contracts import BlueprintIR, CompilationJob, CompiledKernelArtifact, ValidationJob

from .settings import UrzaSettings


def _job_id(dedupe_key: str) -> str:
    return hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


def compilation_jobs(blueprint_id: str, ir: BlueprintIR, settings: UrzaSettings) -> list[tuple[str, CompilationJob]]:
    """(dedupe key, job) for every configured pipeline × hardware target, at the configured injection shape."""
    shape = settings.input_shape(ir.input)
    jobs = []
    for hardware in dict.fromkeys(settings.hardware):
        for pipeline in dict.fromkeys(settings.pipelines):
            key = f"compile:{blueprint_id}:{hardware}:{pipeline.value}:{'x'.join(map(str, shape))}"
            jobs.append((key, CompilationJob(job_id=_job_id(key), blueprint_id=blueprint_id, ir=ir, pipeline=pipeline,
                                             hardware=hardware, input_shape=shape)))
    return jobs


def validation_job(artifact: CompiledKernelArtifact) -> tuple[str, ValidationJob]:
    """(dedupe key, job) asking Urabrask to benchmark one compiled artifact."""
    key = f"validate:{artifact.artifact_id}"
    return key, ValidationJob(job_id=_job_id(key), artifact_id=artifact.artifact_id,
                              blueprint_id=artifact.blueprint_id, hardware=artifact.hardware)
