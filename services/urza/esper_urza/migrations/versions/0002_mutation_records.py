"""Lineage gains the mutation record: which operator made a child from which parent, in which generation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blueprint_mutations",
        sa.Column("child_id", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False, comment="who applied the mutation (karn)"),
        sa.ForeignKeyConstraint(["child_id"], ["blueprints.blueprint_id"],
                                name="fk_blueprint_mutations_child_id_blueprints", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("child_id", name="pk_blueprint_mutations"),
    )
    op.create_index("ix_blueprint_mutations_parent_id", "blueprint_mutations", ["parent_id"])
    op.create_index("ix_blueprint_mutations_operator", "blueprint_mutations", ["operator"])


def downgrade() -> None:
    op.drop_table("blueprint_mutations")
