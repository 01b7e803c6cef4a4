"""The clinical record as one signed-in clinician may see and change it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from tpmap import model
from tpmap.auth import Principal
from tpmap.store._records import (
    AdverseEvent,
    Clinic,
    Episode,
    Mark,
    MarkChange,
    NotFoundError,
    Outcome,
    Patient,
    PressurePainThreshold,
    SessionRecord,
    UndoResult,
)

if TYPE_CHECKING:
    from tpmap.store._store import Store

__all__ = ["NOT_FOUND", "ScopedStore"]

#: The one message for an id that does not exist and for one of another clinic: the two
#: must look alike, or probing ids would tell which exist elsewhere.
NOT_FOUND = "not found"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _same_not_found(method: Callable[_P, _T]) -> Callable[_P, _T]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except NotFoundError:
            raise NotFoundError(NOT_FOUND) from None

    return wrapper


class ScopedStore:
    """A :class:`~tpmap.store.Store` bound to a principal: the clinician page's only door.

    Every method checks, in the same transaction as its work, that the principal's account
    still exists, is active, holds the clinician role (and, for a principal from a sign-in,
    that the sign-in has not ended), and that every id belongs to one of the account's
    clinics as they are *now* in the database. An id that does not exist and an id of
    another clinic both raise ``NotFoundError("not found")`` and change nothing; an account
    that may not see patients raises :class:`~tpmap.auth.AccessDenied`. Changes are recorded
    under the principal's name. Researchers and admins without the clinician role get no
    patient data from it.
    """

    def __init__(self, store: Store, principal: Principal) -> None:
        if not isinstance(principal, Principal):
            raise TypeError("ScopedStore needs a tpmap.auth.Principal")
        self._store = store
        self.principal = principal

    def __repr__(self) -> str:
        return f"ScopedStore({self._store!r}, {self.principal.name!r})"

    @property
    def user(self) -> str:
        """The name changes are recorded under."""
        return self.principal.name

    # -- clinics and patients ------------------------------------------------------------

    def clinics(self) -> list[Clinic]:
        """The principal's clinics (to choose where a new patient belongs)."""
        store = self._store
        with store._read() as conn:
            actor = store._actor(conn, self.principal)
        return [c for c in store.list_clinics() if c.id in (actor.clinics or ())]

    def find_patients(self, query: str = "", limit: int = 20) -> list[Patient]:
        """Patients of the principal's clinics whose code contains ``query``."""
        return self._store.find_patients(query, limit, scope=self.principal)

    def patient_by_code(self, code: str) -> Patient | None:
        """The patient of the principal's clinics with this code, or None."""
        return self._store.patient_by_code(code, scope=self.principal)

    @_same_not_found
    def get_patient(self, patient_id: int) -> Patient:
        """A patient of the principal's clinics."""
        return self._store.get_patient(patient_id, scope=self.principal)

    def create_patient(
        self, patient: model.PatientInput | Mapping[str, Any], *, clinic_id: int | None = None
    ) -> Patient:
        """Create a patient in one of the principal's clinics (the only one by default)."""
        return self._store.create_patient(patient, self.principal, clinic_id=clinic_id)

    # -- episodes and sessions -----------------------------------------------------------

    @_same_not_found
    def list_episodes(self, patient_id: int) -> list[Episode]:
        """A patient's episodes, oldest first."""
        return self._store.list_episodes(patient_id, scope=self.principal)

    @_same_not_found
    def get_episode(self, episode_id: int) -> Episode:
        """One episode."""
        return self._store.get_episode(episode_id, scope=self.principal)

    @_same_not_found
    def create_episode(
        self, patient_id: int, episode: model.EpisodeInput | Mapping[str, Any]
    ) -> Episode:
        """Open an episode of care for a patient."""
        return self._store.create_episode(patient_id, episode, self.principal)

    @_same_not_found
    def list_sessions(self, episode_id: int) -> list[SessionRecord]:
        """An episode's sessions, oldest first."""
        return self._store.list_sessions(episode_id, scope=self.principal)

    @_same_not_found
    def get_session(self, session_id: int) -> SessionRecord:
        """One session."""
        return self._store.get_session(session_id, scope=self.principal)

    @_same_not_found
    def create_session(
        self, episode_id: int, session: model.SessionInput | Mapping[str, Any]
    ) -> SessionRecord:
        """Record a treatment session in an episode."""
        return self._store.create_session(episode_id, session, self.principal)

    @_same_not_found
    def update_session(self, session_id: int, fields: Mapping[str, Any]) -> SessionRecord:
        """Change some fields of a session."""
        return self._store.update_session(session_id, fields, self.principal)

    # -- marks ---------------------------------------------------------------------------

    @_same_not_found
    def add_mark(self, session_id: int, mark: model.MarkInput | Mapping[str, Any]) -> Mark:
        """Store a needled point in a session."""
        return self._store.add_mark(session_id, mark, self.principal)

    @_same_not_found
    def get_mark(self, mark_id: int) -> Mark:
        """One mark, deleted or not."""
        return self._store.get_mark(mark_id, scope=self.principal)

    @_same_not_found
    def update_mark(self, mark_id: int, fields: Mapping[str, Any]) -> Mark:
        """Change some fields of a mark."""
        return self._store.update_mark(mark_id, fields, self.principal)

    @_same_not_found
    def move_mark(
        self,
        mark_id: int,
        x: float,
        y: float,
        muscle: str,
        side: str,
        layer: str,
        *,
        view: str | None = None,
    ) -> Mark:
        """Move a mark (its muscle comes from the atlas again)."""
        return self._store.move_mark(mark_id, x, y, muscle, side, layer, self.principal, view=view)

    @_same_not_found
    def delete_mark(self, mark_id: int) -> Mark:
        """Hide a mark (soft deletion)."""
        return self._store.delete_mark(mark_id, self.principal)

    @_same_not_found
    def restore_mark(self, mark_id: int) -> Mark:
        """Bring back a deleted mark."""
        return self._store.restore_mark(mark_id, self.principal)

    @_same_not_found
    def undo_last(self, session_id: int) -> str | None:
        """Revert the latest change to this session's marks not yet undone."""
        return self._store.undo_last(session_id, self.principal)

    @_same_not_found
    def session_marks(self, session_id: int, *, include_deleted: bool = False) -> list[Mark]:
        """The marks of one session."""
        return self._store.session_marks(
            session_id, include_deleted=include_deleted, scope=self.principal
        )

    @_same_not_found
    def episode_marks(self, episode_id: int) -> list[Mark]:
        """All visible marks of an episode's sessions."""
        return self._store.episode_marks(episode_id, scope=self.principal)

    @_same_not_found
    def mark_history(self, mark_id: int) -> list[MarkChange]:
        """The change log of one mark."""
        return self._store.mark_history(mark_id, scope=self.principal)

    # -- session readings and outcomes ---------------------------------------------------

    @_same_not_found
    def add_pressure_pain_threshold(
        self, session_id: int, reading: model.PressurePainThresholdInput | Mapping[str, Any]
    ) -> PressurePainThreshold:
        """Record a pressure pain threshold."""
        return self._store.add_pressure_pain_threshold(session_id, reading, self.principal)

    @_same_not_found
    def list_pressure_pain_thresholds(
        self, session_id: int, *, include_deleted: bool = False
    ) -> list[PressurePainThreshold]:
        """A session's pressure pain thresholds."""
        return self._store.list_pressure_pain_thresholds(
            session_id, include_deleted=include_deleted, scope=self.principal
        )

    @_same_not_found
    def delete_pressure_pain_threshold(self, reading_id: int) -> PressurePainThreshold:
        """Remove a reading entered by mistake (restorable)."""
        return self._store.delete_pressure_pain_threshold(reading_id, self.principal)

    @_same_not_found
    def restore_pressure_pain_threshold(self, reading_id: int) -> PressurePainThreshold:
        """Bring back a deleted reading."""
        return self._store.restore_pressure_pain_threshold(reading_id, self.principal)

    @_same_not_found
    def add_adverse_event(
        self, session_id: int, event: model.AdverseEventInput | Mapping[str, Any]
    ) -> AdverseEvent:
        """Record an adverse event."""
        return self._store.add_adverse_event(session_id, event, self.principal)

    @_same_not_found
    def list_adverse_events(
        self, session_id: int, *, include_deleted: bool = False
    ) -> list[AdverseEvent]:
        """A session's adverse events."""
        return self._store.list_adverse_events(
            session_id, include_deleted=include_deleted, scope=self.principal
        )

    @_same_not_found
    def delete_adverse_event(self, event_id: int) -> AdverseEvent:
        """Remove an adverse event entered by mistake (restorable)."""
        return self._store.delete_adverse_event(event_id, self.principal)

    @_same_not_found
    def restore_adverse_event(self, event_id: int) -> AdverseEvent:
        """Bring back a deleted adverse event."""
        return self._store.restore_adverse_event(event_id, self.principal)

    @_same_not_found
    def add_outcome(
        self, episode_id: int, outcome: model.OutcomeInput | Mapping[str, Any]
    ) -> Outcome:
        """Record an outcome score."""
        return self._store.add_outcome(episode_id, outcome, self.principal)

    @_same_not_found
    def list_outcomes(self, episode_id: int, *, include_deleted: bool = False) -> list[Outcome]:
        """An episode's outcome scores."""
        return self._store.list_outcomes(
            episode_id, include_deleted=include_deleted, scope=self.principal
        )

    @_same_not_found
    def delete_outcome(self, outcome_id: int) -> Outcome:
        """Remove an outcome score entered by mistake (restorable)."""
        return self._store.delete_outcome(outcome_id, self.principal)

    @_same_not_found
    def restore_outcome(self, outcome_id: int) -> Outcome:
        """Bring back a deleted outcome score."""
        return self._store.restore_outcome(outcome_id, self.principal)

    @_same_not_found
    def update_outcome(self, outcome_id: int, fields: Mapping[str, Any]) -> Outcome:
        """Correct an outcome score."""
        return self._store.update_outcome(outcome_id, fields, self.principal)

    @_same_not_found
    def undo_last_outcome(self, episode_id: int) -> UndoResult | None:
        """Undo the latest change to an episode's outcome scores."""
        return self._store.undo_last_outcome(episode_id, self.principal)

    def record_export(self, record: Mapping[str, Any]) -> None:
        """Write a research export to the audit trail under the principal's name."""
        self._store.record_export(self.principal, record)
