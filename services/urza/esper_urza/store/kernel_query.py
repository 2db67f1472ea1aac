"""KernelQuery → one SQL statement: every filter is an indexed predicate, sorting and limiting happen in SQL.

Tag filters use ``EXISTS`` against ``artifact_tags`` (primary key ``(artifact_id, tag)``), one per
required tag and one ``NOT EXISTS ... IN`` for the excluded ones, so the database answers them from
the index without ever loading an artifact that does not match.

The query is the hottest read in Urza and the database answers it in tens of microseconds; building
and compiling a SQLAlchemy statement costs ten times that. So a statement is built once per *shape*
of query (which filters are set, how many tags, the sort order) with every value as a bound
parameter, and reused: SQLAlchemy then finds its compiled form in its cache at once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, Select, bindparam, exists, func, select

from esper_contracts import KernelQuery, KernelQueryResult

from .models import artifact_tags, artifacts
from .rows import artifact_from_row


class _Shape(NamedTuple):
    """What decides the SQL text of a query; the values themselves are bound parameters."""

    status: bool
    hardware: bool
    blueprint_class: bool
    interface: bool
    pipeline: bool
    tags_required: int
    tags_excluded: bool
    sort_by: str


def _shape_and_parameters(q: KernelQuery) -> tuple[_Shape, dict[str, Any]]:
    required = list(dict.fromkeys(q.tags_required))
    excluded = list(dict.fromkeys(q.tags_excluded))
    params: dict[str, Any] = {"limit": q.limit}
    if q.status is not None:
        params["status"] = q.status.value
    if q.hardware is not None:
        params["hardware"] = q.hardware
    if q.blueprint_class is not None:
        params["blueprint_class"] = q.blueprint_class.value
    if q.interface is not None:
        params["layout"], params["features"] = q.interface.layout, q.interface.features
    if q.pipeline is not None:
        params["pipeline"] = q.pipeline.value
    params |= {f"tag_{i}": tag for i, tag in enumerate(required)}
    if excluded:
        params["excluded"] = excluded
    shape = _Shape(q.status is not None, q.hardware is not None, q.blueprint_class is not None,
                   q.interface is not None, q.pipeline is not None, len(required), bool(excluded), q.sort_by)
    return shape, params


def _conditions(shape: _Shape) -> list[ColumnElement[bool]]:
    a, t = artifacts.c, artifact_tags.c
    conds: list[ColumnElement[bool]] = []
    if shape.status:
        conds.append(a.status == bindparam("status"))
    if shape.hardware:
        conds.append(a.hardware == bindparam("hardware"))
    if shape.blueprint_class:
        conds.append(a.blueprint_class == bindparam("blueprint_class"))
    if shape.interface:
        conds.extend([a.layout == bindparam("layout"), a.features == bindparam("features")])
    if shape.pipeline:
        conds.append(a.pipeline == bindparam("pipeline"))
    for i in range(shape.tags_required):
        conds.append(exists().where(t.artifact_id == a.artifact_id, t.tag == bindparam(f"tag_{i}")))
    if shape.tags_excluded:
        conds.append(~exists().where(t.artifact_id == a.artifact_id, t.tag.in_(bindparam("excluded", expanding=True))))
    return conds


def _order(sort_by: str) -> list[Any]:
    a = artifacts.c
    if sort_by == "latency":
        # unmeasured artifacts (no validation report yet) sort after every measured one
        return [a.latency_ms.is_(None), a.latency_ms, a.created_at, a.artifact_id]
    if sort_by == "memory":
        return [a.memory_mb.is_(None), a.memory_mb, a.created_at, a.artifact_id]
    return [a.created_at.desc(), a.artifact_id]  # newest first


@lru_cache(maxsize=256)
def _statement(shape: _Shape) -> Select[Any]:
    """The page of full rows, each with the number of all matches.

    The inner select filters, counts (a window over all matches) and sorts only ids and sort keys, and
    keeps the best ``limit``; the outer one joins those ids back to their rows and sorts the page again
    (the ids are unique, so the order is the same). Sorting narrow rows is what keeps a broad query fast.
    """
    page = (select(artifacts.c.artifact_id, func.count().over().label("total"))
            .where(*_conditions(shape)).order_by(*_order(shape.sort_by)).limit(bindparam("limit"))
            .subquery("page"))
    return (select(artifacts, page.c.total)
            .join_from(artifacts, page, artifacts.c.artifact_id == page.c.artifact_id)
            .order_by(*_order(shape.sort_by)))


def run_kernel_query(conn: Connection, q: KernelQuery) -> KernelQueryResult:
    """Artifacts matching ``q``, best first, at most ``q.limit``; ``total`` counts every match."""
    shape, params = _shape_and_parameters(q)
    rows = conn.execute(_statement(shape), params).all()
    if not rows:
        return KernelQueryResult(artifacts=[], total=0)
    return KernelQueryResult(artifacts=[artifact_from_row(r) for r in rows], total=int(rows[0].total))
