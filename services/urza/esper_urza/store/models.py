"""Urza's tables. Migrations in ``esper_urza/migrations`` create exactly these; a test compares the two.

Kernel queries are the hot read, so ``artifacts`` repeats a few blueprint facts (class, interface)
and validation figures (latency, memory) as plain indexed columns, and tags live one per row in
``artifact_tags``: every KernelQuery filter becomes an indexed SQL predicate.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

from esper_storage import NAMING_CONVENTION, AutoId, UtcDateTime

HASH = 64  # a sha256 hex digest
ARTIFACT_ID = 256

metadata = MetaData(naming_convention=NAMING_CONVENTION)

blueprints = Table(
    "blueprints", metadata,
    Column("blueprint_id", String(HASH), primary_key=True, comment="sha256 of the canonical IR"),
    Column("name", String(256), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("blueprint_class", String(32), nullable=False, index=True),
    Column("input_layout", String(8), nullable=False),
    Column("input_features", Integer, nullable=False),
    Column("output_layout", String(8), nullable=False),
    Column("output_features", Integer, nullable=False),
    Column("parameter_count", BigInteger, nullable=False),
    Column("tags_json", Text, nullable=False, comment="design tags of the IR, as a JSON list"),
    Column("ir_json", Text, nullable=False, comment="the BlueprintIR as submitted (first submission wins)"),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "created_at", "blueprint_id"),
)

blueprint_parents = Table(
    "blueprint_parents", metadata,
    Column("child_id", String(HASH), ForeignKey("blueprints.blueprint_id", ondelete="CASCADE"), primary_key=True),
    # No foreign key: a parent may be a design that was never stored here (lineage from elsewhere).
    Column("parent_id", String(ARTIFACT_ID), primary_key=True),
    Column("position", Integer, nullable=False),
    Index(None, "parent_id"),
)

blueprint_mutations = Table(
    "blueprint_mutations", metadata,
    Column("child_id", String(HASH), ForeignKey("blueprints.blueprint_id", ondelete="CASCADE"), primary_key=True),
    Column("parent_id", String(HASH), nullable=False, index=True),
    Column("operator", String(64), nullable=False, index=True),
    Column("generation", Integer, nullable=False),
    Column("detail", Text, nullable=False),
    Column("proposer", String(64), nullable=False, comment="who applied the mutation (karn)"),
)

artifacts = Table(
    "artifacts", metadata,
    Column("artifact_id", String(ARTIFACT_ID), primary_key=True),
    Column("blueprint_id", String(HASH), ForeignKey("blueprints.blueprint_id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("hardware", String(64), nullable=False),
    Column("pipeline", String(16), nullable=False),
    Column("toolchain_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input_shape_json", Text, nullable=False),
    Column("sha256", String(HASH)),
    Column("size_bytes", BigInteger),
    Column("blob_uri", Text),
    Column("compile_time_s", Float),
    Column("error", Text, comment="compiler error (FAILED) or rejection reason (REJECTED)"),
    Column("compile_tags_json", Text, nullable=False, comment="tags Tezzeret attached to the compiled artifact"),
    Column("tags_json", Text, nullable=False, comment="effective tags: design, compile, then empirical"),
    Column("validation_json", Text, comment="the latest UrabraskValidationReport"),
    # Denormalised for the kernel query: copied from the blueprint and the validation report.
    Column("blueprint_class", String(32), nullable=False),
    Column("layout", String(8), nullable=False),
    Column("features", Integer, nullable=False),
    Column("latency_ms", Float),
    Column("memory_mb", Float),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "status", "hardware", "layout", "features", "latency_ms"),
    Index(None, "status", "blueprint_class"),
    Index(None, "status", "memory_mb"),
    Index(None, "status", "created_at"),
)

artifact_tags = Table(
    "artifact_tags", metadata,
    Column("artifact_id", String(ARTIFACT_ID), ForeignKey("artifacts.artifact_id", ondelete="CASCADE"),
           primary_key=True),
    Column("tag", String(256), primary_key=True),
    Index(None, "tag", "artifact_id"),
)

artifact_events = Table(
    "artifact_events", metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("artifact_id", String(ARTIFACT_ID), nullable=False, index=True),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("source", String(32), nullable=False, comment="bus or rest"),
    Column("detail", Text),
    Column("at", UtcDateTime, nullable=False),
)

kernel_binaries = Table(
    "kernel_binaries", metadata,
    # No foreign key to artifacts: Tezzeret uploads the bytes before it reports the artifact compiled.
    Column("artifact_id", String(ARTIFACT_ID), primary_key=True),
    Column("sha256", String(HASH), nullable=False, index=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("blob_key", String(512), nullable=False),
    Column("uploaded_at", UtcDateTime, nullable=False),
)

field_reports = Table(
    "field_reports", metadata,
    Column("report_id", String(ARTIFACT_ID), primary_key=True),
    Column("blueprint_id", String(HASH), ForeignKey("blueprints.blueprint_id", ondelete="CASCADE"),
           nullable=False),
    Column("kernel_artifact_id", String(ARTIFACT_ID)),
    Column("seed_id", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("report_json", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Index(None, "blueprint_id", "received_at"),
)

policies = Table(
    "policies", metadata,
    Column("version", String(128), primary_key=True, comment="the learned policy version Simic named it by"),
    Column("sha256", String(HASH), nullable=False, comment="sha256 of the canonical JSON (sorted keys, compact)"),
    Column("size_bytes", BigInteger, nullable=False),
    Column("artifact_json", Text, nullable=False, comment="config + float32 weights as JSON; never pickle"),
    Column("created_at", UtcDateTime, nullable=False),
)

outbox = Table(
    "outbox", metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(512), nullable=False, unique=True,
           comment="one message per logical job, however often its cause is redelivered"),
    Column("topic", String(128), nullable=False),
    Column("message_key", String(256)),
    Column("payload_json", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Index(None, "published_at", "id"),
)
