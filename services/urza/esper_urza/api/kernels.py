"""``/api/v1/kernels``: the kernel query, artifact metadata and binaries, and the write paths of Tezzeret/Urabrask."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse

from esper_contracts import CompiledKernelArtifact, KernelQuery, KernelQueryResult, UrabraskValidationReport
from esper_runtime import Role, require
from esper_storage.blob.base import CHUNK_SIZE

from ..catalog import Catalog
from ..errors import BadRequest, NotFound
from ..ledger import BinaryInfo, Ledger, TransitionResult
from ..settings import UrzaSettings
from . import deps
from .blueprints import ERRORS
from .schemas import ArtifactDetail, BinaryView, StatusEventView, StatusUpdate, TransitionView

router = APIRouter(prefix="/api/v1/kernels", tags=["kernels"], responses=ERRORS)
CatalogDep = Annotated[Catalog, Depends(deps.catalog)]
LedgerDep = Annotated[Ledger, Depends(deps.ledger)]
SettingsDep = Annotated[UrzaSettings, Depends(deps.settings)]
read = [require(Role.VIEWER)]
write = [require(Role.OPERATOR)]
#: Forcing a status (FAILED takes an artifact out of service) overrides the pipeline: admins only.
force = [require(Role.ADMIN)]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _binary_view(info: BinaryInfo, created: bool | None = None) -> BinaryView:
    return BinaryView(artifact_id=info.artifact_id, sha256=info.sha256, size_bytes=info.size_bytes,
                      blob_uri=info.blob_uri, created=created)


def _transition_view(result: TransitionResult) -> TransitionView:
    return TransitionView(decision=result.decision.value, previous_status=result.previous, artifact=result.artifact)


def _same_id(path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise BadRequest(f"the body is about artifact {body_id!r}, but was posted to {path_id!r}")


@router.post("/query", response_model=KernelQueryResult, dependencies=read)
def query_kernels(query: KernelQuery, catalog: CatalogDep) -> Response:
    """Kernels matching the query's tags, hardware, status, class, interface and pipeline, best first.

    ``total`` counts every match; ``artifacts`` holds the best ``limit`` of them. Sorting by latency or
    memory puts artifacts without a validation report last; ``created_at`` sorts newest first.
    """
    # Serialised here: the result is built from validated contracts, so FastAPI's second validation
    # against response_model would only double the cost of the hottest endpoint.
    return Response(catalog.query(query).model_dump_json(), media_type="application/json")


@router.get("/{artifact_id}", response_model=ArtifactDetail, dependencies=read)
def get_kernel(artifact_id: str, catalog: CatalogDep, ledger: LedgerDep) -> ArtifactDetail:
    """An artifact's metadata, its validation report, its binary (if uploaded) and its status history."""
    artifact, events = catalog.artifact(artifact_id)
    try:
        binary: BinaryView | None = _binary_view(ledger.binary(artifact_id))
    except NotFound:
        binary = None
    return ArtifactDetail(artifact=artifact, validation=artifact.validation, binary=binary,
                          history=[StatusEventView(**vars(e)) for e in events])


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := stream.read(CHUNK_SIZE):
            yield chunk
    finally:
        stream.close()


@router.get("/{artifact_id}/binary", dependencies=read, response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 307: {"description": "presigned URL"}})
def get_kernel_binary(
    artifact_id: str,
    ledger: LedgerDep,
    settings: SettingsDep,
    redirect: Annotated[bool, Query(description="307 to a presigned URL when the blob store offers one")] = False,
) -> Response:
    """The artifact's compiled bytes, streamed; ``X-Content-SHA256`` carries the digest to check them against."""
    info = ledger.binary(artifact_id)
    headers = {"X-Content-SHA256": info.sha256, "ETag": f'"{info.sha256}"'}
    if redirect:
        url = ledger.ctx.blobs.presigned_url(info.blob_key, expires_s=settings.presign_expires_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers=headers)
    ledger.verified_binary(artifact_id)  # rotted bytes are refused (409) and recorded, never served
    _info, stream = ledger.open_binary(artifact_id)
    headers["Content-Length"] = str(info.size_bytes)
    return StreamingResponse(_chunks(stream), media_type="application/octet-stream", headers=headers)


@router.head("/{artifact_id}/binary", dependencies=read, response_class=Response)
def head_kernel_binary(artifact_id: str, ledger: LedgerDep) -> Response:
    """The binary's digest and size without its bytes (404 when none was uploaded)."""
    info = ledger.binary(artifact_id)
    return Response(headers={"X-Content-SHA256": info.sha256, "ETag": f'"{info.sha256}"',
                             "Content-Length": str(info.size_bytes)}, media_type="application/octet-stream")


@router.put("/{artifact_id}/binary", response_model=BinaryView, status_code=201, dependencies=write,
            openapi_extra={"requestBody": {"required": True,
                                           "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                               "format": "binary"}}}}})
async def put_kernel_binary(
    artifact_id: str,
    request: Request,
    response: Response,
    ledger: LedgerDep,
    x_content_sha256: Annotated[str | None, Header(description="lowercase hex sha256 of the body")] = None,
) -> BinaryView:
    """Upload an artifact's compiled bytes (before reporting it COMPILED).

    The body must hash to ``X-Content-SHA256`` (400 otherwise). 201 when stored; 200 when the same bytes
    were stored before; 409 when the artifact already has different bytes (artifacts are immutable).
    """
    if x_content_sha256 is None or not _SHA256.match(x_content_sha256.strip().lower()):
        raise BadRequest(f"header X-Content-SHA256 must be the lowercase hex sha256 of the body, "
                         f"got {x_content_sha256!r}")
    data = bytearray()
    async for chunk in request.stream():  # size and read time: esper_runtime's BodyGuard
        data.extend(chunk)
    info, created = await run_in_threadpool(ledger.store_binary, artifact_id, bytes(data),
                                            x_content_sha256.strip().lower())
    response.status_code = 201 if created else 200
    return _binary_view(info, created)


@router.post("/{artifact_id}/compilation", response_model=TransitionView, dependencies=write)
def post_compilation_result(artifact_id: str, artifact: CompiledKernelArtifact, ledger: LedgerDep) -> TransitionView:
    """Apply a compilation result, exactly as if it arrived on ``compilation.results``.

    COMPILED needs the binary uploaded first; it queues a ValidationJob and moves the artifact to
    VALIDATING. 409 for a status move the state machine forbids.
    """
    _same_id(artifact_id, artifact.artifact_id)
    return _transition_view(ledger.record_compilation(artifact, source="rest"))


@router.post("/{artifact_id}/validation", response_model=TransitionView, dependencies=write)
def post_validation_report(artifact_id: str, report: UrabraskValidationReport, ledger: LedgerDep) -> TransitionView:
    """Apply Urabrask's report, exactly as if it arrived on ``validation.reports`` (VALIDATED or REJECTED)."""
    _same_id(artifact_id, report.artifact_id)
    return _transition_view(ledger.record_validation(report, source="rest"))


@router.post("/{artifact_id}/status", response_model=TransitionView, dependencies=force)
def post_status(artifact_id: str, update: StatusUpdate, ledger: LedgerDep) -> TransitionView:
    """Move an artifact to COMPILING, VALIDATING or FAILED; with ``expected_status``, only from that status (409)."""
    return _transition_view(ledger.set_status(artifact_id, update.status, expected=update.expected_status,
                                              reason=update.reason, source="rest"))
