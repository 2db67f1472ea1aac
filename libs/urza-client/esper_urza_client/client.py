"""The one client of Urza's REST API (``/api/v1``): kernel records and binaries, queries, blueprints, reports.

Torch-free, so the SDK, Tamiyo, Tezzeret, Urabrask and every service to come share one place that knows
Urza's URLs and error shapes. Every request carries the caller's bearer token (``token``) and the current
trace context (W3C ``traceparent``), so Urza's span of a request sits in the caller's trace.

Errors: :class:`UrzaError` for an error status (``status``) or an unreachable Urza (``status`` 0),
:class:`BinaryConflictError` for other bytes already stored under an artifact id, and the contracts'
``KernelNotFoundError`` for a 404 on a kernel or blueprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import propagate

from esper_contracts import (
    BlueprintIR,
    BlueprintLineage,
    BlueprintRecord,
    CompiledKernelArtifact,
    KernelNotFoundError,
    KernelQuery,
    KernelQueryResult,
    PipelineBacklog,
    UrabraskValidationReport,
)


class UrzaError(RuntimeError):
    """Urza answered with an error status (``status``) or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class BinaryConflictError(UrzaError):
    """The artifact already has other bytes in Urza (artifacts are immutable); 409 on upload."""


@dataclass(frozen=True)
class KernelRecord:
    """Urza's view of one artifact: its record and, when uploaded, the stored binary's digest and size."""

    artifact: CompiledKernelArtifact
    binary_sha256: str | None
    binary_size: int | None


def _send_trace_context(request: httpx.Request) -> None:
    propagate.inject(request.headers)


class UrzaClient:
    """Synchronous client of Urza's REST API. ``http`` may be any ``httpx.Client`` (a TestClient in tests)."""

    def __init__(self, base_url: str = "", *, token: str | None = None, timeout_s: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        self._owned = http is None
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout_s,
                                                               event_hooks={"request": [_send_trace_context]})
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Release the connection pool (a client passed in by the caller is the caller's to close)."""
        if self._owned:
            self.http.close()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UrzaError(f"Urza unreachable ({method} {path}): {type(exc).__name__}: {exc}") from exc
        return response

    @staticmethod
    def _fail(response: httpx.Response, what: str) -> UrzaError:
        try:
            detail = str(response.json().get("detail", ""))
        except ValueError:
            detail = response.text[:500]
        cls = BinaryConflictError if response.status_code == 409 else UrzaError
        return cls(f"{what}: HTTP {response.status_code}: {detail}", response.status_code, detail)

    # -- kernels ----------------------------------------------------------------------------------------
    def kernel(self, artifact_id: str) -> KernelRecord:
        """The artifact's record; KernelNotFoundError when Urza has none."""
        r = self._request("GET", f"/api/v1/kernels/{artifact_id}")
        if r.status_code == 404:
            raise KernelNotFoundError(f"Urza has no kernel artifact {artifact_id!r}")
        if r.status_code != 200:
            raise self._fail(r, f"GET kernel {artifact_id}")
        body = r.json()
        binary = body.get("binary") or {}
        return KernelRecord(CompiledKernelArtifact.model_validate(body["artifact"]),
                            binary.get("sha256"), binary.get("size_bytes"))

    def binary(self, artifact_id: str) -> tuple[bytes, str]:
        """The artifact's bytes and the digest Urza sent with them; KernelNotFoundError when none were uploaded."""
        r = self._request("GET", f"/api/v1/kernels/{artifact_id}/binary")
        if r.status_code == 404:
            raise KernelNotFoundError(f"Urza has no binary for kernel artifact {artifact_id!r}")
        if r.status_code != 200:
            raise self._fail(r, f"GET binary of {artifact_id}")
        return r.content, r.headers.get("X-Content-SHA256", "")

    def binary_sha256(self, artifact_id: str) -> str | None:
        """The digest of the stored binary without downloading it (None when there is none)."""
        try:
            with self.http.stream("GET", f"/api/v1/kernels/{artifact_id}/binary") as r:
                if r.status_code == 404:
                    return None
                if r.status_code != 200:
                    r.read()
                    raise self._fail(r, f"GET binary of {artifact_id}")
                return r.headers.get("X-Content-SHA256") or None
        except httpx.HTTPError as exc:
            raise UrzaError(f"Urza unreachable (GET binary of {artifact_id}): {exc}") from exc

    def put_binary(self, artifact_id: str, data: bytes, sha256: str | None = None) -> bool:
        """Upload the artifact's bytes; True when stored now, False when these bytes were already there.

        Raises BinaryConflictError when Urza holds *other* bytes for the artifact.
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        r = self._request("PUT", f"/api/v1/kernels/{artifact_id}/binary", content=data,
                          headers={"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"})
        if r.status_code in (200, 201):
            return r.status_code == 201
        raise self._fail(r, f"PUT binary of {artifact_id}")

    # -- learned policies -------------------------------------------------------------------------------
    def put_policy(self, version: str, artifact: dict[str, Any]) -> str:
        """Store a learned policy version (JSON artifact); returns the sha256 Urza computed.

        Storing the same document again is fine; BinaryConflictError when Urza holds another under ``version``.
        """
        r = self._request("PUT", f"/api/v1/policies/{version}", json=artifact)
        if r.status_code in (200, 201):
            return str(r.json()["sha256"])
        raise self._fail(r, f"PUT policy {version}")

    def policy(self, version: str) -> tuple[dict[str, Any], str]:
        """A stored policy artifact and the digest Urza sent with it; UrzaError (status 404) when there is none."""
        r = self._request("GET", f"/api/v1/policies/{version}")
        if r.status_code != 200:
            raise self._fail(r, f"GET policy {version}")
        body = r.json()
        if not isinstance(body, dict):
            raise UrzaError(f"GET policy {version}: the body is not a JSON object")
        return body, r.headers.get("X-Content-SHA256", "")

    def query(self, q: KernelQuery) -> KernelQueryResult:
        """POST /api/v1/kernels/query."""
        r = self._request("POST", "/api/v1/kernels/query", content=q.model_dump_json(),
                          headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise self._fail(r, "kernel query")
        return KernelQueryResult.model_validate_json(r.content)

    def post_compilation(self, artifact: CompiledKernelArtifact) -> dict[str, Any]:
        """Report a compilation result over REST (the bus is the usual way)."""
        r = self._request("POST", f"/api/v1/kernels/{artifact.artifact_id}/compilation",
                          content=artifact.model_dump_json(), headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise self._fail(r, f"compilation result of {artifact.artifact_id}")
        return dict(r.json())

    def post_validation(self, report: UrabraskValidationReport) -> dict[str, Any]:
        """Report a validation outcome over REST (the bus is the usual way)."""
        r = self._request("POST", f"/api/v1/kernels/{report.artifact_id}/validation",
                          content=report.model_dump_json(), headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise self._fail(r, f"validation report of {report.artifact_id}")
        return dict(r.json())

    # -- blueprints -------------------------------------------------------------------------------------
    def submit_blueprint(self, ir: BlueprintIR) -> BlueprintRecord:
        """POST /api/v1/blueprints (idempotent per IR hash)."""
        r = self._request("POST", "/api/v1/blueprints", content=ir.model_dump_json(),
                          headers={"Content-Type": "application/json"})
        if r.status_code not in (200, 201):
            raise self._fail(r, f"submit blueprint {ir.name}")
        return BlueprintRecord.model_validate_json(r.content)

    def blueprint(self, blueprint_id: str) -> BlueprintRecord:
        """GET /api/v1/blueprints/{id} with every artifact's status."""
        r = self._request("GET", f"/api/v1/blueprints/{blueprint_id}")
        if r.status_code == 404:
            raise KernelNotFoundError(f"Urza has no blueprint {blueprint_id!r}")
        if r.status_code != 200:
            raise self._fail(r, f"GET blueprint {blueprint_id}")
        return BlueprintRecord.model_validate_json(r.content)

    def blueprints(self, *, limit: int = 100, offset: int = 0, layout: str | None = None,
                   features: int | None = None) -> tuple[list[BlueprintRecord], int]:
        """GET /api/v1/blueprints: one page of records, oldest first, and how many match in total."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        params |= {k: v for k, v in (("layout", layout), ("features", features)) if v is not None}
        r = self._request("GET", "/api/v1/blueprints", params=params)
        if r.status_code != 200:
            raise self._fail(r, "list blueprints")
        body = r.json()
        return [BlueprintRecord.model_validate(item) for item in body["items"]], int(body["total"])

    def lineage(self, blueprint_id: str) -> BlueprintLineage:
        """GET /api/v1/blueprints/{id}/lineage: the mutation record, parents and children."""
        r = self._request("GET", f"/api/v1/blueprints/{blueprint_id}/lineage")
        if r.status_code == 404:
            raise KernelNotFoundError(f"Urza has no blueprint {blueprint_id!r}")
        if r.status_code != 200:
            raise self._fail(r, f"GET lineage of {blueprint_id}")
        return BlueprintLineage.model_validate_json(r.content)

    # -- pipeline ---------------------------------------------------------------------------------------
    def backlog(self) -> PipelineBacklog:
        """GET /api/v1/pipeline/backlog: compilations and validations waiting."""
        r = self._request("GET", "/api/v1/pipeline/backlog")
        if r.status_code != 200:
            raise self._fail(r, "GET pipeline backlog")
        return PipelineBacklog.model_validate_json(r.content)
