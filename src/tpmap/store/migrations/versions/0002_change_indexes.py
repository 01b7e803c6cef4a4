"""Indexes for the research snapshot's incremental refresh (change timestamps).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# (table, column): each gets a plain index named by the naming convention, ix_<table>_<column>.
_INDEXED = (
    ("marks", "created_at"),
    ("marks", "updated_at"),
    ("marks", "deleted_at"),
    ("sessions", "updated_at"),
    ("mark_changes", "at"),
)


def upgrade() -> None:
    for table, column in _INDEXED:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(_INDEXED):
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
