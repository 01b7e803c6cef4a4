"""The clinician page (``/annotate``): tap the muscles you needled, record how and what came of it.

Data safety rules this page keeps:

- every tap on a muscle is stored at once; it is drawn hollow ("saving") until the store has
  committed it and filled ("saved") only after the commit;
- Tap and DoubleTap are both handled, so two quick taps give two marks;
- database calls run one at a time, in order, on a worker thread (never on Bokeh's event
  loop), and their results come back with ``doc.add_next_tick_callback``;
- bad input gets a message and changes nothing; every change can be undone.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bokeh.document import Document
from bokeh.events import DoubleTap, Tap
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    DataTable,
    DatePicker,
    Div,
    HoverTool,
    PointDrawTool,
    RadioButtonGroup,
    Select,
    Spinner,
    TableColumn,
    TabPanel,
    Tabs,
    TextAreaInput,
    TextInput,
)
from bokeh.plotting import figure

from tpmap import model
from tpmap.apps import tag_widgets
from tpmap.atlas import Atlas, load_atlas
from tpmap.plotting import VIEW_TITLES, atlas_figure

__all__ = ["make_document"]

log = logging.getLogger("tpmap.annotate")

#: A tap this close (cm) to an existing mark of the session selects it instead of adding one.
SELECT_RADIUS_CM = 0.8
FIGURE_HEIGHT = 560
PANEL_WIDTH = 400

SAVED_FILL = "#173f7a"
SAVING_FILL = "#ffffff"
EARLIER_FILL = "#6b6b6b"
_EMPTY = ""

_NUMBER_FIELDS: dict[str, dict[str, Any]] = {
    "insertions": {"low": 0, "high": 100, "step": 1, "mode": "int"},
    "ltr_count": {"low": 0, "high": 100, "step": 1, "mode": "int"},
    "depth_mm": {"low": 0, "high": 150, "step": 1, "mode": "float"},
    "needle_length_mm": {"low": 5, "high": 150, "step": 5, "mode": "float"},
    "retention_min": {"low": 0, "high": 60, "step": 1, "mode": "float"},
    "estim_frequency_hz": {"low": 0, "high": 250, "step": 1, "mode": "float"},
    "estim_intensity_ma": {"low": 0, "high": 50, "step": 0.5, "mode": "float"},
    "estim_duration_min": {"low": 0, "high": 60, "step": 1, "mode": "float"},
}
_GAUGES = ["0.16", "0.18", "0.20", "0.22", "0.25", "0.30", "0.35", "0.40"]


def _opts(ids: tuple[str, ...] | list[str], labels: dict[str, str] | None = None):
    labels = labels or {}
    return [(_EMPTY, "—"), *[(i, labels.get(i, i.replace("_", " ").capitalize())) for i in ids]]


class _Runner:
    """Runs store calls one at a time off the event loop; results return on the next tick.

    A document without a server session (document-level tests, notebooks) runs them inline.
    """

    def __init__(self, doc: Document):
        self.doc = doc
        self.inline = doc.session_context is None
        self.pool = None if self.inline else ThreadPoolExecutor(1, thread_name_prefix="tpmap-store")
        if self.pool is not None:
            # Let queued writes finish when the tab closes: a tap shown as saving is kept.
            doc.on_session_destroyed(lambda _ctx: self.pool.shutdown(wait=True))

    def submit(
        self,
        work: Callable[[], Any],
        done: Callable[[Any], None],
        failed: Callable[[Exception], None],
    ) -> None:
        if self.pool is None:
            try:
                result = work()
            except Exception as exc:
                failed(exc)
            else:
                done(result)
            return

        def back(fut: Future) -> None:
            def deliver() -> None:
                exc = fut.exception()
                if exc is None:
                    done(fut.result())
                else:
                    failed(exc)  # type: ignore[arg-type]

            self.doc.add_next_tick_callback(deliver)

        self.pool.submit(work).add_done_callback(back)


def _set(model_: Any, attr: str, value: Any) -> None:
    """Set a property only when it changes: each change is a message to the browser."""
    if getattr(model_, attr) != value:
        setattr(model_, attr, value)


def _same_columns(old: Any, new: dict[str, list[Any]]) -> bool:
    """True when a source's columns already hold ``new`` (browser edits arrive as arrays)."""
    return set(old) == set(new) and all(list(old[k]) == new[k] for k in new)


def _message(exc: Exception) -> str:
    if isinstance(exc, model.ValidationError):
        return " ".join(exc.errors.values())
    log.exception("store call failed", exc_info=exc)
    return f"Not saved: {exc}"


class AnnotatePage:
    """State and widgets of one clinician page (one browser tab)."""

    def __init__(self, doc: Document, *, store: Any, atlas: Atlas, user: str):
        self.doc = doc
        self.store = store
        self.atlas = atlas
        self.user = user
        self.run = _Runner(doc)
        self.patient_id: int | None = None
        self.episode_id: int | None = None
        self.session_id: int | None = None
        self.session_date: dt.date | None = None
        self.marks: dict[int, Any] = {}  # id -> stored Mark of the current session
        self.pending: dict[int, dict[str, Any]] = {}  # temporary id -> mark being saved
        self.earlier: list[Any] = []
        self.selected: int | None = None
        self._temp_ids = itertools.count(-1, -1)
        self._loading = False  # True while widgets are filled from the store
        self._build()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.status = Div(text="Choose or create a patient to start.", name="status")
        self.status.styles = {"font-size": "15px", "min-height": "22px", "color": "#222"}

        # Patient, episode, session pickers.
        self.search = TextInput(placeholder="Search code", name="patient-search", width=140)
        self.patient_select = Select(options=[], name="patient", width=130, title="Patient")
        self.episode_select = Select(options=[], name="episode", width=210, title="Episode")
        self.session_select = Select(options=[], name="session", width=150, title="Session")
        self.search.title = "Find"
        new_patient = Button(label="+ Patient", name="new-patient", width=82, align="end")
        new_episode = Button(label="+ Episode", name="new-episode", width=82, align="end")
        new_session = Button(label="+ Session", name="new-session", width=82, align="end")

        self.new_code = TextInput(title="Patient code", placeholder="e.g. P-0042", name="new-code")
        self.new_sex = Select(
            title="Sex", options=_opts(model.SEXES), value="unknown", name="new-sex", width=110
        )
        self.new_birth = Spinner(
            title="Birth year",
            low=1900,
            high=dt.date.today().year,
            step=1,
            mode="int",
            name="new-birth-year",
            width=110,
        )
        create_patient = Button(
            label="Create patient", button_type="primary", name="create-patient", align="end"
        )
        self.patient_form = row(
            self.new_code, self.new_sex, self.new_birth, create_patient, visible=False
        )

        self.new_condition = Select(
            title="Condition",
            options=_opts(model.CONDITIONS, model.CONDITION_LABELS),
            name="new-condition",
            width=230,
        )
        self.new_affected = Select(
            title="Affected side",
            options=_opts(model.AFFECTED_SIDES),
            name="new-affected",
            width=120,
        )
        self.new_start = DatePicker(
            title="Start date", value=dt.date.today(), name="new-start", width=140
        )
        create_episode = Button(
            label="Create episode", button_type="primary", name="create-episode", align="end"
        )
        self.episode_form = row(
            self.new_condition, self.new_affected, self.new_start, create_episode, visible=False
        )

        self.new_date = DatePicker(
            title="Session date", value=dt.date.today(), name="new-date", width=140
        )
        self.new_clinician = TextInput(title="Clinician", value=self.user, name="new-clinician")
        create_session = Button(
            label="Start session", button_type="primary", name="create-session", align="end"
        )
        self.session_form = row(self.new_date, self.new_clinician, create_session, visible=False)

        # Diagram.
        views = list(self.atlas.views)
        self.views = views
        # Views come in pairs shown side by side: front and back, then both sides. A tall,
        # narrow body leaves room for two on a 1024 x 768 tablet, and front-and-back is how
        # clinicians chart the hip and thigh.
        self.view_pairs = [("anterior", "posterior"), ("lateral_right", "lateral_left")]
        self.view_switch = RadioButtonGroup(
            labels=["Front and back", "Sides"], active=0, name="views"
        )
        self.layer_switch = RadioButtonGroup(labels=["Superficial", "Deep"], active=0, name="layer")
        undo = Button(label="↶ Undo", name="undo", width=90)
        self.delete_button = Button(
            label="Delete mark", name="delete", width=110, button_type="danger", disabled=True
        )
        self.figures: dict[str, figure] = {}
        self.sources: dict[str, ColumnDataSource] = {}
        self.earlier_sources: dict[str, ColumnDataSource] = {}
        for v in views:
            self.figures[v] = self._figure(v)

        # Side panel: mark details, session, marks table.
        self.mark_title = Div(text="<i>Tap a muscle to add a mark, or tap a mark to edit it.</i>")
        self.mark_widgets: dict[str, Any] = {}
        mw = self.mark_widgets
        mw["muscle"] = Select(
            title="Muscle", options=[(m, self.atlas.muscle_name(m)) for m in self.atlas.muscles]
        )
        mw["technique"] = Select(
            title="Technique", options=_opts(model.TECHNIQUES, model.TECHNIQUE_LABELS)
        )
        mw["ltr_grade"] = Select(title="Twitch response", options=_opts(model.LTR_GRADES))
        mw["tp_status"] = Select(title="Trigger point", options=_opts(model.TP_STATUSES))
        mw["referral_reproduced"] = Select(
            title="Referral reproduced", options=[(_EMPTY, "—"), ("yes", "Yes"), ("no", "No")]
        )
        mw["needle_gauge_mm"] = Select(
            title="Needle diameter (mm)", options=[(_EMPTY, "—"), *[(g, g) for g in _GAUGES]]
        )
        for name, spec in _NUMBER_FIELDS.items():
            unit = model.FIELD_UNITS.get(name)
            label = model.FIELD_LABELS[name] + (f" ({unit})" if unit else "")
            mw[name] = Spinner(title=label, **spec)
        mw["note"] = TextAreaInput(title="Note", rows=2, max_length=model.MAX_NOTE_LENGTH)
        for name, widget in mw.items():
            widget.name = f"mark-{name}"
            widget.width = 185 if name != "note" else 380
            widget.on_change("value", self._on_mark_field(name))
        # Shown only while a mark is selected: one visibility change instead of disabling
        # every field keeps the page's updates after a tap few and small.
        self.mark_fields = column(
            row(mw["muscle"], mw["technique"]),
            row(mw["insertions"], mw["depth_mm"]),
            row(mw["ltr_grade"], mw["ltr_count"]),
            row(mw["needle_length_mm"], mw["needle_gauge_mm"]),
            row(mw["retention_min"], mw["tp_status"]),
            row(mw["estim_frequency_hz"], mw["estim_intensity_ma"]),
            row(mw["estim_duration_min"], mw["referral_reproduced"]),
            mw["note"],
            visible=False,
            name="mark-fields",
        )
        self.mark_form = column(self.mark_title, self.mark_fields, width=PANEL_WIDTH)

        self.nprs_before = Select(
            title="NPRS before",
            options=_opts([str(i) for i in range(11)]),
            name="nprs-before",
            width=120,
        )
        self.nprs_after = Select(
            title="NPRS after",
            options=_opts([str(i) for i in range(11)]),
            name="nprs-after",
            width=120,
        )
        self.nprs_before.on_change("value", self._on_nprs("nprs_before"))
        self.nprs_after.on_change("value", self._on_nprs("nprs_after"))
        self.ppt_site = TextInput(title="PPT site", placeholder="e.g. VMO right", name="ppt-site")
        self.ppt_value = Spinner(
            title="kg/cm²", low=0, high=20, step=0.1, mode="float", name="ppt-value", width=90
        )
        add_ppt = Button(label="Add", name="add-ppt", width=60, align="end")
        self.ppt_list = Div(text="", name="ppt-list")
        # A reading entered by mistake can be taken out again (it is a hard delete).
        self.ppt_pick = Select(title="Entered by mistake?", options=[], name="ppt-pick", width=250)
        remove_ppt = Button(label="Remove", name="remove-ppt", width=80, align="end")
        self.ae_type = Select(
            title="Adverse event",
            options=_opts(model.ADVERSE_EVENT_TYPES, model.ADVERSE_EVENT_TYPE_LABELS),
            name="ae-type",
            width=170,
        )
        self.ae_severity = Select(
            title="Severity", options=_opts(model.SEVERITIES), name="ae-severity", width=120
        )
        add_ae = Button(label="Add", name="add-ae", width=60, align="end")
        self.ae_list = Div(text="", name="ae-list")
        self.ae_pick = Select(title="Entered by mistake?", options=[], name="ae-pick", width=250)
        remove_ae = Button(label="Remove", name="remove-ae", width=80, align="end")
        session_panel = column(
            row(self.nprs_before, self.nprs_after),
            row(self.ppt_site, self.ppt_value, add_ppt),
            self.ppt_list,
            row(self.ppt_pick, remove_ppt),
            row(self.ae_type, self.ae_severity, add_ae),
            self.ae_list,
            row(self.ae_pick, remove_ae),
            width=PANEL_WIDTH,
        )

        self.table_source = ColumnDataSource(self._table_data([]), name="marks-table-source")
        self.table = DataTable(
            source=self.table_source,
            columns=[
                TableColumn(field="n", title="#", width=30),
                TableColumn(field="muscle", title="Muscle", width=170),
                TableColumn(field="view", title="View", width=80),
                TableColumn(field="technique", title="Technique", width=90),
                TableColumn(field="depth", title="Depth", width=50),
            ],
            width=PANEL_WIDTH - 10,
            height=420,
            index_position=None,
            name="marks-table",
        )
        self.table_source.selected.on_change("indices", self._on_table_select)
        self.tabs = Tabs(
            tabs=[
                TabPanel(child=self.mark_form, title="Mark"),
                TabPanel(child=session_panel, title="Session"),
                TabPanel(child=self.table, title="Marks"),
            ],
            name="panel",
            width=PANEL_WIDTH,
        )

        # Wiring.
        self.search.on_change("value_input", lambda _a, _o, new: self._search(new))
        self.patient_select.on_change("value", lambda _a, _o, new: self._choose_patient(new))
        self.episode_select.on_change("value", lambda _a, _o, new: self._choose_episode(new))
        self.session_select.on_change("value", lambda _a, _o, new: self._choose_session(new))
        new_patient.on_click(lambda: self._toggle(self.patient_form))
        new_episode.on_click(lambda: self._toggle(self.episode_form))
        new_session.on_click(lambda: self._toggle(self.session_form))
        create_patient.on_click(self._create_patient)
        create_episode.on_click(self._create_episode)
        create_session.on_click(self._create_session)
        self.view_switch.on_change("active", lambda _a, _o, new: self._show_view(new))
        self.layer_switch.on_change("active", lambda _a, _o, new: self._show_layer(new))
        undo.on_click(self._undo)
        self.delete_button.on_click(self._delete)
        add_ppt.on_click(self._add_ppt)
        add_ae.on_click(self._add_ae)
        remove_ppt.on_click(self._remove_ppt)
        remove_ae.on_click(self._remove_ae)

        header = row(
            self.search,
            self.patient_select,
            new_patient,
            self.episode_select,
            new_episode,
            self.session_select,
            new_session,
        )
        diagram = column(
            row(self.view_switch, self.layer_switch),
            row(undo, self.delete_button, self.status),
            row(*[self.figures[v] for pair in self.view_pairs for v in pair]),
        )
        self.doc.title = "tpmap: record a session"
        self.doc.add_root(
            column(
                header,
                self.patient_form,
                self.episode_form,
                self.session_form,
                row(diagram, self.tabs),
                name="annotate-page",
            )
        )
        tag_widgets(self.doc)
        self._show_view(0)
        self._refresh_form()
        self._search("")

    def _figure(self, view: str) -> figure:
        fig = atlas_figure(self.atlas, view, height=FIGURE_HEIGHT, muscle_alpha=0.85)
        fig.toolbar.logo = None
        earlier = ColumnDataSource(
            {"x": [], "y": [], "label": [], "date": []}, name=f"earlier-{view}"
        )
        fig.scatter(
            "x",
            "y",
            source=earlier,
            size=11,
            marker="circle",
            fill_color=EARLIER_FILL,
            fill_alpha=0.35,
            line_color="white",
            line_alpha=0.6,
            name=f"earlier-marks-{view}",
        )
        source = ColumnDataSource(self._mark_data([]), name=f"marks-{view}")
        marks = fig.scatter(
            "x",
            "y",
            source=source,
            size=16,
            marker="circle",
            fill_color="fill",
            line_color=SAVED_FILL,
            line_width=2.5,
            selection_fill_color="#f2a900",
            selection_line_color="#000000",
            nonselection_fill_alpha=1.0,
            nonselection_line_alpha=1.0,
            name=f"current-marks-{view}",
        )
        # Drag a mark to move it (no adding or deleting through this tool: taps add marks).
        drag = PointDrawTool(renderers=[marks], add=False, drag=True, num_objects=0)
        fig.add_tools(drag)
        fig.toolbar.active_drag = drag
        fig.add_tools(
            HoverTool(
                renderers=[fig.select_one({"name": f"earlier-marks-{view}"})],
                tooltips=[("Earlier session", "@date"), ("Muscle", "@label")],
            ),
            HoverTool(renderers=[marks], tooltips=[("Mark", "@label"), ("", "@state")]),
        )
        fig.on_event(Tap, lambda e, v=view: self._on_tap(v, e.x, e.y))
        fig.on_event(DoubleTap, lambda e, v=view: self._on_tap(v, e.x, e.y))
        source.on_change("data", self._on_drag(view))
        self.sources[view] = source
        self.earlier_sources[view] = earlier
        return fig

    # ------------------------------------------------------------------ helpers
    def say(self, text: str, *, error: bool = False) -> None:
        """Show a message in the status line."""
        _set(self.status, "text", text)
        _set(
            self.status,
            "styles",
            {
                "font-size": "15px",
                "min-height": "22px",
                "color": "#b00020" if error else "#222",
                "font-weight": "600" if error else "400",
            },
        )

    def _toggle(self, panel: Any) -> None:
        panel.visible = not panel.visible

    @property
    def layer(self) -> str:
        return "deep" if self.layer_switch.active == 1 else "superficial"

    def _label(self, muscle: str, side: str) -> str:
        return f"{self.atlas.muscle_name(muscle)} ({side})"

    @staticmethod
    def _mark_data(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        keys = ("id", "x", "y", "label", "state", "fill")
        return {k: [r[k] for r in rows] for k in keys}

    def _table_data(self, marks: list[Any]) -> dict[str, list[Any]]:
        return {
            "id": [m.id for m in marks],
            "n": list(range(1, len(marks) + 1)),
            "muscle": [self._label(m.muscle, m.side) for m in marks],
            "view": [VIEW_TITLES[m.view] for m in marks],
            "technique": [model.TECHNIQUE_LABELS.get(m.technique or "", "") for m in marks],
            "depth": ["" if m.depth_mm is None else f"{m.depth_mm:g} mm" for m in marks],
        }

    def _redraw(self) -> None:
        """Draw this session's marks (saved and saving) and the table from the state."""
        for view, source in self.sources.items():
            rows = [
                {
                    "id": m.id,
                    "x": m.x,
                    "y": m.y,
                    "label": self._label(m.muscle, m.side),
                    "state": "saved",
                    "fill": SAVED_FILL,
                }
                for m in self.marks.values()
                if m.view == view
            ]
            rows += [
                {**p, "state": "saving…", "fill": SAVING_FILL}
                for p in self.pending.values()
                if p["view"] == view
            ]
            data = self._mark_data(rows)
            ids = data["id"]
            selected = [ids.index(self.selected)] if self.selected in ids else []
            # Only send what changed: every assignment is a message to the browser and a
            # re-render there, and a tap should cost one of each.
            self._loading = True
            try:
                if not _same_columns(source.data, data):
                    source.data = data
                if list(source.selected.indices) != selected:
                    source.selected.indices = selected
            finally:
                self._loading = False
        ordered = sorted(self.marks.values(), key=lambda m: m.id)
        table = self._table_data(ordered)
        if not _same_columns(self.table_source.data, table):
            self.table_source.data = table

    def _draw_earlier(self) -> None:
        for view, source in self.earlier_sources.items():
            pts = [m for m in self.earlier if m.view == view]
            source.data = {
                "x": [m.x for m in pts],
                "y": [m.y for m in pts],
                "label": [self._label(m.muscle, m.side) for m in pts],
                "date": [m.session_date.isoformat() for m in pts],
            }

    # ------------------------------------------------------------------ pickers
    def _search(self, query: str) -> None:
        self.run.submit(
            lambda: self.store.find_patients(query.strip(), limit=50),
            self._show_patients,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _show_patients(self, patients: list[Any]) -> None:
        options = [(_EMPTY, "—"), *[(str(p.id), p.code) for p in patients]]
        current = self.patient_select.value
        if self.patient_id is not None and current not in {o[0] for o in options}:
            options.append((current, current))
        self.patient_select.options = options

    def _choose_patient(self, value: str) -> None:
        if not value:
            return
        self.patient_id = int(value)
        self.episode_id = self.session_id = None
        self._clear_session()

        def loaded(episodes: list[Any]) -> None:
            self.episode_select.options = [(_EMPTY, "—")] + [
                (
                    str(e.id),
                    f"{model.CONDITION_LABELS[e.condition]}, {e.affected_side}, "
                    f"from {e.start_date:%d %b %Y}",
                )
                for e in episodes
            ]
            if episodes:
                self.episode_select.value = str(episodes[-1].id)
                self.say("Choose a session, or start a new one with + Session.")
            else:
                self.episode_select.value = _EMPTY
                self.say("No episode yet: open one with + Episode.")

        self.run.submit(
            lambda: self.store.list_episodes(self.patient_id),
            loaded,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _choose_episode(self, value: str) -> None:
        if not value:
            self.episode_id = None
            self.session_select.options = []
            return
        self.episode_id = int(value)
        self.session_id = None
        self._clear_session()

        def loaded(sessions: list[Any]) -> None:
            self.session_select.options = [(_EMPTY, "—")] + [
                (str(s.id), f"{s.date:%d %b %Y} ({s.clinician})") for s in sessions
            ]
            if sessions:
                self.session_select.value = str(sessions[-1].id)
            else:
                self.session_select.value = _EMPTY
                self.say("No session yet: start one with + Session.")

        self.run.submit(
            lambda: self.store.list_sessions(self.episode_id),
            loaded,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _clear_session(self) -> None:
        self.marks.clear()
        self.pending.clear()
        self.earlier = []
        self.selected = None
        self._redraw()
        self._draw_earlier()
        self._refresh_form()

    def _choose_session(self, value: str) -> None:
        if not value:
            self.session_id = None
            self._clear_session()
            return
        session_id = int(value)
        episode_id = self.episode_id

        def load():
            session = self.store.get_session(session_id)
            marks = self.store.session_marks(session_id)
            episode = self.store.episode_marks(episode_id) if episode_id else []
            ppts = self.store.list_pressure_pain_thresholds(session_id)
            aes = self.store.list_adverse_events(session_id)
            return session, marks, episode, ppts, aes

        def loaded(result) -> None:
            session, marks, episode, ppts, aes = result
            self.session_id = session.id
            self.session_date = session.date
            self.marks = {m.id: m for m in marks}
            self.pending.clear()
            self.earlier = [
                m for m in episode if m.session_id != session.id and m.session_date <= session.date
            ]
            self.selected = None
            self._redraw()
            self._draw_earlier()
            self._refresh_form()
            self._loading = True
            try:
                self.nprs_before.value = (
                    "" if session.nprs_before is None else str(session.nprs_before)
                )
                self.nprs_after.value = (
                    "" if session.nprs_after is None else str(session.nprs_after)
                )
            finally:
                self._loading = False
            self._show_ppts(ppts)
            self._show_aes(aes)
            self.say(
                f"Session of {session.date:%d %b %Y}: {len(marks)} marks. "
                "Tap each muscle you needled."
            )

        self.run.submit(load, loaded, lambda exc: self.say(_message(exc), error=True))

    def _create_patient(self) -> None:
        fields = {
            "code": self.new_code.value,
            "sex": self.new_sex.value or "unknown",
            "birth_year": self.new_birth.value,
        }

        def created(patient) -> None:
            self.patient_form.visible = False
            self.new_code.value = ""
            self.patient_select.options = [
                *self.patient_select.options,
                (str(patient.id), patient.code),
            ]
            self.patient_select.value = str(patient.id)
            self.episode_form.visible = True  # the status line asks for an episode next

        self.run.submit(
            lambda: self.store.create_patient(fields, self.user),
            created,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _create_episode(self) -> None:
        if self.patient_id is None:
            self.say("Choose or create a patient first.", error=True)
            return
        fields = {
            "condition": self.new_condition.value,
            "affected_side": self.new_affected.value,
            "start_date": self.new_start.value,
        }
        patient_id = self.patient_id

        def created(episode) -> None:
            self.episode_form.visible = False
            label = (
                f"{model.CONDITION_LABELS[episode.condition]}, {episode.affected_side}, "
                f"from {episode.start_date:%d %b %Y}"
            )
            self.episode_select.options = [
                *self.episode_select.options,
                (str(episode.id), label),
            ]
            self.episode_select.value = str(episode.id)
            self.session_form.visible = True  # the status line asks for a session next

        self.run.submit(
            lambda: self.store.create_episode(patient_id, fields, self.user),
            created,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _create_session(self) -> None:
        if self.episode_id is None:
            self.say("Choose or open an episode first.", error=True)
            return
        fields = {"date": self.new_date.value, "clinician": self.new_clinician.value}
        episode_id = self.episode_id

        def created(session) -> None:
            self.session_form.visible = False
            self.session_select.options = [
                *self.session_select.options,
                (str(session.id), f"{session.date:%d %b %Y} ({session.clinician})"),
            ]
            self.session_select.value = str(session.id)

        self.run.submit(
            lambda: self.store.create_session(episode_id, fields, self.user),
            created,
            lambda exc: self.say(_message(exc), error=True),
        )

    # ------------------------------------------------------------------ diagram
    def _show_view(self, index: int) -> None:
        for v in self.views:
            self.figures[v].visible = v in self.view_pairs[index]

    def _show_layer(self, index: int) -> None:
        shown = "muscles-deep" if index == 1 else "muscles-superficial"
        for fig in self.figures.values():
            for r in fig.renderers:
                if r.name in ("muscles-superficial", "muscles-deep"):
                    r.visible = r.name == shown

    def _nearest_mark(self, view: str, x: float, y: float) -> int | None:
        best, best_d = None, SELECT_RADIUS_CM
        for m in self.marks.values():
            if m.view == view:
                d = ((m.x - x) ** 2 + (m.y - y) ** 2) ** 0.5
                if d <= best_d:
                    best, best_d = m.id, d
        return best

    def _on_tap(self, view: str, x: float | None, y: float | None) -> None:
        if x is None or y is None:
            return
        if self.session_id is None:
            self.say("Choose or start a session first: nothing was saved.", error=True)
            return
        near = self._nearest_mark(view, x, y)
        if near is not None:
            self.select(near)
            return
        region = self.atlas.region_at(view, x, y, layer=self.layer)
        if region is None:
            self.say("Not on a muscle: nothing was saved.", error=True)
            return
        temp = next(self._temp_ids)
        fields = {
            "view": view,
            "x": float(x),
            "y": float(y),
            "muscle": region.muscle,
            "side": region.side,
            "layer": region.layer,
            "atlas_version": self.atlas.version,
        }
        self.pending[temp] = {"id": temp, **fields, "label": region.label}
        self._redraw()
        self.say(f"Saving {region.label} …")
        session_id = self.session_id

        def saved(mark) -> None:
            self.pending.pop(temp, None)
            if mark.session_id == self.session_id:
                self.marks[mark.id] = mark
                self.selected = mark.id
                self._refresh_form()
            self._redraw()
            self.say(f"Saved: {self._label(mark.muscle, mark.side)}")

        def failed(exc: Exception) -> None:
            self.pending.pop(temp, None)
            self._redraw()
            self.say(f"{region.label}: {_message(exc)}", error=True)

        self.run.submit(lambda: self.store.add_mark(session_id, fields, self.user), saved, failed)

    def _on_drag(self, view: str) -> Callable[[str, Any, Any], None]:
        def changed(_attr: str, _old: Any, new: dict[str, list[Any]]) -> None:
            if self._loading:
                return
            for mark_id, x, y in zip(new["id"], new["x"], new["y"], strict=False):
                m = self.marks.get(mark_id)
                if m is None or (abs(m.x - x) < 1e-9 and abs(m.y - y) < 1e-9):
                    continue
                self._move(m, view, float(x), float(y))

        return changed

    def _move(self, mark: Any, view: str, x: float, y: float) -> None:
        region = self.atlas.region_at(view, x, y, layer=mark.layer)
        if region is None:
            self._redraw()  # put it back where it is stored
            self.say("Not on a muscle: the mark was not moved.", error=True)
            return

        def moved(m) -> None:
            self.marks[m.id] = m
            self._redraw()
            self._refresh_form()
            self.say(f"Moved to {self._label(m.muscle, m.side)}")

        def failed(exc: Exception) -> None:
            self._redraw()
            self.say(_message(exc), error=True)

        self.run.submit(
            lambda: self.store.move_mark(
                mark.id, x, y, region.muscle, region.side, region.layer, self.user
            ),
            moved,
            failed,
        )

    # ------------------------------------------------------------------ marks
    def select(self, mark_id: int | None) -> None:
        """Select a mark of this session: highlight it and show its details."""
        self.selected = mark_id
        self._redraw()
        self._refresh_form()
        if mark_id is not None:
            m = self.marks[mark_id]
            self.view_switch.active = next(
                i for i, pair in enumerate(self.view_pairs) if m.view in pair
            )
            self.tabs.active = 0

    def _on_table_select(self, _attr: str, _old: list[int], new: list[int]) -> None:
        if self._loading or not new:
            return
        mark_id = self.table_source.data["id"][new[0]]
        if mark_id != self.selected:
            self.select(mark_id)

    def _refresh_form(self) -> None:
        m = self.marks.get(self.selected) if self.selected is not None else None
        _set(self.delete_button, "disabled", m is None)
        _set(self.mark_fields, "visible", m is not None)
        self._loading = True
        try:
            for name, widget in self.mark_widgets.items():
                if m is None:
                    continue  # hidden: keep the last values rather than send changes
                value = getattr(m, name)
                if isinstance(widget, Select):
                    if name == "referral_reproduced":
                        value = {True: "yes", False: "no"}.get(value, _EMPTY)
                    elif name == "needle_gauge_mm" and value is not None:
                        value = f"{value:.2f}"
                    _set(widget, "value", _EMPTY if value is None else str(value))
                elif isinstance(widget, TextAreaInput):
                    _set(widget, "value", value or "")
                else:
                    _set(widget, "value", value)
            applies = set(model.fields_for_technique(m.technique if m else None))
            for name in model.ESTIM_FIELDS:
                _set(self.mark_widgets[name], "visible", name in applies)
        finally:
            self._loading = False
        if m is None:
            title = "<i>Tap a muscle to add a mark, or tap a mark to edit it.</i>"
        else:
            title = (
                f"<b>{self._label(m.muscle, m.side)}</b> · {VIEW_TITLES[m.view]} · {m.layer}"
                f"{' · muscle set by hand' if m.muscle_overridden else ''}"
            )
        _set(self.mark_title, "text", title)

    def _on_mark_field(self, name: str) -> Callable[[str, Any, Any], None]:
        def changed(_attr: str, _old: Any, new: Any) -> None:
            if self._loading or self.selected is None or self.selected not in self.marks:
                return
            value = new
            if isinstance(value, str) and value == _EMPTY and name != "note":
                value = None
            mark_id = self.selected
            changes = {name: value}
            if name == "technique" and not model.is_electrical(value):
                # Stimulation settings only belong to electrical techniques: clear them too.
                changes.update(dict.fromkeys(model.ESTIM_FIELDS))

            def saved(m) -> None:
                self.marks[m.id] = m
                self._redraw()
                self._refresh_form()
                self.say(
                    f"Saved {model.FIELD_LABELS[name].lower()} of {self._label(m.muscle, m.side)}"
                )

            def failed(exc: Exception) -> None:
                self._refresh_form()  # show what is stored: the bad value changed nothing
                self.say(_message(exc), error=True)

            self.run.submit(
                lambda: self.store.update_mark(mark_id, changes, self.user), saved, failed
            )

        return changed

    def _reload_marks(self, message: str | None) -> None:
        session_id = self.session_id
        if session_id is None:
            return

        def loaded(marks: list[Any]) -> None:
            self.marks = {m.id: m for m in marks}
            if self.selected not in self.marks:
                self.selected = None
            self._redraw()
            self._refresh_form()
            if message:
                self.say(message)

        self.run.submit(
            lambda: self.store.session_marks(session_id),
            loaded,
            lambda exc: self.say(_message(exc), error=True),
        )

    def _delete(self) -> None:
        if self.selected is None:
            return
        mark_id = self.selected
        m = self.marks[mark_id]
        self.run.submit(
            lambda: self.store.delete_mark(mark_id, self.user),
            lambda _m: self._reload_marks(
                f"Deleted {self._label(m.muscle, m.side)}. Undo brings it back."
            ),
            lambda exc: self.say(_message(exc), error=True),
        )

    def _undo(self) -> None:
        if self.session_id is None:
            return
        session_id = self.session_id
        self.run.submit(
            lambda: self.store.undo_last(session_id, self.user),
            lambda text: self._reload_marks(text or "Nothing to undo in this session."),
            lambda exc: self.say(_message(exc), error=True),
        )

    # ------------------------------------------------------------------ session panel
    def _on_nprs(self, name: str) -> Callable[[str, Any, Any], None]:
        def changed(_attr: str, _old: Any, new: str) -> None:
            if self._loading or self.session_id is None:
                return
            session_id = self.session_id
            self.run.submit(
                lambda: self.store.update_session(session_id, {name: new or None}, self.user),
                lambda s: self.say(f"Saved {model.FIELD_LABELS[name]}: {getattr(s, name)}"),
                lambda exc: self.say(_message(exc), error=True),
            )

        return changed

    def _show_ppts(self, ppts: list[Any]) -> None:
        labels = [(str(p.id), f"{p.site}: {p.kg_cm2:g} kg/cm²") for p in ppts]
        self.ppt_list.text = (
            "".join(f"<div>{text}</div>" for _, text in labels)
            or "<i>No pressure pain thresholds yet.</i>"
        )
        self.ppt_pick.options = [(_EMPTY, "—"), *labels]
        self.ppt_pick.value = _EMPTY

    def _show_aes(self, aes: list[Any]) -> None:
        labels = [
            (str(a.id), f"{model.ADVERSE_EVENT_TYPE_LABELS.get(a.type, a.type)} ({a.severity})")
            for a in aes
        ]
        self.ae_list.text = (
            "".join(f"<div>{text}</div>" for _, text in labels)
            or "<i>No adverse events recorded.</i>"
        )
        self.ae_pick.options = [(_EMPTY, "—"), *labels]
        self.ae_pick.value = _EMPTY

    def _remove_ppt(self) -> None:
        if self.session_id is None or not self.ppt_pick.value:
            self.say("Choose the reading to remove first.", error=True)
            return
        session_id, reading = self.session_id, int(self.ppt_pick.value)

        def work():
            self.store.delete_pressure_pain_threshold(reading, self.user)
            return self.store.list_pressure_pain_thresholds(session_id)

        def done(ppts) -> None:
            self._show_ppts(ppts)
            self.say("Pressure pain threshold removed.")

        self.run.submit(work, done, lambda exc: self.say(_message(exc), error=True))

    def _remove_ae(self) -> None:
        if self.session_id is None or not self.ae_pick.value:
            self.say("Choose the adverse event to remove first.", error=True)
            return
        session_id, event = self.session_id, int(self.ae_pick.value)

        def work():
            self.store.delete_adverse_event(event, self.user)
            return self.store.list_adverse_events(session_id)

        def done(aes) -> None:
            self._show_aes(aes)
            self.say("Adverse event removed.")

        self.run.submit(work, done, lambda exc: self.say(_message(exc), error=True))

    def _add_ppt(self) -> None:
        if self.session_id is None:
            self.say("Choose or start a session first.", error=True)
            return
        session_id = self.session_id
        fields = {"site": self.ppt_site.value, "kg_cm2": self.ppt_value.value}

        def work():
            self.store.add_pressure_pain_threshold(session_id, fields, self.user)
            return self.store.list_pressure_pain_thresholds(session_id)

        def done(ppts) -> None:
            self._show_ppts(ppts)
            self.ppt_site.value = ""
            self.ppt_value.value = None
            self.say("Pressure pain threshold saved.")

        self.run.submit(work, done, lambda exc: self.say(_message(exc), error=True))

    def _add_ae(self) -> None:
        if self.session_id is None:
            self.say("Choose or start a session first.", error=True)
            return
        session_id = self.session_id
        fields = {"type": self.ae_type.value, "severity": self.ae_severity.value}

        def work():
            self.store.add_adverse_event(session_id, fields, self.user)
            return self.store.list_adverse_events(session_id)

        def done(aes) -> None:
            self._show_aes(aes)
            self.ae_type.value = _EMPTY
            self.ae_severity.value = _EMPTY
            self.say("Adverse event saved.")

        self.run.submit(work, done, lambda exc: self.say(_message(exc), error=True))


def make_document(
    doc: Document,
    *,
    store: Any,
    atlas: Atlas | None = None,
    settings: Any = None,
    user: Any = None,
    **_: Any,
) -> AnnotatePage:
    """Build the clinician page into ``doc`` and return its state object.

    ``user`` is the signed-in :class:`tpmap.auth.Principal` (or, in tests, a name).
    """
    who = getattr(user, "name", user) or "clinician"
    return AnnotatePage(doc, store=store, atlas=atlas or load_atlas(), user=who)
