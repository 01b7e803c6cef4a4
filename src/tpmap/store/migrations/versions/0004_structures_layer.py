"""Marks may lie on the atlas's third layer, ``structures`` (ligaments, tendons, periosteum).

Widens the CHECK constraint on ``marks.layer``; no row changes. SQLite cannot alter a
constraint, so the table is recreated in batch mode (every row, index, foreign key and the
other constraints are carried over); PostgreSQL drops and re-adds the constraint.

Revision ID: 0004
Revises: 0003
Create Date: 2025-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Values are frozen here on purpose (as in 0001): a later vocabulary change needs its own
# migration, and this one must do the same thing whatever model.py says then.
_BEFORE = ("superficial", "deep")
_AFTER = ("superficial", "deep", "structures")
_NAME = "ck_marks_layer"


def _allow(values: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{v}'" for v in values)
    with op.batch_alter_table("marks") as batch:
        batch.drop_constraint(op.f(_NAME), type_="check")
        batch.create_check_constraint(op.f(_NAME), sa.text(f"layer IN ({listed})"))


def upgrade() -> None:
    _allow(_AFTER)


def downgrade() -> None:
    # Narrowing the constraint would fail on (or silently need to delete) recorded marks of
    # the structures layer: refuse, and say what stands in the way.
    count = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM marks WHERE layer = 'structures'"))
        .scalar_one()
    )
    if count:
        raise RuntimeError(
            f"cannot downgrade below 0004: {count} marks are on the structures layer "
            "(ligaments, tendons, bone), which older versions of tpmap cannot store"
        )
    _allow(_BEFORE)
