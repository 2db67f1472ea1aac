"""Turning stored rows back into contract models (the only place that knows both shapes)."""

from __future__ import annotations

import json
from typing import Any

from esper_contracts import (
    BlueprintIR,
    BlueprintRecord,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelStatus,
    UrabraskValidationReport,
)


def artifact_from_row(row: Any) -> CompiledKernelArtifact:
    """A CompiledKernelArtifact from an ``artifacts`` row."""
    report = UrabraskValidationReport.model_validate_json(row.validation_json) if row.validation_json else None
    return CompiledKernelArtifact(
        artifact_id=row.artifact_id,
        blueprint_id=row.blueprint_id,
        hardware=row.hardware,
        pipeline=CompilationPipeline(row.pipeline),
        toolchain_hash=row.toolchain_hash,
        status=KernelStatus(row.status),
        input_shape=json.loads(row.input_shape_json),
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        blob_uri=row.blob_uri,
        compile_time_s=row.compile_time_s,
        error=row.error,
        tags=json.loads(row.tags_json),
        validation=report,
        created_at=row.created_at,
    )


def blueprint_from_row(row: Any, artifacts: list[CompiledKernelArtifact]) -> BlueprintRecord:
    """A BlueprintRecord from a ``blueprints`` row and the blueprint's artifacts."""
    return BlueprintRecord(
        blueprint_id=row.blueprint_id,
        ir=BlueprintIR.model_validate_json(row.ir_json),
        parameter_count=row.parameter_count,
        artifacts=artifacts,
        created_at=row.created_at,
    )
