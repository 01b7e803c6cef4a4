"""Patient codes are unique within a clinic, not across clinics.

Two clinics commonly number their patients the same way (P-001, P-002, ...): a code unique
across the whole server stopped the second clinic from using its own code, and the message
"already in use" told its clinician that another clinic has a patient with that code.
Replaces the unique index on ``patients.code`` by a plain one (lookups by code stay fast)
and adds a unique index on ``(clinic_id, code)``. No row changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_patients_code"), table_name="patients")
    op.create_index(op.f("ix_patients_code"), "patients", ["code"], unique=False)
    op.create_index(
        op.f("ix_patients_clinic_id_code"), "patients", ["clinic_id", "code"], unique=True
    )


def downgrade() -> None:
    # The older schema cannot hold one code in two clinics: refuse rather than rename.
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM (SELECT code FROM patients GROUP BY code "
                "HAVING count(*) > 1) AS shared"
            )
        )
        .scalar_one()
    )
    if shared:
        raise RuntimeError(
            f"cannot downgrade below 0006: {shared} patient codes are used in more than one "
            "clinic, which older versions of tpmap cannot store"
        )
    op.drop_index(op.f("ix_patients_clinic_id_code"), table_name="patients")
    op.drop_index(op.f("ix_patients_code"), table_name="patients")
    op.create_index(op.f("ix_patients_code"), "patients", ["code"], unique=True)
