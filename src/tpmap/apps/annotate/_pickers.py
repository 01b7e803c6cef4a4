"""Choosing (or creating) the patient, the episode of care and the session."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bokeh.layouts import row
from bokeh.models import InlineStyleSheet
from bokeh.models.widgets import Button, Select, TextInput

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._fields import BLANK, FieldInput
from tpmap.store import NotFoundError

if TYPE_CHECKING:
    from bokeh.models.widgets.inputs import Options

__all__ = ["Pickers", "parse_id"]

SessionLoaded = Callable[[Any, list[Any], list[Any]], None]
EpisodeOpened = Callable[[Any], None]
#: A row of pickers or form fields continues on a second line in a narrow window.
WRAP_CSS = ":host { flex-wrap: wrap; row-gap: 2px; }"


def parse_id(value: object) -> int | None:
    """A stored id from a widget value (``"42"``), or None for anything else.

    Values come from the browser and may have been forged: only a positive decimal integer
    is an id; the store then decides whether it names a record this user may see.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        number = int(value)
        return number if number > 0 else None
    return None


def episode_label(e: Any) -> str:
    """An episode as the picker names it: condition, affected side, start date."""
    return (
        f"{model.CONDITION_LABELS.get(e.condition, e.condition)}, {e.affected_side}, "
        f"from {e.start_date:%d %b %Y}"
    )


def session_label(s: Any) -> str:
    """A session as the picker names it: date and clinician."""
    return f"{s.date:%d %b %Y} ({s.clinician})"


class Pickers:
    """Patient search and pickers for patient, episode and session, with their + forms."""

    def __init__(
        self,
        ctx: Context,
        *,
        on_session: SessionLoaded,
        on_episode: EpisodeOpened | None = None,
    ) -> None:
        self.ctx = ctx
        self._on_session = on_session
        self._on_episode = on_episode
        self._restoring = False  # True while a choice that failed is put back
        self.search = TextInput(
            title="Find", placeholder="Search code", name="patient-search", width=140
        )
        self.patient_select = Select(title="Patient", options=[], name="patient", width=130)
        self.episode_select = Select(title="Episode", options=[], name="episode", width=210)
        self.session_select = Select(title="Session", options=[], name="session", width=150)
        self.new_patient = Button(label="+ Patient", name="new-patient", width=82, align="end")
        self.new_episode = Button(label="+ Episode", name="new-episode", width=82, align="end")
        self.new_session = Button(label="+ Session", name="new-session", width=82, align="end")

        p, e, s = model.PATIENT_FIELDS, model.EPISODE_FIELDS, model.SESSION_FIELD_SPECS
        self.patient_fields = {
            "code": FieldInput(p["code"], name="new-code", width=170),
            "sex": FieldInput(p["sex"], name="new-sex", width=110),
            "birth_year": FieldInput(p["birth_year"], name="new-birth-year", width=110),
        }
        self.patient_fields["code"].widget.placeholder = "e.g. P-0042"
        self.patient_fields["sex"].set("unknown")
        self.episode_fields = {
            "condition": FieldInput(e["condition"], name="new-condition", width=230),
            "affected_side": FieldInput(e["affected_side"], name="new-affected", width=120),
            "start_date": FieldInput(e["start_date"], name="new-start", width=140),
            "symptom_duration_weeks": FieldInput(
                e["symptom_duration_weeks"], name="new-duration", width=150
            ),
        }
        self.episode_fields["start_date"].set(dt.date.today())
        self.session_fields = {
            "date": FieldInput(s["date"], name="new-date", width=140),
            "clinician": FieldInput(s["clinician"], name="new-clinician", width=200),
        }
        self.session_fields["date"].widget.title = "Session date"
        self.session_fields["date"].set(dt.date.today())
        self.session_fields["clinician"].set(ctx.user)

        create_patient = Button(
            label="Create patient", button_type="primary", name="create-patient", align="end"
        )
        create_episode = Button(
            label="Create episode", button_type="primary", name="create-episode", align="end"
        )
        create_session = Button(
            label="Start session", button_type="primary", name="create-session", align="end"
        )
        self.patient_form = self._form(self.patient_fields, create_patient)
        self.episode_form = self._form(self.episode_fields, create_episode)
        self.session_form = self._form(self.session_fields, create_session)
        self.header = row(
            self.search,
            self.patient_select,
            self.new_patient,
            self.episode_select,
            self.new_episode,
            self.session_select,
            self.new_session,
            name="pickers",
            spacing=6,
            stylesheets=[InlineStyleSheet(css=WRAP_CSS)],
        )

        self.search.on_change("value_input", lambda _a, _o, new: self.find(new))
        self.patient_select.on_change("value", lambda _a, _o, new: self.choose_patient(new))
        self.episode_select.on_change("value", lambda _a, _o, new: self.choose_episode(new))
        self.session_select.on_change("value", lambda _a, _o, new: self.choose_session(new))
        self.new_patient.on_click(lambda: self._toggle(self.patient_form))
        self.new_episode.on_click(lambda: self._toggle(self.episode_form))
        self.new_session.on_click(lambda: self._toggle(self.session_form))
        create_patient.on_click(self.create_patient)
        create_episode.on_click(self.create_episode)
        create_session.on_click(self.create_session)

    @staticmethod
    def _form(fields: dict[str, FieldInput], button: Button) -> Any:
        return row(
            *(f.layout for f in fields.values()),
            button,
            visible=False,
            spacing=6,
            stylesheets=[InlineStyleSheet(css=WRAP_CSS)],
        )

    @staticmethod
    def _toggle(panel: Any) -> None:
        panel.visible = not panel.visible

    @staticmethod
    def _values(fields: dict[str, FieldInput]) -> dict[str, Any]:
        return {name: f.value for name, f in fields.items()}

    def _failed(self, fields: dict[str, FieldInput], what: str) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:
            for key, message in self.ctx.status.fail(exc, what).items():
                if key in fields:
                    fields[key].fail(message)

        return failed

    # ------------------------------------------------------------------ patient
    def find(self, query: str) -> None:
        """List the patients whose code contains ``query``."""
        ctx = self.ctx
        text = (query or "").strip()[:64]
        ctx.run.submit(
            lambda: ctx.store.find_patients(text, limit=50),
            self._show_patients,
            lambda exc: ctx.status.fail(exc, "search"),
        )

    def _show_patients(self, patients: list[Any]) -> None:
        options: Options = [(BLANK, "—"), *[(str(p.id), p.code) for p in patients]]
        current = self.patient_select.value
        if self.ctx.state.patient_id is not None and current not in {o[0] for o in options}:
            options.append((current, self._current_code or current))
        self.patient_select.options = options

    _current_code: str | None = None

    def choose_patient(self, value: str) -> None:
        """Open a patient: list their episodes and open the latest."""
        ctx, state = self.ctx, self.ctx.state
        if not value or self._restoring:
            return
        patient_id = parse_id(value)
        if patient_id is None:
            self._put_back(self.patient_select, state.patient_id)
            ctx.status.say("Not found: choose a patient from the list.", error=True)
            return

        def load() -> tuple[Any, list[Any]]:
            return ctx.store.get_patient(patient_id), ctx.store.list_episodes(patient_id)

        def loaded(result: tuple[Any, list[Any]]) -> None:
            patient, episodes = result
            state.patient_id = patient.id
            self._current_code = patient.code
            state.close(episode=True)
            options: Options = [(BLANK, "—"), *[(str(e.id), episode_label(e)) for e in episodes]]
            self.episode_select.options = options
            if episodes:
                self.episode_select.value = str(episodes[-1].id)
                if state.session_id is None:
                    ctx.status.say("Choose a session, or start a new one with + Session.")
            else:
                self.episode_select.value = BLANK
                self.session_select.options = []
                ctx.status.say("No episode yet: open one with + Episode.")

        def failed(exc: Exception) -> None:
            # What is open stays open: a patient that cannot be opened changes nothing.
            self._put_back(self.patient_select, state.patient_id)
            ctx.status.fail(exc, "patient")

        ctx.run.submit(load, loaded, failed)

    def _put_back(self, select: Select, current: int | None) -> None:
        """Show the record that is open again after a choice that could not be opened."""
        self._restoring = True
        try:
            select.value = BLANK if current is None else str(current)
        finally:
            self._restoring = False

    def create_patient(self) -> None:
        """Create the patient typed into the + Patient form."""
        ctx = self.ctx
        fields = self._values(self.patient_fields)
        fields["sex"] = fields["sex"] or "unknown"

        def created(patient: Any) -> None:
            self.patient_form.visible = False
            for f in self.patient_fields.values():
                f.clear()
            self.patient_fields["code"].set("")
            self.patient_fields["birth_year"].set("")
            self.patient_select.options = [
                *self.patient_select.options,
                (str(patient.id), patient.code),
            ]
            self.patient_select.value = str(patient.id)
            self.episode_form.visible = True  # the status line asks for an episode next

        ctx.run.submit(
            lambda: ctx.store.create_patient(fields),
            created,
            self._failed(self.patient_fields, "new patient"),
        )

    # ------------------------------------------------------------------ episode
    def choose_episode(self, value: str) -> None:
        """Open an episode: list its sessions and open the latest."""
        ctx, state = self.ctx, self.ctx.state
        if self._restoring:
            return
        if not value:
            state.episode_id = None
            state.close()
            self.session_select.options = []
            return
        episode_id = parse_id(value)
        if episode_id is None:
            self._put_back(self.episode_select, state.episode_id)
            ctx.status.say("Not found: choose an episode from the list.", error=True)
            return
        patient_id = state.patient_id

        def load() -> tuple[Any, list[Any]]:
            episode = ctx.store.get_episode(episode_id)
            if episode.patient_id != patient_id:
                raise NotFoundError(f"episode {episode_id} is not patient {patient_id}'s")
            return episode, ctx.store.list_sessions(episode_id)

        def loaded(result: tuple[Any, list[Any]]) -> None:
            episode, sessions = result
            state.episode_id = episode_id
            state.close()
            if self._on_episode is not None:
                self._on_episode(episode)
            options: Options = [(BLANK, "—"), *[(str(s.id), session_label(s)) for s in sessions]]
            self.session_select.options = options
            if sessions:
                self.session_select.value = str(sessions[-1].id)
            else:
                self.session_select.value = BLANK
                ctx.status.say("No session yet: start one with + Session.")

        def failed(exc: Exception) -> None:
            self._put_back(self.episode_select, state.episode_id)
            ctx.status.fail(exc, "episode")

        ctx.run.submit(load, loaded, failed)

    def create_episode(self) -> None:
        """Open the episode typed into the + Episode form for the chosen patient."""
        ctx, state = self.ctx, self.ctx.state
        if state.patient_id is None:
            ctx.status.say("Choose or create a patient first.", error=True)
            return
        fields = self._values(self.episode_fields)
        patient_id = state.patient_id

        def created(episode: Any) -> None:
            self.episode_form.visible = False
            for f in self.episode_fields.values():
                f.clear()
            self.episode_select.options = [
                *self.episode_select.options,
                (str(episode.id), episode_label(episode)),
            ]
            self.episode_select.value = str(episode.id)
            self.session_form.visible = True  # the status line asks for a session next

        ctx.run.submit(
            lambda: ctx.store.create_episode(patient_id, fields),
            created,
            self._failed(self.episode_fields, "new episode"),
        )

    # ------------------------------------------------------------------ session
    def choose_session(self, value: str) -> None:
        """Open a session: its marks, the episode's earlier marks, and its readings."""
        ctx, state = self.ctx, self.ctx.state
        if self._restoring:
            return
        if not value:
            state.close()
            self._on_session(None, [], [])
            return
        session_id = parse_id(value)
        if session_id is None:
            self._put_back(self.session_select, state.session_id)
            ctx.status.say("Not found: choose a session from the list.", error=True)
            return
        episode_id = state.episode_id

        def load() -> tuple[Any, ...]:
            session = ctx.store.get_session(session_id)
            if session.episode_id != episode_id:
                raise NotFoundError(f"session {session_id} is not in episode {episode_id}")
            marks = ctx.store.session_marks(session_id)
            episode = ctx.store.episode_marks(episode_id) if episode_id else []
            ppts = ctx.store.list_pressure_pain_thresholds(session_id)
            aes = ctx.store.list_adverse_events(session_id)
            return session, marks, episode, ppts, aes

        def loaded(result: tuple[Any, ...]) -> None:
            session, marks, episode, ppts, aes = result
            earlier = [
                m for m in episode if m.session_id != session.id and m.session_date <= session.date
            ]
            state.open_session(session, marks, earlier)
            self._on_session(session, ppts, aes)
            n = len(marks)
            ctx.status.say(
                f"Session of {session.date:%d %b %Y}: {n} mark{'' if n == 1 else 's'}. "
                "Tap each muscle you needled."
            )

        def failed(exc: Exception) -> None:
            self._put_back(self.session_select, state.session_id)
            ctx.status.fail(exc, "session")

        ctx.run.submit(load, loaded, failed)

    def create_session(self) -> None:
        """Start the session typed into the + Session form in the chosen episode."""
        ctx, state = self.ctx, self.ctx.state
        if state.episode_id is None:
            ctx.status.say("Choose or open an episode first.", error=True)
            return
        fields = self._values(self.session_fields)
        episode_id = state.episode_id

        def created(session: Any) -> None:
            self.session_form.visible = False
            for f in self.session_fields.values():
                f.clear()
            self.session_select.options = [
                *self.session_select.options,
                (str(session.id), session_label(session)),
            ]
            self.session_select.value = str(session.id)

        ctx.run.submit(
            lambda: ctx.store.create_session(episode_id, fields),
            created,
            self._failed(self.session_fields, "new session"),
        )
