"""Writes on kernel artifacts: binary uploads, compilation results, validation reports, status moves.

Every status change is one transaction: read the row (locked), let the status machine decide, then a
compare-and-set update on the status that was read, the tag index, the history entry and any job
the change causes (the outbox). Repeats and late news change nothing, so at-least-once delivery is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Connection

from esper_contracts import ArtifactId, CompiledKernelArtifact, KernelStatus, Topic, UrabraskValidationReport, utc_now
from esper_storage import BlobConflictError, content_key, sha256_hex
from esper_storage.blob.base import CHUNK_SIZE

from .context import UrzaContext
from .errors import BadRequest, Conflict, NotFound
from .jobs import validation_job
from .store import artifacts as rows
from .store import blueprints as blueprint_rows
from .store import outbox
from .store.rows import artifact_from_row
from .transitions import COMPILATION_STATUSES, Decision, IllegalTransition, decide

log = logging.getLogger(__name__)

S = KernelStatus
_ATTEMPTS = 3  # a compare-and-set that loses a race is retried from a fresh read this many times
#: Statuses a bare status update (no payload) may set: claims of work in progress, and failure.
SETTABLE_STATUSES = frozenset({S.COMPILING, S.VALIDATING, S.FAILED})


@dataclass(frozen=True)
class BinaryInfo:
    """Where an artifact's bytes are and what they hash to."""

    artifact_id: str
    sha256: str
    size_bytes: int
    blob_key: str
    blob_uri: str


@dataclass(frozen=True)
class TransitionResult:
    """The outcome of a status write: what was decided and the artifact as it now stands."""

    decision: Decision
    previous: KernelStatus | None
    artifact: CompiledKernelArtifact


def _tags(*groups: list[str]) -> list[str]:
    return list(dict.fromkeys(t for group in groups for t in group))


class Ledger:
    """The write side of kernel artifacts."""

    def __init__(self, ctx: UrzaContext) -> None:
        self.ctx = ctx

    # --- binaries --------------------------------------------------------------------------------------------

    def store_binary(self, artifact_id: str, data: bytes, claimed_sha256: str) -> tuple[BinaryInfo, bool]:
        """Keep an artifact's compiled bytes; (info, True) when stored now, (info, False) for the same bytes again.

        The bytes must hash to ``claimed_sha256`` (BadRequest otherwise); an artifact is immutable, so other
        bytes for an artifact that already has some raise Conflict.
        """
        blueprint_id = self._parse_id(artifact_id).blueprint_id
        actual = sha256_hex(data)
        if claimed_sha256 != actual:
            raise BadRequest(f"X-Content-SHA256 is {claimed_sha256} but the body's sha256 is {actual} "
                             f"({len(data)} bytes); the upload was corrupted or the header is wrong")
        with self.ctx.db.read() as conn:
            if blueprint_rows.blueprint_row(conn, blueprint_id) is None:
                raise NotFound(f"artifact {artifact_id!r} belongs to blueprint {blueprint_id!r}, which is unknown")
            existing = rows.binary_row(conn, artifact_id)
        if existing is not None:
            return self._same_binary(existing, actual), False
        key = content_key(actual, prefix="kernels")
        try:
            self.ctx.blobs.put(key, data)  # content-addressed: identical bytes from any artifact share one blob
        except BlobConflictError as exc:  # only a corrupted store can hold other bytes under a digest key
            raise Conflict(str(exc)) from None
        with self.ctx.db.write() as conn:
            created = rows.insert_binary(conn, artifact_id, actual, len(data), key, self.ctx.clock())
            row = rows.binary_row(conn, artifact_id)
        return self._same_binary(row, actual), created

    def _same_binary(self, row: Any, sha256: str) -> BinaryInfo:
        if row.sha256 != sha256:
            raise Conflict(f"artifact {row.artifact_id} already has a binary with sha256 {row.sha256}; artifacts are "
                           f"immutable, so bytes with sha256 {sha256} are refused (build a new toolchain hash instead)")
        return BinaryInfo(row.artifact_id, row.sha256, row.size_bytes, row.blob_key, self.ctx.blobs.uri(row.blob_key))

    def binary(self, artifact_id: str) -> BinaryInfo:
        """Where the artifact's bytes are; NotFound when none were uploaded."""
        with self.ctx.db.read() as conn:
            row = rows.binary_row(conn, artifact_id)
        if row is None:
            raise NotFound(f"no binary uploaded for kernel artifact {artifact_id!r}")
        return BinaryInfo(row.artifact_id, row.sha256, row.size_bytes, row.blob_key, self.ctx.blobs.uri(row.blob_key))

    def verified_binary(self, artifact_id: str) -> BinaryInfo:
        """The binary's facts once its stored bytes are read and still hash to its digest.

        Bytes that rotted in the blob store are never served: the mismatch goes into the artifact's history
        (source ``integrity``) and the read is refused with 409, naming both digests.
        """
        info = self.binary(artifact_id)
        digest = hashlib.sha256()
        stream = self.ctx.blobs.open(info.blob_key)
        try:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
        finally:
            stream.close()
        actual = digest.hexdigest()
        if actual == info.sha256:
            return info
        detail = (f"stored bytes hash to {actual}, not the recorded {info.sha256}: the blob is corrupted "
                  f"and was not served")
        log.error("kernel blob corrupted", extra={"artifact_id": artifact_id, "expected": info.sha256,
                                                   "actual": actual})
        with self.ctx.db.write() as conn:
            row = rows.artifact_row(conn, artifact_id)
            if row is not None:
                status = KernelStatus(row.status)
                rows.record_event(conn, artifact_id, status, status, "integrity", detail, utc_now())
        raise Conflict(f"artifact {artifact_id}: {detail}")

    def open_binary(self, artifact_id: str) -> tuple[BinaryInfo, IO[bytes]]:
        """The binary's facts and an open stream of its bytes (the caller closes it)."""
        info = self.binary(artifact_id)
        return info, self.ctx.blobs.open(info.blob_key)

    # --- compilation results ------------------------------------------------------------------------------

    def record_compilation(self, art: CompiledKernelArtifact, source: str = "bus") -> TransitionResult:
        """Apply a compilation result (PENDING, COMPILING, COMPILED or FAILED) from Tezzeret.

        A COMPILED result needs the binary uploaded first with the same sha256; it queues a ValidationJob
        and moves the artifact on to VALIDATING in the same transaction (unless validation is off).
        """
        if art.status not in COMPILATION_STATUSES:
            raise BadRequest(f"a compilation result carries one of {sorted(s.value for s in COMPILATION_STATUSES)}, "
                             f"not {art.status.value}; validation outcomes come from validation reports")
        try:
            expected = ArtifactId(art.blueprint_id, art.hardware, art.pipeline, art.toolchain_hash)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if art.artifact_id != expected:
            raise BadRequest(f"artifact id {art.artifact_id!r} does not match its parts: expected {expected!r}")
        for _ in range(_ATTEMPTS):
            with self.ctx.db.write() as conn:
                result = self._apply_compilation(conn, art, source)
            if result is not None:
                if result.decision is Decision.APPLY:
                    self.ctx.after_commit()
                return result
        raise Conflict(f"artifact {art.artifact_id}: lost {_ATTEMPTS} races with concurrent writers; retry")

    def _apply_compilation(self, conn: Connection, art: CompiledKernelArtifact, source: str) -> TransitionResult | None:
        blueprint = blueprint_rows.blueprint_row(conn, art.blueprint_id)
        if blueprint is None:
            raise NotFound(f"artifact {art.artifact_id} names blueprint {art.blueprint_id}, which is unknown")
        row = rows.artifact_row(conn, art.artifact_id, lock=True)
        current = S(row.status) if row is not None else None
        binary = None
        if art.status is S.COMPILED:
            binary = self._compiled_binary(conn, art)
            if row is not None and row.sha256 is not None and row.sha256 != binary.sha256:
                raise Conflict(f"artifact {art.artifact_id} was recorded with sha256 {row.sha256}; "
                               f"it cannot become {binary.sha256}")
        decision = decide(art.artifact_id, current, art.status)
        if decision is Decision.STALE and binary is not None and row is not None and row.sha256 == binary.sha256:
            decision = Decision.DUPLICATE  # the same COMPILED result again, after Urza moved the artifact on
        if decision is not Decision.APPLY:
            if decision is Decision.STALE:
                log.info("late compilation result ignored", extra={"artifact_id": art.artifact_id,
                                                                   "current": current, "reported": art.status.value})
            assert row is not None  # DUPLICATE and STALE need a recorded status
            return TransitionResult(decision, current, artifact_from_row(row))

        now = self.ctx.clock()
        design_tags = json.loads(blueprint.tags_json)
        values: dict[str, Any] = {"status": art.status.value, "updated_at": now,
                                  "compile_tags_json": rows.dumps_list(art.tags),
                                  "tags_json": rows.dumps_list(_tags(design_tags, art.tags))}
        if art.status is S.COMPILED:
            assert binary is not None
            values |= {"sha256": binary.sha256, "size_bytes": binary.size_bytes, "blob_uri": binary.blob_uri,
                       "compile_time_s": art.compile_time_s, "error": None}
        elif art.status is S.FAILED:
            values |= {"error": art.error or "compilation failed (the compiler gave no reason)"}
        if row is None:
            values |= {
                "artifact_id": art.artifact_id, "blueprint_id": art.blueprint_id, "hardware": art.hardware,
                "pipeline": art.pipeline.value, "toolchain_hash": art.toolchain_hash,
                "input_shape_json": rows.dumps_list(art.input_shape), "validation_json": None,
                "blueprint_class": blueprint.blueprint_class, "layout": blueprint.input_layout,
                "features": blueprint.input_features, "latency_ms": None, "memory_mb": None,
                "created_at": art.created_at,
            }
            values.setdefault("sha256", None)
            if not rows.insert_artifact(conn, values):
                return None  # another writer inserted it first: start over from a fresh read
        elif not rows.compare_and_set(conn, art.artifact_id, S(row.status), values):
            return None
        rows.replace_tags(conn, art.artifact_id, json.loads(values["tags_json"]))
        rows.record_event(conn, art.artifact_id, current, art.status, source, art.error, now)
        final = art.status
        if art.status is S.COMPILED and self.ctx.settings.validate_compiled:
            stored = artifact_from_row(rows.artifact_row(conn, art.artifact_id))
            key, job = validation_job(stored)
            outbox.enqueue(conn, key, Topic.VALIDATION_JOBS, job, art.artifact_id, now)
            rows.compare_and_set(conn, art.artifact_id, S.COMPILED, {"status": S.VALIDATING.value})
            rows.record_event(conn, art.artifact_id, S.COMPILED, S.VALIDATING, "urza", "validation job queued", now)
            final = S.VALIDATING
        log.info("artifact status changed", extra={"artifact_id": art.artifact_id, "from": current,
                                                   "to": final.value, "source": source})
        return TransitionResult(Decision.APPLY, current, artifact_from_row(rows.artifact_row(conn, art.artifact_id)))

    def _compiled_binary(self, conn: Connection, art: CompiledKernelArtifact) -> BinaryInfo:
        row = rows.binary_row(conn, art.artifact_id)
        if row is None:
            raise BadRequest(f"artifact {art.artifact_id} is reported COMPILED but no binary was uploaded; "
                             f"PUT /api/v1/kernels/{art.artifact_id}/binary first")
        if art.sha256 is not None and art.sha256 != row.sha256:
            raise Conflict(f"artifact {art.artifact_id} is reported with sha256 {art.sha256}, "
                           f"but the uploaded binary has sha256 {row.sha256}")
        if not self.ctx.blobs.exists(row.blob_key):
            raise BadRequest(f"the binary of artifact {art.artifact_id} ({row.blob_key}) is missing "
                             f"from the blob store")
        return BinaryInfo(row.artifact_id, row.sha256, row.size_bytes, row.blob_key, self.ctx.blobs.uri(row.blob_key))

    # --- validation reports -------------------------------------------------------------------------------------

    def record_validation(self, report: UrabraskValidationReport, source: str = "bus") -> TransitionResult:
        """Apply Urabrask's verdict: VALIDATED with its tags and figures, or REJECTED with the reason.

        A newer passing report for a VALIDATED artifact refreshes its figures and tags (percentile tags
        move as the population grows); an older or identical one changes nothing.
        """
        for _ in range(_ATTEMPTS):
            with self.ctx.db.write() as conn:
                result = self._apply_validation(conn, report, source)
            if result is not None:
                return result
        raise Conflict(f"artifact {report.artifact_id}: lost {_ATTEMPTS} races with concurrent writers; retry")

    def _apply_validation(self, conn: Connection, report: UrabraskValidationReport,
                          source: str) -> TransitionResult | None:
        row = rows.artifact_row(conn, report.artifact_id, lock=True)
        if row is None:
            raise NotFound(f"validation report for unknown kernel artifact {report.artifact_id!r}")
        if report.hardware != row.hardware:
            raise BadRequest(f"report measured on {report.hardware!r}, but artifact {report.artifact_id} "
                             f"targets {row.hardware!r}")
        current = S(row.status)
        requested = S.VALIDATED if report.passed else S.REJECTED
        previous = UrabraskValidationReport.model_validate_json(row.validation_json) if row.validation_json else None
        refresh = (current is S.VALIDATED and requested is S.VALIDATED and previous is not None
                   and report.measured_at > previous.measured_at)
        decision = Decision.APPLY if refresh else decide(report.artifact_id, current, requested)
        if decision is not Decision.APPLY:
            return TransitionResult(decision, current, artifact_from_row(row))
        now = self.ctx.clock()
        blueprint = blueprint_rows.blueprint_row(conn, row.blueprint_id)
        if blueprint is None:  # the foreign key makes this unreachable; keep the failure readable anyway
            raise NotFound(f"artifact {report.artifact_id} names blueprint {row.blueprint_id}, which is unknown")
        tags = _tags(json.loads(blueprint.tags_json), json.loads(row.compile_tags_json), report.tags)
        values = {
            "status": requested.value, "validation_json": report.model_dump_json(), "tags_json": rows.dumps_list(tags),
            "latency_ms": report.latency_ms_mean, "memory_mb": report.memory_mb_peak, "updated_at": now,
            "error": report.rejection_reason if requested is S.REJECTED else None,
        }
        if not rows.compare_and_set(conn, report.artifact_id, current, values):
            return None
        rows.replace_tags(conn, report.artifact_id, tags)
        detail = report.rejection_reason if requested is S.REJECTED else ("refreshed" if refresh else None)
        rows.record_event(conn, report.artifact_id, current, requested, source, detail, now)
        log.info("artifact validated" if report.passed else "artifact rejected",
                 extra={"artifact_id": report.artifact_id, "from": current.value, "tags": report.tags})
        return TransitionResult(Decision.APPLY, current, artifact_from_row(rows.artifact_row(conn, report.artifact_id)))

    # --- bare status moves ----------------------------------------------------------------------------------------

    def set_status(self, artifact_id: str, status: KernelStatus, *, expected: KernelStatus | None = None,
                   reason: str | None = None, source: str = "rest") -> TransitionResult:
        """Move an artifact to COMPILING, VALIDATING or FAILED, optionally only from ``expected`` (compare-and-set)."""
        if status not in SETTABLE_STATUSES:
            raise BadRequest(f"status {status.value} needs its payload: post a compilation result or a validation "
                             f"report; a bare update may set {sorted(s.value for s in SETTABLE_STATUSES)}")
        if status is S.FAILED and not reason:
            raise BadRequest("moving an artifact to FAILED needs a reason")
        for _ in range(_ATTEMPTS):
            with self.ctx.db.write() as conn:
                row = rows.artifact_row(conn, artifact_id, lock=True)
                if row is None:
                    raise NotFound(f"no kernel artifact {artifact_id!r}")
                current = S(row.status)
                if expected is not None and current is not expected:
                    raise IllegalTransition(artifact_id, current, status,
                                            f"expected the artifact to be {expected.value}, it is {current.value}")
                decision = decide(artifact_id, current, status)
                if decision is not Decision.APPLY:
                    return TransitionResult(decision, current, artifact_from_row(row))
                now = self.ctx.clock()
                values: dict[str, Any] = {"status": status.value, "updated_at": now}
                if status is S.FAILED:
                    values["error"] = reason
                if not rows.compare_and_set(conn, artifact_id, current, values):
                    continue
                rows.record_event(conn, artifact_id, current, status, source, reason, now)
                updated = rows.artifact_row(conn, artifact_id)
                return TransitionResult(Decision.APPLY, current, artifact_from_row(updated))
        raise Conflict(f"artifact {artifact_id}: lost {_ATTEMPTS} races with concurrent writers; retry")

    @staticmethod
    def _parse_id(artifact_id: str) -> ArtifactId:
        try:
            return ArtifactId.parse(artifact_id)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
