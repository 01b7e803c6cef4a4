"""Initial schema: patients, episodes, sessions, marks, readings, outcomes, mark change log.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _one_of(name: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    # Values are frozen here on purpose: a later vocabulary change needs its own migration.
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=op.f(name))


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.Column("birth_year", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        _one_of("ck_patients_sex", "sex", ("female", "male", "other", "unknown")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    op.create_index(op.f("ix_patients_code"), "patients", ["code"], unique=True)
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("condition", sa.String(length=32), nullable=False),
        sa.Column("affected_side", sa.String(length=8), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("symptom_duration_weeks", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        _one_of("ck_episodes_affected_side", "affected_side", ("left", "right", "both")),
        _one_of(
            "ck_episodes_condition",
            "condition",
            (
                "patellofemoral_pain",
                "knee_osteoarthritis",
                "lateral_knee_pain",
                "total_knee_arthroplasty",
                "other",
            ),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_episodes_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episodes")),
    )
    op.create_index(op.f("ix_episodes_patient_id"), "episodes", ["patient_id"], unique=False)
    op.create_table(
        "outcome_measures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        _one_of(
            "ck_outcome_measures_instrument",
            "instrument",
            (
                "nprs",
                "vas",
                "womac_function",
                "kujala",
                "akps",
                "lefs",
                "koos_pain",
                "koos_symptoms",
                "koos_adl",
                "koos_sport",
                "koos_qol",
            ),
        ),
        sa.ForeignKeyConstraint(
            ["episode_id"], ["episodes.id"], name=op.f("fk_outcome_measures_episode_id_episodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome_measures")),
    )
    op.create_index(
        op.f("ix_outcome_measures_episode_id"), "outcome_measures", ["episode_id"], unique=False
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("clinician", sa.String(length=100), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("nprs_before", sa.Integer(), nullable=True),
        sa.Column("nprs_after", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(length=100), nullable=True),
        sa.CheckConstraint("nprs_after BETWEEN 0 AND 10", name=op.f("ck_sessions_nprs_after")),
        sa.CheckConstraint("nprs_before BETWEEN 0 AND 10", name=op.f("ck_sessions_nprs_before")),
        sa.ForeignKeyConstraint(
            ["episode_id"], ["episodes.id"], name=op.f("fk_sessions_episode_id_episodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_episode_id"), "sessions", ["episode_id"], unique=False)
    op.create_table(
        "adverse_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        _one_of("ck_adverse_events_severity", "severity", ("mild", "significant", "serious")),
        _one_of(
            "ck_adverse_events_type",
            "type",
            (
                "bruising",
                "bleeding",
                "pain_during",
                "pain_after",
                "aggravated_symptoms",
                "drowsiness",
                "headache",
                "nausea",
                "other",
            ),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_adverse_events_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adverse_events")),
    )
    op.create_index(
        op.f("ix_adverse_events_session_id"), "adverse_events", ["session_id"], unique=False
    )
    op.create_table(
        "marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("view", sa.String(length=16), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("muscle", sa.String(length=64), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("layer", sa.String(length=16), nullable=False),
        sa.Column("atlas_version", sa.String(length=64), nullable=False),
        sa.Column("muscle_overridden", sa.Boolean(), nullable=False),
        sa.Column("technique", sa.String(length=32), nullable=True),
        sa.Column("insertions", sa.Integer(), nullable=True),
        sa.Column("ltr_grade", sa.String(length=16), nullable=True),
        sa.Column("ltr_count", sa.Integer(), nullable=True),
        sa.Column("depth_mm", sa.Float(), nullable=True),
        sa.Column("needle_length_mm", sa.Float(), nullable=True),
        sa.Column("needle_gauge_mm", sa.Float(), nullable=True),
        sa.Column("retention_min", sa.Float(), nullable=True),
        sa.Column("estim_frequency_hz", sa.Float(), nullable=True),
        sa.Column("estim_intensity_ma", sa.Float(), nullable=True),
        sa.Column("estim_duration_min", sa.Float(), nullable=True),
        sa.Column("tp_status", sa.String(length=16), nullable=True),
        sa.Column("referral_reproduced", sa.Boolean(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(length=100), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.String(length=100), nullable=True),
        _one_of("ck_marks_layer", "layer", ("superficial", "deep")),
        _one_of("ck_marks_ltr_grade", "ltr_grade", ("none", "weak", "medium", "strong")),
        _one_of("ck_marks_side", "side", ("left", "right")),
        _one_of(
            "ck_marks_technique",
            "technique",
            ("static", "pistoning", "electrical", "periosteal_electrical"),
        ),
        _one_of("ck_marks_tp_status", "tp_status", ("active", "latent")),
        _one_of(
            "ck_marks_view", "view", ("anterior", "posterior", "lateral_left", "lateral_right")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_marks_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marks")),
    )
    op.create_index(op.f("ix_marks_muscle"), "marks", ["muscle"], unique=False)
    op.create_index(op.f("ix_marks_session_id"), "marks", ["session_id"], unique=False)
    op.create_table(
        "pressure_pain_thresholds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=True),
        sa.Column("kg_cm2", sa.Float(), nullable=False),
        _one_of("ck_pressure_pain_thresholds_side", "side", ("left", "right")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_pressure_pain_thresholds_session_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pressure_pain_thresholds")),
    )
    op.create_index(
        op.f("ix_pressure_pain_thresholds_session_id"),
        "pressure_pain_thresholds",
        ["session_id"],
        unique=False,
    )
    op.create_table(
        "mark_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mark_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("undo_of", sa.Integer(), nullable=True),
        _one_of(
            "ck_mark_changes_action", "action", ("create", "update", "delete", "restore", "move")
        ),
        sa.ForeignKeyConstraint(
            ["mark_id"], ["marks.id"], name=op.f("fk_mark_changes_mark_id_marks")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_mark_changes_session_id_sessions")
        ),
        sa.ForeignKeyConstraint(
            ["undo_of"], ["mark_changes.id"], name=op.f("fk_mark_changes_undo_of_mark_changes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mark_changes")),
    )
    op.create_index(op.f("ix_mark_changes_mark_id"), "mark_changes", ["mark_id"], unique=False)
    op.create_index(
        op.f("ix_mark_changes_session_id"), "mark_changes", ["session_id"], unique=False
    )
    op.create_index(op.f("ix_mark_changes_undo_of"), "mark_changes", ["undo_of"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mark_changes_undo_of"), table_name="mark_changes")
    op.drop_index(op.f("ix_mark_changes_session_id"), table_name="mark_changes")
    op.drop_index(op.f("ix_mark_changes_mark_id"), table_name="mark_changes")
    op.drop_table("mark_changes")
    op.drop_index(
        op.f("ix_pressure_pain_thresholds_session_id"), table_name="pressure_pain_thresholds"
    )
    op.drop_table("pressure_pain_thresholds")
    op.drop_index(op.f("ix_marks_session_id"), table_name="marks")
    op.drop_index(op.f("ix_marks_muscle"), table_name="marks")
    op.drop_table("marks")
    op.drop_index(op.f("ix_adverse_events_session_id"), table_name="adverse_events")
    op.drop_table("adverse_events")
    op.drop_index(op.f("ix_sessions_episode_id"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_index(op.f("ix_outcome_measures_episode_id"), table_name="outcome_measures")
    op.drop_table("outcome_measures")
    op.drop_index(op.f("ix_episodes_patient_id"), table_name="episodes")
    op.drop_table("episodes")
    op.drop_index(op.f("ix_patients_code"), table_name="patients")
    op.drop_table("patients")
