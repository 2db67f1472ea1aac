"""Learned Tamiyo policies (Simic's artifacts): one immutable JSON document per version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("version", sa.String(128), nullable=False,
                  comment="the learned policy version Simic named it by"),
        sa.Column("sha256", sa.String(64), nullable=False,
                  comment="sha256 of the canonical JSON (sorted keys, compact)"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("artifact_json", sa.Text(), nullable=False, comment="config + float32 weights as JSON; never pickle"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_policies"),
    )


def downgrade() -> None:
    op.drop_table("policies")
