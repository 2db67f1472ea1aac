"""Karn's tables. The migrations in ``esper_karn/migrations`` create exactly these; a test compares the two.

``blueprints`` is the library as Karn knows it (from Urza, plus its own children): the IR, its feature
vector, and the lineage fields of its mutation record, so a lineage tree is one query. The two report
tables keep every report once, keyed by what makes it unique, so a redelivered message inserts nothing.
The mutation policy has no table: it is recomputed from these outcomes. Table names start with ``karn_``:
services may share one PostgreSQL database (docker compose does), and Urza has a ``blueprints`` table too.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from esper_storage import NAMING_CONVENTION, UtcDateTime

HASH = 64  # a sha256 hex digest
ID = 256

metadata = MetaData(naming_convention=NAMING_CONVENTION)

blueprints = Table(
    "karn_blueprints", metadata,
    Column("blueprint_id", String(HASH), primary_key=True, comment="sha256 of the canonical IR"),
    Column("name", String(256), nullable=False),
    Column("kind", String(64), nullable=False, index=True, comment="blueprint class and layout, e.g. mlp:BD"),
    Column("layout", String(8), nullable=False),
    Column("features", Integer, nullable=False, comment="feature size of the input interface"),
    Column("generation", Integer, nullable=False),
    Column("parent_id", String(HASH), index=True, comment="from the mutation record; null for designed blueprints"),
    Column("operator", String(64), comment="the mutation operator that made it"),
    Column("ir_json", Text, nullable=False),
    Column("vector_json", Text, nullable=False, comment="the IR's feature vector (esper_karn.features)"),
    Column("proposed_by_karn", Boolean, nullable=False, comment="submitted by this Karn"),
    Column("failed_at", UtcDateTime, comment="when Urza showed every artifact FAILED to compile"),
    Column("seen_at", UtcDateTime, nullable=False),
    Index(None, "proposed_by_karn", "seen_at"),
)

field_reports = Table(
    "karn_field_reports", metadata,
    Column("report_id", String(ID), primary_key=True),
    Column("blueprint_id", String(ID), nullable=False, index=True),
    Column("kernel_artifact_id", String(ID)),
    Column("seed_id", String(ID), nullable=False),
    Column("run_id", String(ID)),
    Column("outcome", String(16), nullable=False),
    Column("pre_metric", Float, nullable=False),
    Column("post_metric", Float, nullable=False),
    Column("report_json", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
)

validation_reports = Table(
    "karn_validation_reports", metadata,
    Column("artifact_id", String(ID), primary_key=True),
    Column("measured_at", UtcDateTime, primary_key=True, comment="a re-validation is a new report"),
    Column("blueprint_id", String(HASH), nullable=False, index=True, comment="the artifact id's first 64 characters"),
    Column("hardware", String(64), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("latency_ms_p50", Float, nullable=False),
    Column("memory_mb_peak", Float, nullable=False),
    Column("report_json", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
)
