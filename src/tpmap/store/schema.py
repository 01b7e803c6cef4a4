"""The database tables of tpmap (SQLAlchemy 2 declarative).

Table and column names are a contract: the research module, the CLI and the migrations code
against them. Change them only together with a new Alembic migration.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tpmap import model

__all__ = [
    "AdverseEventRow",
    "AuditChainRow",
    "AuditRow",
    "Base",
    "ClinicRow",
    "EpisodeRow",
    "LoginSessionRow",
    "MarkChangeRow",
    "MarkRow",
    "OutcomeChangeRow",
    "OutcomeMeasureRow",
    "PatientRow",
    "PressurePainThresholdRow",
    "SessionRow",
    "UTCDateTime",
    "UserClinicRow",
    "UserRow",
    "metadata",
    "utcnow",
]

# Explicit constraint names, so that migrations can address them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the zone (timestamptz); SQLite stores naive text, so values are
    normalised to UTC on the way in and tagged UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: tpmap stores timezone-aware UTC timestamps")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _one_of(column: str, values: Iterable[str], name: str | None = None) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name or column)


class Base(DeclarativeBase):
    """Declarative base sharing :data:`metadata`."""

    metadata = metadata

    if TYPE_CHECKING:
        # Every mapped class here is declared on one Table; DeclarativeBase types
        # ``__table__`` as the wider FromClause, which has no ``insert()`` or ``c`` the
        # store can use. Declared for the checker only, so the mapping is untouched.
        __table__: ClassVar[Table]


class ClinicRow(Base):
    """A clinic: every patient belongs to one, and a clinician sees the patients of theirs."""

    __tablename__ = "clinics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))


class UserRow(Base):
    """An account that signs in. ``roles`` is a comma-separated sorted list of role ids."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # Lower-cased name: names are unique and signed in with case-insensitively.
    name_key: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(100))


class UserClinicRow(Base):
    """Which clinics an account belongs to."""

    __tablename__ = "user_clinics"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), primary_key=True)


class LoginSessionRow(Base):
    """One sign-in: the browser holds a signed cookie with a random token, this its hash.

    It ends at sign-out (``ended_at``) or when idle longer than the server allows
    (``last_seen_at``); a disabled account ends all of them at their next request.
    """

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    address: Mapped[str | None] = mapped_column(String(64))


class AuditRow(Base):
    """The audit trail: one row per change, sign-in, account change or export.

    Written in the same transaction as what it records. ``seq`` numbers the rows without
    gaps and ``hash`` chains each row to the one before it (HMAC-SHA256 keyed with the
    server secret), so a row edited or removed directly in the database shows.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_action_at", "action", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(32))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    target: Mapped[str | None] = mapped_column(String(100))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    clinic_id: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainRow(Base):
    """The head of the audit chain (one row, id 1): appends lock it, so one chain results.

    ``head_mac`` authenticates (seq, hash) so that cutting rows off the end shows too;
    ``key_check`` identifies the key the chain is written with (a different secret is
    refused rather than silently starting a chain that cannot be verified).
    """

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    head_mac: Mapped[str | None] = mapped_column(String(64))
    key_check: Mapped[str | None] = mapped_column(String(64))


class PatientRow(Base):
    """A patient, known only by a pseudonymous code, in one clinic."""

    __tablename__ = "patients"
    # A code is unique within its clinic: two clinics may number their patients alike.
    __table_args__ = (
        _one_of("sex", model.SEXES),
        Index(None, "clinic_id", "code", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), index=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinics.id"), index=True)
    sex: Mapped[str] = mapped_column(String(16), default="unknown")
    birth_year: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))


class EpisodeRow(Base):
    """An episode of care: one condition, one affected side, several sessions."""

    __tablename__ = "episodes"
    __table_args__ = (
        _one_of("condition", model.CONDITIONS),
        _one_of("affected_side", model.AFFECTED_SIDES),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    condition: Mapped[str] = mapped_column(String(32))
    affected_side: Mapped[str] = mapped_column(String(8))
    start_date: Mapped[dt.date] = mapped_column(Date)
    symptom_duration_weeks: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))


class SessionRow(Base):
    """A treatment session (one visit)."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint("nprs_before BETWEEN 0 AND 10", name="nprs_before"),
        CheckConstraint("nprs_after BETWEEN 0 AND 10", name="nprs_after"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"), index=True)
    clinician: Mapped[str] = mapped_column(String(100))
    date: Mapped[dt.date] = mapped_column(Date)
    nprs_before: Mapped[int | None] = mapped_column(Integer)
    nprs_after: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    # Indexed (like the marks' change timestamps) for the research snapshot's refresh.
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    updated_by: Mapped[str | None] = mapped_column(String(100))


class MarkRow(Base):
    """One needled point on the diagram, with how it was needled (STRICTA)."""

    __tablename__ = "marks"
    __table_args__ = (
        _one_of("view", model.VIEWS),
        _one_of("side", model.SIDES),
        _one_of("layer", model.LAYERS),
        _one_of("technique", model.TECHNIQUES),
        _one_of("ltr_grade", model.LTR_GRADES),
        _one_of("tp_status", model.TP_STATUSES),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    view: Mapped[str] = mapped_column(String(16))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    muscle: Mapped[str] = mapped_column(String(64), index=True)
    side: Mapped[str] = mapped_column(String(8))
    layer: Mapped[str] = mapped_column(String(16))
    atlas_version: Mapped[str] = mapped_column(String(64))
    muscle_overridden: Mapped[bool] = mapped_column(Boolean, default=False)
    technique: Mapped[str | None] = mapped_column(String(32))
    insertions: Mapped[int | None] = mapped_column(Integer)
    ltr_grade: Mapped[str | None] = mapped_column(String(16))
    ltr_count: Mapped[int | None] = mapped_column(Integer)
    depth_mm: Mapped[float | None] = mapped_column(Float)
    needle_length_mm: Mapped[float | None] = mapped_column(Float)
    needle_gauge_mm: Mapped[float | None] = mapped_column(Float)
    retention_min: Mapped[float | None] = mapped_column(Float)
    estim_frequency_hz: Mapped[float | None] = mapped_column(Float)
    estim_intensity_ma: Mapped[float | None] = mapped_column(Float)
    estim_duration_min: Mapped[float | None] = mapped_column(Float)
    tp_status: Mapped[str | None] = mapped_column(String(16))
    referral_reproduced: Mapped[bool | None] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")
    # The three timestamps are indexed for the research snapshot's incremental refresh.
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    updated_by: Mapped[str | None] = mapped_column(String(100))
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100))


class PressurePainThresholdRow(Base):
    """A pressure pain threshold reading (kg/cm2) taken in a session."""

    __tablename__ = "pressure_pain_thresholds"
    __table_args__ = (_one_of("side", model.SIDES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    site: Mapped[str] = mapped_column(String(64))
    side: Mapped[str | None] = mapped_column(String(8))
    kg_cm2: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(100))


class AdverseEventRow(Base):
    """An adverse event reported for a session."""

    __tablename__ = "adverse_events"
    __table_args__ = (
        _one_of("type", model.ADVERSE_EVENT_TYPES),
        _one_of("severity", model.SEVERITIES),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(100))


class OutcomeMeasureRow(Base):
    """An outcome instrument score for an episode on a date."""

    __tablename__ = "outcome_measures"
    __table_args__ = (_one_of("instrument", tuple(model.OUTCOME_INSTRUMENTS)),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"), index=True)
    instrument: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    date: Mapped[dt.date] = mapped_column(Date)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(100))


class OutcomeChangeRow(Base):
    """Append-only log of every change to an outcome score; the Outcomes panel's undo walks it.

    Like :class:`MarkChangeRow`, per episode: ``before``/``after`` hold JSON objects of the
    changed fields, and an entry written by an undo points at the entry it reverted.
    """

    __tablename__ = "outcome_changes"
    __table_args__ = (_one_of("action", ("create", "update", "delete", "restore")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outcome_id: Mapped[int] = mapped_column(ForeignKey("outcome_measures.id"), index=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    user: Mapped[str] = mapped_column(String(100))
    undo_of: Mapped[int | None] = mapped_column(ForeignKey("outcome_changes.id"), index=True)


class MarkChangeRow(Base):
    """Append-only log of every change to a mark; the page's undo walks it backwards.

    ``before``/``after`` hold JSON objects of the changed fields. An entry written by an undo
    points at the entry it reverted through ``undo_of``; such entries are never undone
    themselves, and an entry with an undo pointing at it counts as undone.
    """

    __tablename__ = "mark_changes"
    __table_args__ = (_one_of("action", ("create", "update", "delete", "restore", "move")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mark_id: Mapped[int] = mapped_column(ForeignKey("marks.id"), index=True)
    # Denormalised from the mark so that undo finds a session's latest change in one index.
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user: Mapped[str] = mapped_column(String(100))
    undo_of: Mapped[int | None] = mapped_column(ForeignKey("mark_changes.id"), index=True)
