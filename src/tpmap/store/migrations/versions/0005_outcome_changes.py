"""The change log of outcome scores, so that an edit or a removal can be undone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "outcome_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outcome_id", sa.Integer(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("undo_of", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "action IN ('create', 'update', 'delete', 'restore')",
            name=op.f("ck_outcome_changes_action"),
        ),
        sa.ForeignKeyConstraint(
            ["outcome_id"],
            ["outcome_measures.id"],
            name=op.f("fk_outcome_changes_outcome_id_outcome_measures"),
        ),
        sa.ForeignKeyConstraint(
            ["episode_id"], ["episodes.id"], name=op.f("fk_outcome_changes_episode_id_episodes")
        ),
        sa.ForeignKeyConstraint(
            ["undo_of"],
            ["outcome_changes.id"],
            name=op.f("fk_outcome_changes_undo_of_outcome_changes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome_changes")),
    )
    for column in ("outcome_id", "episode_id", "undo_of"):
        op.create_index(op.f(f"ix_outcome_changes_{column}"), "outcome_changes", [column])


def downgrade() -> None:
    for column in ("outcome_id", "episode_id", "undo_of"):
        op.drop_index(op.f(f"ix_outcome_changes_{column}"), table_name="outcome_changes")
    op.drop_table("outcome_changes")
