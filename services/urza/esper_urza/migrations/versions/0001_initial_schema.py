"""Initial schema: blueprints and lineage, artifacts with tags and status events, binaries, field reports, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Written out rather than imported from the models, so this migration never changes after it ships.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "blueprints",
        sa.Column("blueprint_id", sa.String(64), nullable=False, comment="sha256 of the canonical IR"),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("blueprint_class", sa.String(32), nullable=False),
        sa.Column("input_layout", sa.String(8), nullable=False),
        sa.Column("input_features", sa.Integer(), nullable=False),
        sa.Column("output_layout", sa.String(8), nullable=False),
        sa.Column("output_features", sa.Integer(), nullable=False),
        sa.Column("parameter_count", sa.BigInteger(), nullable=False),
        sa.Column("tags_json", sa.Text(), nullable=False, comment="design tags of the IR, as a JSON list"),
        sa.Column("ir_json", sa.Text(), nullable=False, comment="the BlueprintIR as submitted (first submission wins)"),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("blueprint_id", name="pk_blueprints"),
    )
    op.create_index("ix_blueprints_name", "blueprints", ["name"])
    op.create_index("ix_blueprints_blueprint_class", "blueprints", ["blueprint_class"])
    op.create_index("ix_blueprints_created_at_blueprint_id", "blueprints", ["created_at", "blueprint_id"])

    op.create_table(
        "blueprint_parents",
        sa.Column("child_id", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.String(256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["child_id"], ["blueprints.blueprint_id"],
                                name="fk_blueprint_parents_child_id_blueprints", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name="pk_blueprint_parents"),
    )
    op.create_index("ix_blueprint_parents_parent_id", "blueprint_parents", ["parent_id"])

    op.create_table(
        "artifacts",
        sa.Column("artifact_id", sa.String(256), nullable=False),
        sa.Column("blueprint_id", sa.String(64), nullable=False),
        sa.Column("hardware", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(16), nullable=False),
        sa.Column("toolchain_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_shape_json", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("blob_uri", sa.Text(), nullable=True),
        sa.Column("compile_time_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True,
                  comment="compiler error (FAILED) or rejection reason (REJECTED)"),
        sa.Column("compile_tags_json", sa.Text(), nullable=False,
                  comment="tags Tezzeret attached to the compiled artifact"),
        sa.Column("tags_json", sa.Text(), nullable=False, comment="effective tags: design, compile, then empirical"),
        sa.Column("validation_json", sa.Text(), nullable=True, comment="the latest UrabraskValidationReport"),
        sa.Column("blueprint_class", sa.String(32), nullable=False),
        sa.Column("layout", sa.String(8), nullable=False),
        sa.Column("features", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("memory_mb", sa.Float(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["blueprint_id"], ["blueprints.blueprint_id"],
                                name="fk_artifacts_blueprint_id_blueprints", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("artifact_id", name="pk_artifacts"),
    )
    op.create_index("ix_artifacts_blueprint_id", "artifacts", ["blueprint_id"])
    op.create_index("ix_artifacts_status_hardware_layout_features_latency_ms", "artifacts",
                    ["status", "hardware", "layout", "features", "latency_ms"])
    op.create_index("ix_artifacts_status_blueprint_class", "artifacts", ["status", "blueprint_class"])
    op.create_index("ix_artifacts_status_memory_mb", "artifacts", ["status", "memory_mb"])
    op.create_index("ix_artifacts_status_created_at", "artifacts", ["status", "created_at"])

    op.create_table(
        "artifact_tags",
        sa.Column("artifact_id", sa.String(256), nullable=False),
        sa.Column("tag", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.artifact_id"],
                                name="fk_artifact_tags_artifact_id_artifacts", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("artifact_id", "tag", name="pk_artifact_tags"),
    )
    op.create_index("ix_artifact_tags_tag_artifact_id", "artifact_tags", ["tag", "artifact_id"])

    op.create_table(
        "artifact_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("artifact_id", sa.String(256), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False, comment="bus or rest"),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_artifact_events"),
    )
    op.create_index("ix_artifact_events_artifact_id", "artifact_events", ["artifact_id"])

    op.create_table(
        "kernel_binaries",
        sa.Column("artifact_id", sa.String(256), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_key", sa.String(512), nullable=False),
        sa.Column("uploaded_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("artifact_id", name="pk_kernel_binaries"),
    )
    op.create_index("ix_kernel_binaries_sha256", "kernel_binaries", ["sha256"])

    op.create_table(
        "field_reports",
        sa.Column("report_id", sa.String(256), nullable=False),
        sa.Column("blueprint_id", sa.String(64), nullable=False),
        sa.Column("kernel_artifact_id", sa.String(256), nullable=True),
        sa.Column("seed_id", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["blueprint_id"], ["blueprints.blueprint_id"],
                                name="fk_field_reports_blueprint_id_blueprints", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("report_id", name="pk_field_reports"),
    )
    op.create_index("ix_field_reports_blueprint_id_received_at", "field_reports", ["blueprint_id", "received_at"])

    op.create_table(
        "outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(512), nullable=False,
                  comment="one message per logical job, however often its cause is redelivered"),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("message_key", sa.String(256), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_outbox_dedupe_key"),
    )
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])


def downgrade() -> None:
    for table in ("outbox", "field_reports", "kernel_binaries", "artifact_events", "artifact_tags", "artifacts",
                  "blueprint_parents", "blueprints"):
        op.drop_table(table)
