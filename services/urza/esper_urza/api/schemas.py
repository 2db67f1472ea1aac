"""Response and request bodies of Urza's API that are not platform contracts (pages, lineage, receipts)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from esper_contracts import (
    BlueprintRecord,
    CompilationJob,
    CompiledKernelArtifact,
    FieldReport,
    KernelStatus,
    UrabraskValidationReport,
)
from esper_contracts.base import Text


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="the HTTP status phrase, snake_case")
    detail: str = Field(description="why the request failed, naming the wrong value")
    status: int
    trace_id: str = Field(description="also in Urza's log line for this request")


class BlueprintPage(BaseModel):
    """One page of blueprint records, oldest first."""

    items: list[BlueprintRecord]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, or null on the last one")


class BlueprintCheck(BaseModel):
    """The verdict of a dry-run check: the blueprint's id and parameter count, nothing stored."""

    blueprint_id: str
    parameter_count: int
    stored: bool = Field(description="whether this IR is already stored here")


class CompilationJobView(BaseModel):
    """A compilation job queued for a blueprint and whether it has reached the bus."""

    job: CompilationJob
    published: bool


class FieldReportPage(BaseModel):
    """One page of a blueprint's field reports, oldest first."""

    items: list[FieldReport]
    total: int
    limit: int
    offset: int


class FieldReportReceipt(BaseModel):
    """Acknowledges a field report; ``created`` is false when it was already stored."""

    report_id: str
    created: bool


class BinaryView(BaseModel):
    """An artifact's stored bytes: digest, size and where they live."""

    artifact_id: str
    sha256: str
    size_bytes: int
    blob_uri: str
    created: bool | None = Field(default=None, description="on upload: false when the same bytes were stored before")


class StatusEventView(BaseModel):
    """One recorded status change."""

    from_status: KernelStatus | None
    to_status: KernelStatus
    source: str
    detail: str | None
    at: str


class ArtifactDetail(BaseModel):
    """An artifact's metadata, its validation report, its binary and its status history."""

    artifact: CompiledKernelArtifact
    validation: UrabraskValidationReport | None
    binary: BinaryView | None
    history: list[StatusEventView]


class StatusUpdate(BaseModel):
    """A bare status move: COMPILING or VALIDATING (work claimed) or FAILED (with a reason)."""

    model_config = {"extra": "forbid"}

    status: KernelStatus
    expected_status: KernelStatus | None = Field(default=None, description="refuse (409) unless the artifact "
                                                                           "is in this status now")
    reason: Text | None = Field(default=None, max_length=20000)


class TransitionView(BaseModel):
    """The outcome of a status write: ``applied``, ``duplicate`` (a repeat) or ``stale`` (older news)."""

    decision: str
    previous_status: KernelStatus | None
    artifact: CompiledKernelArtifact
