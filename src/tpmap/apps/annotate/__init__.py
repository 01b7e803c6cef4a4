"""The clinician page (``/annotate``): tap the muscles you needled, record how and what came of it.

The page is made of parts, each owning its widgets and callbacks:

- :class:`~tpmap.apps.annotate._pickers.Pickers`: patient, episode and session;
- :class:`~tpmap.apps.annotate._diagram.Diagram`: the body diagram, taps, drags, undo;
- :class:`~tpmap.apps.annotate._mark_form.MarkForm`: the selected mark's details;
- :class:`~tpmap.apps.annotate._session_panel.SessionPanel`: NPRS, pressure pain
  thresholds, adverse events;
- :class:`~tpmap.apps.annotate._marks_table.MarksTable`: the session's marks as a list;
- :class:`~tpmap.apps.annotate._outcomes.OutcomesPanel`: the episode's outcome scores;
- :class:`~tpmap.apps.annotate._progress.ProgressView`: pain, outcome scores and needling
  sites across the episode;
- :class:`~tpmap.apps.annotate._status.StatusLine`: one message per action.

They share a :class:`~tpmap.apps.annotate._context.Context` (store, atlas, user, worker,
status line) and the open session's state, which they listen to.

Data safety rules this page keeps:

- every tap on a muscle is stored at once; it is drawn hollow ("saving") until the store has
  committed it and filled ("saved") only after the commit;
- Tap and DoubleTap are both handled, so two quick taps give two marks;
- database calls run one at a time, in order, on a worker thread (never on Bokeh's event
  loop), and their results come back with ``doc.add_next_tick_callback``;
- every value is checked on the server against its field specification in
  :mod:`tpmap.model`; a bad value gets its message next to the field and changes nothing;
- typed text is shown as text, never as HTML; every change can be undone.
"""

from __future__ import annotations

from typing import Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, TabPanel, Tabs

from tpmap.apps import Download, signed_in_bar, tag_widgets, watch_connection
from tpmap.apps.annotate._a11y import accessible_tabs, numeric_keyboards
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._diagram import Diagram
from tpmap.apps.annotate._layout import PAGE_MARGIN, REPORT_VIEWPORT_JS, LayoutPlan, plan_layout
from tpmap.apps.annotate._mark_form import MarkForm
from tpmap.apps.annotate._marks_table import MarksTable
from tpmap.apps.annotate._outcomes import OutcomesPanel
from tpmap.apps.annotate._pickers import Pickers
from tpmap.apps.annotate._progress import ProgressView
from tpmap.apps.annotate._report import ReportButton
from tpmap.apps.annotate._runner import Runner
from tpmap.apps.annotate._session_panel import SessionPanel
from tpmap.apps.annotate._state import SessionState
from tpmap.apps.annotate._status import StatusLine
from tpmap.atlas import Atlas, load_atlas
from tpmap.auth import AccessDenied, Principal
from tpmap.store import ScopedStore, Store

__all__ = ["AnnotatePage", "make_document"]

#: Room for "Signed in as NAME · Sign out" beside the status line.
SIGNED_IN_WIDTH = 230
#: The window the page is laid out for until the browser reports its own.
DEFAULT_VIEWPORT = (1024, 768)


class AnnotatePage:
    """One clinician page (one browser tab): its parts, composed."""

    def __init__(self, doc: Document, *, store: ScopedStore, atlas: Atlas, user: str) -> None:
        self.doc = doc
        self.status = StatusLine("Choose or create a patient to start.")
        self.state = SessionState()
        self.ctx = Context(
            doc=doc,
            store=store,
            atlas=atlas,
            user=user,
            run=Runner(doc),
            status=self.status,
            state=self.state,
        )
        plan = self._plan(*DEFAULT_VIEWPORT, probe=True)
        self.diagram = Diagram(self.ctx, height=plan.figure_height)
        self.plan = self._plan(*DEFAULT_VIEWPORT)
        self.mark_form = MarkForm(self.ctx, width=self.plan.panel_width)
        self.download = Download()
        self.report = ReportButton(self.ctx, self.download)
        self.session_panel = SessionPanel(
            self.ctx, width=_PANEL_FIELDS_WIDTH, top=[self.report.layout]
        )
        self.marks_table = MarksTable(
            self.ctx, width=self.plan.panel_width, height=self.plan.table_height
        )
        self.outcomes = OutcomesPanel(
            self.ctx, width=self.plan.panel_width, height=self.plan.table_height - 220
        )
        self.progress = ProgressView(self.ctx, width=self.plan.panel_width)
        self.pickers = Pickers(
            self.ctx,
            on_session=self.session_panel.show,
            on_episode=lambda episode: self.diagram.focus_knee(episode.affected_side),
        )
        self.tabs = Tabs(
            tabs=[
                TabPanel(child=self.mark_form.layout, title="Mark"),
                TabPanel(child=self.session_panel.layout, title="Session"),
                TabPanel(child=self.marks_table.layout, title="Marks"),
                TabPanel(child=self.outcomes.layout, title="Outcomes"),
                TabPanel(child=self.progress.layout, title="Progress"),
            ],
            name="panel",
            width=self.plan.panel_width,
        )
        self.state.listen(self._on_state)
        self.tabs.on_change("active", lambda _a, _o, new: self._tab_shown(new))

        diagram = column(self.diagram.controls, self.diagram.figure_row, name="diagram")
        panel = column(self.diagram.actions, self.tabs, name="side-panel")
        self.header = self.pickers.header
        self.signed_in = signed_in_bar(user, width=SIGNED_IN_WIDTH)
        self.root = column(
            self.header,
            self.pickers.patient_form,
            self.pickers.episode_form,
            self.pickers.session_form,
            row(self.status.div, self.signed_in, name="status-row"),
            row(diagram, panel, spacing=12, name="workspace"),
            name="annotate-page",
            styles={"padding": "4px 8px"},
        )
        doc.title = "tpmap: record a session"
        doc.add_root(self.root)
        # The browser's window size: the diagrams take all the room it allows.
        self.viewport = ColumnDataSource(
            {"width": [DEFAULT_VIEWPORT[0]], "height": [DEFAULT_VIEWPORT[1]]}, name="viewport"
        )
        doc.add_root(self.viewport)
        doc.add_root(self.download.source)  # not drawn: it carries files to the browser
        doc.js_on_event(
            "document_ready", CustomJS(args={"source": self.viewport}, code=REPORT_VIEWPORT_JS)
        )
        self.viewport.on_change("data", lambda _a, _o, new: self._resized(new))
        accessible_tabs(doc, self.tabs, "Session details")
        watch_connection(doc)
        numeric_keyboards(doc, self._numeric_inputs())
        tag_widgets(doc)
        self.apply_plan(self.plan)
        self.pickers.find("")

    def _numeric_inputs(self) -> list[Any]:
        fields = [
            *self.mark_form.fields.values(),
            *self.session_panel.ppts.fields.values(),
            *self.pickers.patient_fields.values(),
            *self.pickers.episode_fields.values(),
            self.outcomes.fields["score"],
        ]
        return [f.widget for f in fields if f.spec.numeric]

    # ------------------------------------------------------------------ layout
    def _plan(self, width: int, height: int, *, probe: bool = False) -> LayoutPlan:
        if probe:  # before the diagram exists: the usual proportions of the two views
            return plan_layout(width, height, lambda h: int(h * 0.68) + 48)
        return plan_layout(width, height, self.diagram.pair_width)

    def _resized(self, data: dict[str, Any]) -> None:
        try:
            width, height = int(data["width"][0]), int(data["height"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            return  # not a size: keep the layout as it is
        self.apply_plan(self._plan(width, height))

    def apply_plan(self, plan: LayoutPlan) -> None:
        """Size the diagrams, the status line and the panel for ``plan``."""
        self.plan = plan
        self.diagram.resize(plan.figure_height)
        status_width = plan.width - 2 * PAGE_MARGIN - SIGNED_IN_WIDTH - 10
        if self.status.div.width != status_width:
            self.status.div.width = status_width
        controls_width = self.diagram.pair_width(plan.figure_height)
        if self.diagram.controls.width != controls_width:
            self.diagram.controls.width = controls_width
        if self.diagram.actions.width != plan.panel_width:
            self.diagram.actions.width = plan.panel_width
        self.mark_form.resize(plan.panel_width)
        self.marks_table.resize(plan.panel_width, plan.table_height)
        self.progress.resize(plan.panel_width, plan.table_height + 30)
        self.outcomes.resize(plan.panel_width, max(160, plan.table_height - 220))
        if self.tabs.width != plan.panel_width:
            self.tabs.width = plan.panel_width
        # Which window the layout is for (browser tests wait for it).
        applied = [f"layout:{plan.width}x{plan.height}"]
        if self.root.tags != applied:
            self.root.tags = applied

    # ------------------------------------------------------------------ state
    MARKS_TAB = 2
    OUTCOMES_TAB = 3
    PROGRESS_TAB = 4

    def _on_state(self, change: str) -> None:
        if change == "selection" and self.state.selected is not None:
            self.tabs.active = 0  # show the selected mark's details
        elif change == "session":
            self._tab_shown(self.tabs.active)

    def _tab_shown(self, index: int) -> None:
        # The marks table is drawn, and the outcomes and progress read the whole episode,
        # only when looked at.
        self.marks_table.show(index == self.MARKS_TAB)
        if index == self.OUTCOMES_TAB:
            self.outcomes.load()
        elif index == self.PROGRESS_TAB:
            self.progress.load()

    # ------------------------------------------------------------------ conveniences
    @property
    def selected(self) -> int | None:
        """The selected mark's id."""
        return self.state.selected

    def select(self, mark_id: int | None) -> None:
        """Select a mark of the open session."""
        self.state.select(mark_id)


#: The session panel's fields are laid out for the narrowest panel, so they fit every plan.
_PANEL_FIELDS_WIDTH = 340


def make_document(
    doc: Document,
    *,
    store: Store,
    user: Principal,
    atlas: Atlas | None = None,
    settings: Any = None,
    **_: Any,
) -> AnnotatePage:
    """Build the clinician page into ``doc`` for the signed-in ``user``.

    Every read and write goes through ``store.scoped(user)``: an id of another clinic's
    patient, however it reaches the page, is "not found" and changes nothing.
    """
    if not isinstance(user, Principal):
        raise AccessDenied("The clinician page needs a signed-in clinician")
    return AnnotatePage(doc, store=store.scoped(user), atlas=atlas or load_atlas(), user=user.name)
