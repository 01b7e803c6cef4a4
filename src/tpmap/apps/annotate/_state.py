"""What one clinician page has open: the session, its marks, and the selected mark.

Plain Python (no widgets): the page's parts read it and listen to it, so that a mark saved,
moved or selected is drawn, listed and shown in the form from one source of truth.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tpmap.store import Mark

__all__ = ["Change", "PendingMark", "SessionState"]

Change = Literal["session", "marks", "selection"]


@dataclass(frozen=True, slots=True)
class PendingMark:
    """A tap on its way to the database (drawn hollow until it is committed)."""

    id: int  # negative: a temporary id until the store gives the real one
    view: str
    x: float
    y: float
    label: str


@dataclass
class SessionState:
    """The open patient, episode and session, their marks and the selection."""

    patient_id: int | None = None
    episode_id: int | None = None
    session_id: int | None = None
    session_date: dt.date | None = None
    marks: dict[int, Mark] = field(default_factory=dict)
    pending: dict[int, PendingMark] = field(default_factory=dict)
    earlier: list[Mark] = field(default_factory=list)
    selected: int | None = None
    _listeners: list[Callable[[Change], None]] = field(default_factory=list, repr=False)
    _temp_ids: Any = field(default_factory=lambda: itertools.count(-1, -1), repr=False)

    def listen(self, callback: Callable[[Change], None]) -> None:
        """Call ``callback(change)`` after every change."""
        self._listeners.append(callback)

    def _notify(self, change: Change) -> None:
        for callback in self._listeners:
            callback(change)

    @property
    def selected_mark(self) -> Mark | None:
        """The selected stored mark, or None."""
        return None if self.selected is None else self.marks.get(self.selected)

    def open_session(
        self, session: Any | None, marks: list[Mark], earlier: list[Mark] | None = None
    ) -> None:
        """Show ``session`` (None: no session) with its marks; nothing selected."""
        self.session_id = None if session is None else session.id
        self.session_date = None if session is None else session.date
        self.marks = {m.id: m for m in marks}
        self.pending.clear()
        self.earlier = list(earlier or [])
        self.selected = None
        self._notify("session")

    def close(self, *, patient: bool = False, episode: bool = False) -> None:
        """Forget the session (and the episode and patient, when asked)."""
        if patient:
            self.patient_id = None
        if patient or episode:
            self.episode_id = None
        self.open_session(None, [])

    def add_pending(self, view: str, x: float, y: float, label: str) -> PendingMark:
        """Record a tap being saved; returns it with its temporary id."""
        pending = PendingMark(next(self._temp_ids), view, x, y, label)
        self.pending[pending.id] = pending
        self._notify("marks")
        return pending

    def drop_pending(self, temp_id: int) -> None:
        """Forget a tap that could not be saved."""
        if self.pending.pop(temp_id, None) is not None:
            self._notify("marks")

    def saved(self, temp_id: int, mark: Mark) -> None:
        """A tap is committed: it becomes a stored mark and the selection."""
        self.pending.pop(temp_id, None)
        previous = self.selected
        if mark.session_id == self.session_id:
            self.marks[mark.id] = mark
            self.selected = mark.id
        self._notify("marks")
        if self.selected != previous:
            self._notify("selection")

    def update(self, mark: Mark) -> None:
        """A stored mark changed (details or position)."""
        if mark.session_id == self.session_id:
            self.marks[mark.id] = mark
            self._notify("marks")

    def replace_marks(self, marks: list[Mark], *, select: int | None = None) -> None:
        """Reload the session's marks; keep the selection if the mark is still there."""
        previous = self.selected
        self.marks = {m.id: m for m in marks}
        if select is not None and select in self.marks:
            self.selected = select
        elif self.selected not in self.marks:
            self.selected = None
        self._notify("marks")
        if self.selected != previous:
            self._notify("selection")

    def select(self, mark_id: int | None) -> None:
        """Select a stored mark of this session (None: nothing)."""
        if mark_id is not None and mark_id not in self.marks:
            mark_id = None
        if mark_id != self.selected:
            self.selected = mark_id
            self._notify("selection")
