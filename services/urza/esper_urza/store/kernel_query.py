"""KernelQuery → one SQL statement: every filter is an indexed predicate, sorting and limiting happen in SQL.

Tag filters use ``EXISTS`` against ``artifact_tags`` (primary key ``(artifact_id, tag)``), one per
required tag and one ``NOT EXISTS ... IN`` for the excluded ones, so the database answers them from
the index without ever loading an artifact that does not match.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, exists, func, select

from esper_contracts import KernelQuery, KernelQueryResult

from .models import artifact_tags, artifacts
from .rows import artifact_from_row


def _conditions(q: KernelQuery) -> list[ColumnElement[bool]]:
    a, t = artifacts.c, artifact_tags.c
    conds: list[ColumnElement[bool]] = []
    if q.status is not None:
        conds.append(a.status == q.status.value)
    if q.hardware is not None:
        conds.append(a.hardware == q.hardware)
    if q.blueprint_class is not None:
        conds.append(a.blueprint_class == q.blueprint_class.value)
    if q.interface is not None:
        conds.extend([a.layout == q.interface.layout, a.features == q.interface.features])
    if q.pipeline is not None:
        conds.append(a.pipeline == q.pipeline.value)
    for tag in dict.fromkeys(q.tags_required):
        conds.append(exists().where(t.artifact_id == a.artifact_id, t.tag == tag))
    if q.tags_excluded:
        conds.append(~exists().where(t.artifact_id == a.artifact_id, t.tag.in_(list(dict.fromkeys(q.tags_excluded)))))
    return conds


def _order(q: KernelQuery) -> list[Any]:
    a = artifacts.c
    if q.sort_by == "latency":
        # unmeasured artifacts (no validation report yet) sort after every measured one
        return [a.latency_ms.is_(None), a.latency_ms, a.created_at, a.artifact_id]
    if q.sort_by == "memory":
        return [a.memory_mb.is_(None), a.memory_mb, a.created_at, a.artifact_id]
    return [a.created_at.desc(), a.artifact_id]  # newest first


def run_kernel_query(conn: Connection, q: KernelQuery) -> KernelQueryResult:
    """Artifacts matching ``q``, best first, at most ``q.limit``; ``total`` counts every match.

    Two statements: the first filters, counts (a window over all matches) and sorts only ids and sort
    keys; the second loads the full rows of the page. Sorting narrow rows is what keeps this fast.
    """
    conds = _conditions(q)
    hits = conn.execute(select(artifacts.c.artifact_id, func.count().over().label("total"))
                        .where(*conds).order_by(*_order(q)).limit(q.limit)).all()
    if not hits:
        return KernelQueryResult(artifacts=[], total=0)
    ids = [h.artifact_id for h in hits]
    rows = {r.artifact_id: r for r in conn.execute(select(artifacts).where(artifacts.c.artifact_id.in_(ids)))}
    return KernelQueryResult(artifacts=[artifact_from_row(rows[i]) for i in ids], total=int(hits[0].total))
