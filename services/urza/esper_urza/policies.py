"""Learned Tamiyo policies: immutable JSON artifacts (config + float32 weights, never pickle), named by version.

Urza checks what it can without knowing the network — a JSON object in the ``esper-policy/1`` format that
names the same version as the URL, with a config and weights — and stores it with the sha256 of its
canonical JSON (sorted keys, no spaces). Whether a policy fits a given Tamiyo (observation and action
sizes) is Tamiyo's to decide when it is asked to serve it. A version is immutable: storing the same
document again is a no-op, storing a different one under the same version is a conflict.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from esper_storage import insert_ignore

from .context import UrzaContext
from .errors import BadRequest, Conflict, NotFound
from .store.models import policies

FORMAT = "esper-policy/1"
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED = ("observation_version", "observation_size", "n_actions", "hidden", "activation", "weights")


@dataclass(frozen=True)
class StoredPolicy:
    """One stored policy version."""

    version: str
    sha256: str
    size_bytes: int
    created_at: datetime
    artifact: dict[str, Any]


def canonical_bytes(artifact: dict[str, Any]) -> bytes:
    """The bytes the digest is computed over: sorted keys, compact separators, UTF-8."""
    return json.dumps(artifact, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def check_artifact(version: str, artifact: Any) -> None:
    """BadRequest naming the first reason ``artifact`` cannot be stored as ``version``."""
    if not VERSION.match(version):
        raise BadRequest(f"policy version {version!r} must be 1-128 letters, digits, '.', '_' or '-'")
    if not isinstance(artifact, dict):
        raise BadRequest("a policy artifact is a JSON object")
    if artifact.get("format") != FORMAT:
        raise BadRequest(f"format {artifact.get('format')!r} is not {FORMAT!r} (weights + config as JSON only)")
    if artifact.get("version") != version:
        raise BadRequest(f"the artifact names version {artifact.get('version')!r}, but was put to {version!r}")
    missing = [k for k in REQUIRED if k not in artifact]
    if missing:
        raise BadRequest(f"the artifact lacks {', '.join(missing)}")
    if not isinstance(artifact["weights"], dict) or not artifact["weights"]:
        raise BadRequest("weights must be a non-empty object of named tensors")


class PolicyLibrary:
    """Put and get policy versions in Urza's database."""

    def __init__(self, ctx: UrzaContext) -> None:
        self.ctx = ctx

    def put(self, version: str, artifact: Any) -> tuple[StoredPolicy, bool]:
        """Store ``artifact`` as ``version``; returns (the stored policy, whether it is new). Conflict if it differs."""
        check_artifact(version, artifact)
        data = canonical_bytes(artifact)
        digest = hashlib.sha256(data).hexdigest()
        now = self.ctx.clock()
        with self.ctx.db.write() as conn:
            new = insert_ignore(conn, policies, {"version": version, "sha256": digest, "size_bytes": len(data),
                                                 "artifact_json": data.decode("utf-8"), "created_at": now},
                                ["version"]) == 1
            if not new:
                stored = conn.execute(select(policies.c.sha256).where(policies.c.version == version)).scalar_one()
                if stored != digest:
                    raise Conflict(f"policy version {version!r} is already stored with sha256 {stored}; "
                                   f"versions are immutable, publish a new one")
        return self.get(version), new

    def get(self, version: str) -> StoredPolicy:
        """The stored version; NotFound when there is none."""
        with self.ctx.db.read() as conn:
            row = conn.execute(select(policies).where(policies.c.version == version)).mappings().first()
        if row is None:
            raise NotFound(f"Urza has no policy version {version!r}")
        return StoredPolicy(version=row["version"], sha256=row["sha256"], size_bytes=int(row["size_bytes"]),
                            created_at=row["created_at"], artifact=json.loads(row["artifact_json"]))

    def versions(self) -> list[tuple[str, str, datetime]]:
        """Every stored version with its digest, oldest first."""
        with self.ctx.db.read() as conn:
            rows = conn.execute(select(policies.c.version, policies.c.sha256, policies.c.created_at)
                                .order_by(policies.c.created_at, policies.c.version)).all()
        return [(r[0], r[1], r[2]) for r in rows]
