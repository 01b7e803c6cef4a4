"""Clinics, accounts, sign-ins, the audit trail, and soft deletion of session readings.

Every existing patient moves into a clinic named "Default clinic" (created here).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

DEFAULT_CLINIC = "Default clinic"
GENESIS = "0" * 64
_SOFT_DELETED = ("pressure_pain_thresholds", "adverse_events", "outcome_measures")


def _stamp() -> sa.Column:  # a fresh Column each time: a Column belongs to one table
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "clinics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        _stamp(),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinics")),
        sa.UniqueConstraint("name", name=op.f("uq_clinics_name")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _stamp(),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name_key", name=op.f("uq_users_name_key")),
    )
    op.create_table(
        "user_clinics",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_user_clinics_clinic_id_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_clinics_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", "clinic_id", name=op.f("pk_user_clinics")),
    )
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _stamp(),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_login_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_login_sessions_token_hash")),
    )
    op.create_index(op.f("ix_login_sessions_user_id"), "login_sessions", ["user_id"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(length=100), nullable=True),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("clinic_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_log_seq")),
    )
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"], unique=False)
    op.create_index(op.f("ix_audit_log_actor"), "audit_log", ["actor"], unique=False)
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_index(op.f("ix_audit_log_patient_id"), "audit_log", ["patient_id"], unique=False)
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("head_mac", sa.String(length=64), nullable=True),
        sa.Column("key_check", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain")),
    )

    bind = op.get_bind()
    chain = sa.table(
        "audit_chain", sa.column("id"), sa.column("seq"), sa.column("hash"), sa.column("head_mac")
    )
    bind.execute(sa.insert(chain).values(id=1, seq=0, hash=GENESIS, head_mac=None))
    clinics = sa.table(
        "clinics",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        # Plain naive UTC text on SQLite, timestamptz on PostgreSQL, as the store writes them.
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("created_by", sa.String()),
    )
    now = dt.datetime.now(dt.UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    default_id = bind.execute(
        sa.insert(clinics)
        .values(name=DEFAULT_CLINIC, created_at=now, created_by="migration 0003")
        .returning(clinics.c.id)
    ).scalar_one()

    # Add the column, fill it, then make it required (SQLite rebuilds the table in batch mode).
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("clinic_id", sa.Integer(), nullable=True))
    patients = sa.table("patients", sa.column("clinic_id", sa.Integer()))
    bind.execute(sa.update(patients).values(clinic_id=default_id))
    with op.batch_alter_table("patients") as batch:
        batch.alter_column("clinic_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            op.f("fk_patients_clinic_id_clinics"), "clinics", ["clinic_id"], ["id"]
        )
        batch.create_index(op.f("ix_patients_clinic_id"), ["clinic_id"], unique=False)

    for table in _SOFT_DELETED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
            batch.add_column(sa.Column("deleted_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    for table in reversed(_SOFT_DELETED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("deleted_by")
            batch.drop_column("deleted_at")
    with op.batch_alter_table("patients") as batch:
        batch.drop_index(op.f("ix_patients_clinic_id"))
        batch.drop_constraint(op.f("fk_patients_clinic_id_clinics"), type_="foreignkey")
        batch.drop_column("clinic_id")
    op.drop_table("audit_chain")
    op.drop_index(op.f("ix_audit_log_patient_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_actor"), table_name="audit_log")
    op.drop_index("ix_audit_log_action_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_login_sessions_user_id"), table_name="login_sessions")
    op.drop_table("login_sessions")
    op.drop_table("user_clinics")
    op.drop_table("users")
    op.drop_table("clinics")
