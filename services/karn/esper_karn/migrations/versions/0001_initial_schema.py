"""Initial schema: Karn's view of the library, field reports and validation reports.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Written out rather than imported from the models, so this migration never changes after it ships.
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "karn_blueprints",
        sa.Column("blueprint_id", sa.String(64), nullable=False, comment="sha256 of the canonical IR"),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False, comment="blueprint class and layout, e.g. mlp:BD"),
        sa.Column("layout", sa.String(8), nullable=False),
        sa.Column("features", sa.Integer(), nullable=False, comment="feature size of the input interface"),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True,
                  comment="from the mutation record; null for designed blueprints"),
        sa.Column("operator", sa.String(64), nullable=True, comment="the mutation operator that made it"),
        sa.Column("ir_json", sa.Text(), nullable=False),
        sa.Column("vector_json", sa.Text(), nullable=False, comment="the IR's feature vector (esper_karn.features)"),
        sa.Column("proposed_by_karn", sa.Boolean(), nullable=False, comment="submitted by this Karn"),
        sa.Column("failed_at", _TS, nullable=True, comment="when Urza showed every artifact FAILED to compile"),
        sa.Column("seen_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("blueprint_id", name="pk_karn_blueprints"),
    )
    op.create_index("ix_karn_blueprints_kind", "karn_blueprints", ["kind"])
    op.create_index("ix_karn_blueprints_parent_id", "karn_blueprints", ["parent_id"])
    op.create_index("ix_karn_blueprints_proposed_by_karn_seen_at", "karn_blueprints", ["proposed_by_karn", "seen_at"])

    op.create_table(
        "karn_field_reports",
        sa.Column("report_id", sa.String(256), nullable=False),
        sa.Column("blueprint_id", sa.String(256), nullable=False),
        sa.Column("kernel_artifact_id", sa.String(256), nullable=True),
        sa.Column("seed_id", sa.String(256), nullable=False),
        sa.Column("run_id", sa.String(256), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("pre_metric", sa.Float(), nullable=False),
        sa.Column("post_metric", sa.Float(), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("report_id", name="pk_karn_field_reports"),
    )
    op.create_index("ix_karn_field_reports_blueprint_id", "karn_field_reports", ["blueprint_id"])

    op.create_table(
        "karn_validation_reports",
        sa.Column("artifact_id", sa.String(256), nullable=False),
        sa.Column("measured_at", _TS, nullable=False, comment="a re-validation is a new report"),
        sa.Column("blueprint_id", sa.String(64), nullable=False, comment="the artifact id's first 64 characters"),
        sa.Column("hardware", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("latency_ms_p50", sa.Float(), nullable=False),
        sa.Column("memory_mb_peak", sa.Float(), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("artifact_id", "measured_at", name="pk_karn_validation_reports"),
    )
    op.create_index("ix_karn_validation_reports_blueprint_id", "karn_validation_reports", ["blueprint_id"])


def downgrade() -> None:
    for table in ("karn_validation_reports", "karn_field_reports", "karn_blueprints"):
        op.drop_table(table)
