"""Plain, frozen records returned by the store (never live ORM objects)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, TypeVar

from tpmap.store._common import RowLike

__all__ = [
    "AdverseEvent",
    "Clinic",
    "Episode",
    "Mark",
    "MarkChange",
    "NotFoundError",
    "Outcome",
    "Patient",
    "PressurePainThreshold",
    "SessionRecord",
    "SignInError",
    "UndoResult",
    "UserAccount",
    "record_from_row",
]


class NotFoundError(LookupError):
    """Raised when an id does not name a stored record (or one the user may not see)."""


class SignInError(ValueError):
    """A refused sign-in; the message is fit to show on the sign-in page."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


@dataclass(frozen=True, slots=True)
class Clinic:
    """A clinic: patients belong to one, clinicians to one or more."""

    id: int
    name: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class UserAccount:
    """An account as ``tpmap user list`` shows it (never its password hash)."""

    id: int
    name: str
    roles: tuple[str, ...]
    clinics: tuple[str, ...]
    clinic_ids: tuple[int, ...]
    active: bool
    created_at: dt.datetime
    created_by: str | None


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient, known only by a pseudonymous code."""

    id: int
    code: str
    sex: str
    birth_year: int | None
    created_at: dt.datetime
    clinic_id: int


@dataclass(frozen=True, slots=True)
class Episode:
    """An episode of care for one condition."""

    id: int
    patient_id: int
    condition: str
    affected_side: str
    start_date: dt.date
    symptom_duration_weeks: int | None
    note: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A treatment session."""

    id: int
    episode_id: int
    clinician: str
    date: dt.date
    nprs_before: int | None
    nprs_after: int | None
    note: str
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Mark:
    """A stored mark, with the date of its session (for drawing earlier sessions faded)."""

    id: int
    session_id: int
    session_date: dt.date
    view: str
    x: float
    y: float
    muscle: str
    side: str
    layer: str
    atlas_version: str
    muscle_overridden: bool
    technique: str | None
    insertions: int | None
    ltr_grade: str | None
    ltr_count: int | None
    depth_mm: float | None
    needle_length_mm: float | None
    needle_gauge_mm: float | None
    retention_min: float | None
    estim_frequency_hz: float | None
    estim_intensity_ma: float | None
    estim_duration_min: float | None
    tp_status: str | None
    referral_reproduced: bool | None
    note: str
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime | None
    updated_by: str | None
    deleted_at: dt.datetime | None
    deleted_by: str | None

    @property
    def deleted(self) -> bool:
        """True when the mark was (soft-)deleted."""
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class PressurePainThreshold:
    """A pressure pain threshold reading in kg/cm2."""

    id: int
    session_id: int
    site: str
    side: str | None
    kg_cm2: float
    deleted_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class AdverseEvent:
    """An adverse event reported for a session."""

    id: int
    session_id: int
    type: str
    severity: str
    note: str
    deleted_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """An outcome instrument score."""

    id: int
    episode_id: int
    instrument: str
    score: float
    date: dt.date
    deleted_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class UndoResult:
    """What an undo did: words for the status line, and the record it touched."""

    text: str
    record_id: int


@dataclass(frozen=True, slots=True)
class MarkChange:
    """One entry of a mark's change log; ``before``/``after`` hold the changed fields."""

    id: int
    mark_id: int
    session_id: int
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: dt.datetime
    user: str
    undo_of: int | None


_R = TypeVar("_R")


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def record_from_row(cls: type[_R], row: RowLike, **extra: Any) -> _R:
    """Build a record from a row mapping, taking only the record's own fields."""
    # Widened to plain ``type``: mypy does not take ``type[_R]`` as Hashable for the cache.
    kind: type = cls
    values = {name: extra[name] if name in extra else row[name] for name in _names(kind)}
    return cls(**values)
