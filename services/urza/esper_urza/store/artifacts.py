"""Row-level reads and writes of artifacts, their tags, status events and uploaded binaries.

Writers call these inside one ``Database.write()`` transaction; the status update is a compare-and-set
(``WHERE status = <the status we read>``), so two writers racing on one artifact cannot both win.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from esper_contracts import KernelStatus
from esper_storage import insert_ignore

from .models import artifact_events, artifact_tags, artifacts, kernel_binaries, outbox


def artifact_row(conn: Connection, artifact_id: str, *, lock: bool = False) -> Any | None:
    """The ``artifacts`` row, or None; ``lock`` takes a row lock on PostgreSQL (SQLite's write lock covers it)."""
    stmt = select(artifacts).where(artifacts.c.artifact_id == artifact_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).first()


def insert_artifact(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert a new artifact row; False when another writer inserted the same id first."""
    return insert_ignore(conn, artifacts, values, ["artifact_id"]) == 1


def compare_and_set(conn: Connection, artifact_id: str, expected: KernelStatus, values: dict[str, Any]) -> bool:
    """Update the row only if its status is still ``expected``; True when it was updated."""
    result = conn.execute(update(artifacts)
                          .where(artifacts.c.artifact_id == artifact_id, artifacts.c.status == expected.value)
                          .values(**values))
    return result.rowcount == 1


def replace_tags(conn: Connection, artifact_id: str, tags: list[str]) -> None:
    """Make ``artifact_tags`` hold exactly ``tags`` for the artifact (the indexed copy of ``tags_json``)."""
    conn.execute(delete(artifact_tags).where(artifact_tags.c.artifact_id == artifact_id))
    if tags:
        conn.execute(artifact_tags.insert(), [{"artifact_id": artifact_id, "tag": t} for t in dict.fromkeys(tags)])


def record_event(conn: Connection, artifact_id: str, from_status: KernelStatus | None, to_status: KernelStatus,
                 source: str, detail: str | None, now: datetime) -> None:
    """Append one status change to the artifact's history."""
    conn.execute(artifact_events.insert().values(
        artifact_id=artifact_id, from_status=from_status.value if from_status else None,
        to_status=to_status.value, source=source, detail=detail, at=now,
    ))


def events_of(conn: Connection, artifact_id: str) -> list[Any]:
    """The artifact's status history, oldest first."""
    return list(conn.execute(select(artifact_events).where(artifact_events.c.artifact_id == artifact_id)
                             .order_by(artifact_events.c.id)))


def binary_row(conn: Connection, artifact_id: str) -> Any | None:
    """The uploaded binary of an artifact (sha256, size, blob key), or None."""
    return conn.execute(select(kernel_binaries).where(kernel_binaries.c.artifact_id == artifact_id)).first()


def insert_binary(conn: Connection, artifact_id: str, sha256: str, size_bytes: int, blob_key: str,
                  now: datetime) -> bool:
    """Record an artifact's binary; False when one was already recorded (the caller compares digests)."""
    return insert_ignore(conn, kernel_binaries, {
        "artifact_id": artifact_id, "sha256": sha256, "size_bytes": size_bytes, "blob_key": blob_key,
        "uploaded_at": now,
    }, ["artifact_id"]) == 1


def dumps_list(values: list[Any]) -> str:
    """JSON text of a list, the way list columns are stored."""
    return json.dumps(values, separators=(",", ":"))


#: Statuses after which an artifact needs no more compiling.
COMPILE_FINISHED = (KernelStatus.COMPILED, KernelStatus.VALIDATING, KernelStatus.VALIDATED, KernelStatus.REJECTED,
                    KernelStatus.FAILED)


def count_with_status(conn: Connection, statuses: tuple[KernelStatus, ...]) -> int:
    """How many artifacts are in one of ``statuses``."""
    return int(conn.execute(select(func.count()).select_from(artifacts)
                            .where(artifacts.c.status.in_([s.value for s in statuses]))).scalar_one())


def compilations_pending(conn: Connection, topic: str) -> int:
    """Compilation jobs queued on ``topic`` whose (hardware, pipeline) artifact has not finished compiling.

    Counted per blueprint (the job's message key): its jobs, less its distinct (hardware, pipeline)
    artifacts that are compiled or failed.
    """
    jobs = {key: int(n) for key, n in conn.execute(
        select(outbox.c.message_key, func.count()).where(outbox.c.topic == topic).group_by(outbox.c.message_key))}
    done: dict[str, int] = {}
    for row in conn.execute(select(artifacts.c.blueprint_id, artifacts.c.hardware, artifacts.c.pipeline).distinct()
                            .where(artifacts.c.status.in_([s.value for s in COMPILE_FINISHED]))):
        done[row.blueprint_id] = done.get(row.blueprint_id, 0) + 1
    return sum(max(0, n - done.get(key, 0)) for key, n in jobs.items())


def count_by_status(conn: Connection) -> dict[str, int]:
    """How many artifacts are in each status (statuses nobody is in are left out)."""
    rows = conn.execute(select(artifacts.c.status, func.count()).group_by(artifacts.c.status))
    return {str(status): int(n) for status, n in rows}
