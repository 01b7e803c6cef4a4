"""The researcher page (``/explore``): where clinicians needle, for whom, and with what result.

All numbers come from :mod:`tpmap.research`, the same code a notebook uses; this module turns
widget values into a :class:`~tpmap.research.Filters`, has the server's research worker
compute the answer under the page's :class:`~tpmap.research.DisclosurePolicy`, and draws it.

Nothing heavy runs on the event loop: the data set is the server's one
:class:`~tpmap.research.SharedDataset` (loaded on its worker thread the first time a page
needs it, while the page shows progress), every recomputation runs on that worker, and the
result comes back with ``doc.add_next_tick_callback``. Rules hold on the server: whatever k
the browser sends, the page uses ``policy.k(value)``, never less than the server's floor.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS
from bokeh.models.widgets import (
    Button,
    Checkbox,
    DataTable,
    DatePicker,
    Div,
    MultiChoice,
    NumberFormatter,
    NumericInput,
    RadioButtonGroup,
    Select,
    TableColumn,
)

from tpmap import model, research
from tpmap.apps import Download, label_checkboxes, signed_in_bar, tag_widgets, watch_connection
from tpmap.atlas import Atlas, load_atlas
from tpmap.plotting import (
    VIEW_TITLES,
    image_map,
    muscle_map,
    update_density_map,
    update_difference_map,
    update_muscle_map,
)

if TYPE_CHECKING:
    from bokeh.models.widgets.inputs import Options

__all__ = ["ExplorePage", "Request", "Result", "make_document", "policy_for"]

log = logging.getLogger("tpmap.explore")

MODES = ("percent", "density", "counts")
MODE_LABELS = ["% of patients", "Density", "Marks"]
WEIGHTINGS = {
    "patients": "Patients with a mark within 1.5 cm",
    "patient_normalised": "Each patient's marks sum to one",
    "marks": "Every mark counts",
}
GROUP_BY = {
    "responder": "Responder status",
    "condition": "Condition",
    "sex": "Sex",
    "affected_side": "Affected side",
}
#: The filter field a comparison's group column corresponds to.
_GROUP_FILTER = {
    "responder": "responder",
    "condition": "conditions",
    "sex": "sexes",
    "affected_side": "affected_sides",
}
THRESHOLDS = {"mcid": "MCID", "relative": "30 % change"}
HEIGHT = 600
CELL = 0.5  # cm, density grid
SIGMA = 1.5  # cm, Gaussian smoothing of the smoothed maps
RADIUS = 1.5  # cm, "patients with a mark within"

# A download: Python fills this source, the browser turns it into a file.
# The figure as PNG straight from the browser's canvas (what the researcher sees).
_PNG_JS = """
const view = [...Bokeh.index.all_views()].find(v => v.model.name === "explore-figure");
if (!view) { return; }
view.export("png").to_blob().then(blob => {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "tpmap-map.png";
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
});
"""


def policy_for(settings: Any = None, user: Any = None) -> research.DisclosurePolicy:
    """The disclosure policy of a page: the user's role and the server's floor.

    ``user`` is the signed-in :class:`tpmap.auth.Principal` (a clinician gets the clinician
    policy), or anything with a ``role``; without one the strictest policy (researcher)
    applies.
    """
    floor = int(getattr(settings, "min_patients", None) or research.DEFAULT_MIN_PATIENTS)
    if getattr(user, "is_clinician", False):
        role: str | None = "clinician"  # a signed-in tpmap.auth.Principal
    else:
        role = getattr(user, "role", None) if user is not None else None
    return research.DisclosurePolicy.for_role(role, min_patients=floor)


@dataclass(frozen=True)
class Request:
    """Everything one computation needs from the widgets (immutable: it crosses threads)."""

    view: str
    layer: str
    mode: str
    weighting: str
    filters: research.Filters
    fold: bool
    compare: bool
    group_by: str
    groups: tuple[str, str]
    group_labels: tuple[str, str]
    k: int
    rule: research.ResponderRule | None


@dataclass
class Result:
    """What one computation produced (numbers only: no frames are kept per page)."""

    request: Request
    table: pd.DataFrame
    legend: str
    refused: str | None = None
    grid: Any = None
    n_patients: int = 0  # as displayed (perturbed when the policy says so)
    hidden_cells: frozenset[tuple[str, str]] = field(default_factory=frozenset)


class ExplorePage:
    """Widgets and state of one researcher page.

    Parameters
    ----------
    doc
        The Bokeh document.
    shared
        The server's :class:`~tpmap.research.SharedDataset`.
    atlas
        The body diagram.
    policy
        The disclosure policy for this page's user (see :func:`policy_for`).
    """

    def __init__(
        self,
        doc: Document,
        *,
        shared: research.SharedDataset,
        atlas: Atlas,
        policy: research.DisclosurePolicy,
        record_export: Callable[[dict[str, Any]], None] | None = None,
        user_name: str | None = None,
    ) -> None:
        self.doc = doc
        self.user_name = user_name
        self.shared = shared
        self.atlas = atlas
        self.policy = policy
        self._recorder = record_export
        self.result: Result | None = None
        self._figures: dict[tuple[str, str, str], Any] = {}
        self._table_fields: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._pending: Future[Any] | None = None
        self._generation = 0
        self._ready = False
        self._statuses: dict[research.ResponderRule, pd.Series] = {}
        # Without a server session (document tests), callbacks queue here for settle().
        self._queue: queue.Queue[Callable[[], None]] | None = (
            queue.Queue() if doc.session_context is None else None
        )
        self._poll: Any = None
        self._build()
        self._start()

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop (or in settle(), without a server)."""
        if self._queue is not None:
            self._queue.put(callback)
        else:
            self.doc.add_next_tick_callback(callback)

    def settle(self, timeout: float = 120.0) -> None:
        """Wait for the computations under way and apply their results (document tests)."""
        if self._queue is None:
            raise RuntimeError("settle() is for documents without a server session")
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
        while True:
            pending = self._pending
            if pending is not None:
                # Wait without raising: a failed computation is the page's to report.
                futures.wait(
                    [pending], timeout=max(0.1, (deadline - dt.datetime.now()).total_seconds())
                )
            try:
                callback = self._queue.get(timeout=0.05)
            except queue.Empty:
                idle = self._pending is None or self._pending.done()
                if idle and self._queue.empty():
                    return
                continue
            callback()

    # ------------------------------------------------------------------ loading
    def _start(self) -> None:
        future = self.shared.ensure()
        if future.done() and future.exception() is None:
            self._on_loaded(future)
            return
        self.status.text = _text(f"Loading the research data: {self.shared.progress}")
        if self._queue is None:
            self._poll = self.doc.add_periodic_callback(self._show_progress, 300)
        self._pending = future
        future.add_done_callback(lambda f: self._schedule(lambda: self._on_loaded(f)))

    def _show_progress(self) -> None:
        self.status.text = _text(f"Loading the research data: {self.shared.progress}")

    def _on_loaded(self, future: Future[research.Dataset]) -> None:
        if self._poll is not None:
            self.doc.remove_periodic_callback(self._poll)
            self._poll = None
        if future.exception() is not None:
            self.status.text = (
                "The research data could not be loaded. Check that the database is reachable; "
                "the server's log has the details."
            )
            self._pending = None
            return
        data = future.result()
        self._fill_options(data)
        self._ready = True
        self._pending = None
        self.update()

    def _fill_options(self, data: research.Dataset) -> None:
        # Bokeh's MultiChoice (Choices.js) draws option labels as HTML: a clinician's name is
        # typed text, so its label is escaped (the value stays the name itself).
        self.clinicians.options = [(c, html.escape(c)) for c in data.clinicians]
        first, last = data.date_range or (None, None)
        self._date_range: tuple[dt.date | None, dt.date | None] = (first, last)
        self.date_from.value, self.date_to.value = first, last
        instruments = list(data.instruments)
        instrument_options: Options = [
            (i, model.OUTCOME_INSTRUMENTS[i].label if i in model.OUTCOME_INSTRUMENTS else i)
            for i in instruments
        ]
        self.instrument.options = instrument_options
        self.instrument.value = "nprs" if "nprs" in instruments else (instruments or [""])[0]

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        floor = self.policy.min_patients
        self.view = Select(
            title="View",
            value="posterior",
            options=_options((v, VIEW_TITLES[v]) for v in self.atlas.views),
            name="view",
        )
        self.layer = Select(
            title="Layer",
            value=model.Layer.SUPERFICIAL.value,
            options=_options((layer, model.LAYER_LABELS[layer]) for layer in model.LAYERS),
            name="layer",
            width=130,
        )
        self.mode = RadioButtonGroup(labels=MODE_LABELS, active=0, name="mode")
        self.weighting = Select(
            title="Density weighting",
            value="patients",
            options=_options(WEIGHTINGS.items()),
            name="weighting",
        )

        def choice(
            title: str, name: str, values: Any, labels: dict[str, str] | None = None
        ) -> MultiChoice:
            labels = labels or {}
            opts: list[str | tuple[str, str]] = [
                (str(v), html.escape(labels.get(str(v), str(v).replace("_", " ")))) for v in values
            ]
            return MultiChoice(title=title, options=opts, value=[], name=name, width=250)

        self.conditions = choice(
            "Condition", "conditions", model.CONDITIONS, model.CONDITION_LABELS
        )
        self.clinicians = choice("Clinician", "clinicians", [])
        self.techniques = choice(
            "Technique", "techniques", model.TECHNIQUES, model.TECHNIQUE_LABELS
        )
        self.ltr = choice("Local twitch response", "ltr", model.LTR_GRADES)
        self.kinds = choice("Kind of structure", "kinds", model.KINDS, model.KIND_LABELS)
        self.sexes = choice("Sex", "sexes", model.SEXES)
        self.age_bands = choice("Age band", "age-bands", [b for b, _, _ in research.AGE_BANDS])
        self.instrument = Select(title="Responder by", value="", options=[], name="instrument")
        self.instrument.width = 120
        self.threshold = Select(
            title="Responder if",
            value="mcid",
            options=_options(THRESHOLDS.items()),
            name="threshold",
            width=125,
        )
        self.responder = Select(
            title="Responder status",
            value="",
            options=_options(
                [("", "Any"), *[(s, s.replace("_", "-")) for s in research.RESPONDER_STATUSES]]
            ),
            name="responder",
            width=250,
        )
        self._date_range = (None, None)
        self.date_from = DatePicker(title="From", name="date-from", width=122)
        self.date_to = DatePicker(title="To", name="date-to", width=122)
        self.fold = Checkbox(
            label="Fold to the affected side (affected knee on the right)",
            active=False,
            name="fold",
        )
        self.compare = Checkbox(label="Compare two groups", active=False, name="compare")
        self.group_by = Select(
            title="Groups by",
            value="responder",
            options=_options(GROUP_BY.items()),
            name="group-by",
            width=250,
        )
        self.group_a = Select(title="Group A", name="group-a", width=122)
        self.group_b = Select(title="Group B", name="group-b", width=122)
        # A plain number input: its value reaches the server as typed (a Spinner would clamp
        # it in the browser), and the server enforces the floor whatever arrives.
        self.k = NumericInput(
            title=f"Hide muscles and spots with fewer than k patients (k of at least {floor})",
            value=floor,
            mode="int",
            name="k",
            width=250,
        )
        self.k_message = Div(name="k-message", width=250, styles={"color": "#a33"})
        self.status = Div(name="status", width=640, styles={"font-size": "13px"})
        self.legend = Div(name="legend", width=640, styles={"font-size": "13px"})
        self.table_source = ColumnDataSource(name="table-source")
        self.table = DataTable(
            source=self.table_source,
            columns=[],
            width=640,
            height=230,
            index_position=None,
            name="table",
        )
        self.download = Download()
        csv_table = Button(label="Table (CSV)", name="download-table", width=120)
        parquet = Button(label="Marks (Parquet)", name="download-parquet", width=120)
        csv_marks = Button(label="Marks (CSV)", name="download-marks", width=120)
        png = Button(label="Figure (PNG)", name="download-png", width=120)
        png.js_on_click(CustomJS(code=_PNG_JS))
        csv_table.on_click(self.download_table)
        parquet.on_click(lambda: self.download_marks("parquet"))
        csv_marks.on_click(lambda: self.download_marks("csv"))

        self._group_options(reset=True, redraw=False)  # before any callback is wired
        for w in (
            self.view,
            self.weighting,
            self.instrument,
            self.threshold,
            self.responder,
            self.group_a,
            self.group_b,
            self.date_from,
            self.date_to,
        ):
            w.on_change("value", lambda _a, _o, _n: self.update())
        for multi in (
            self.conditions,
            self.clinicians,
            self.techniques,
            self.ltr,
            self.kinds,
            self.sexes,
            self.age_bands,
        ):
            multi.on_change("value", lambda _a, _o, _n: self.update())
        for toggle in (self.mode, self.fold, self.compare):
            toggle.on_change("active", lambda _a, _o, _n: self.update())
        self.layer.on_change("value", lambda _a, _o, _n: self.update())
        self.group_by.on_change("value", lambda _a, _o, _n: self._group_options(reset=True))
        self.k.on_change("value", self._on_k)

        controls = column(
            row(self.view, self.layer),
            self.mode,
            self.weighting,
            self.conditions,
            row(self.date_from, self.date_to),
            self.clinicians,
            self.techniques,
            self.ltr,
            self.kinds,
            self.sexes,
            self.age_bands,
            row(self.instrument, self.threshold),
            self.responder,
            self.fold,
            self.compare,
            self.group_by,
            row(self.group_a, self.group_b),
            self.k,
            self.k_message,
            width=270,
            name="controls",
        )
        self.figure_holder = column(name="figure-holder")
        top = [signed_in_bar(self.user_name)] if self.user_name else []
        self.main = column(
            *top,
            self.status,
            self.figure_holder,
            self.legend,
            row(csv_table, parquet, csv_marks, png),
            self.table,
            name="main",
        )
        self.doc.title = "tpmap: explore"
        self.doc.add_root(row(controls, self.main, name="explore-page"))
        self.doc.add_root(self.download.source)  # not drawn, but it must reach the browser
        tag_widgets(self.doc)
        watch_connection(self.doc)
        label_checkboxes(self.doc)

    def _on_k(self, _attr: str, _old: Any, new: Any) -> None:
        k = self.policy.k(new)
        if new is None or k != new:
            # Whatever the browser sent (a crafted value included), the floor holds.
            self.k_message.text = _text(
                f"k cannot be below {self.policy.min_patients} on this server: using {k}."
            )
            self._k_reset = True
            self.k.value = k  # comes back here with a valid value, which redraws
            return
        if not getattr(self, "_k_reset", False):
            self.k_message.text = ""
        self._k_reset = False
        self.update()

    def _group_options(self, *, reset: bool, redraw: bool = True) -> None:
        by = self.group_by.value
        values: list[tuple[str, str]]
        if by == "responder":
            values = [(s, s.replace("_", "-")) for s in ("responder", "non_responder")]
        elif by == "condition":
            values = [(c, model.CONDITION_LABELS[c]) for c in model.CONDITIONS]
        elif by == "sex":
            values = [(s, s) for s in model.SEXES]
        else:
            values = [(s, s) for s in model.AFFECTED_SIDES]
        for w in (self.group_a, self.group_b):
            w.options = _options(values)
        if reset and len(values) >= 2:
            self.group_a.value, self.group_b.value = values[0][0], values[1][0]
        if redraw:
            self.update()

    # ------------------------------------------------------------------ requests
    def filters(self) -> research.Filters:
        """The researcher's filter as the widgets say it (before the policy's coarsening)."""

        def chosen(w: MultiChoice) -> tuple[str, ...] | None:
            return tuple(w.value) or None

        first, last = self._date_range
        date_from = _date(self.date_from.value)
        date_to = _date(self.date_to.value)
        # The full range is no filter: episodes without sessions stay in the cohort.
        if date_from is not None and first is not None and date_from <= first:
            date_from = None
        if date_to is not None and last is not None and date_to >= last:
            date_to = None
        return research.Filters(
            conditions=chosen(self.conditions),
            sexes=chosen(self.sexes),
            age_bands=chosen(self.age_bands),
            clinicians=chosen(self.clinicians),
            techniques=chosen(self.techniques),
            ltr_grades=chosen(self.ltr),
            # A kind of structure (muscle, ligament, tendon, periosteum, fascia) is the set
            # of atlas regions of that kind: a mark-level filter like any other muscle set.
            muscles=self.atlas.ids_of_kind(*kinds) if (kinds := chosen(self.kinds)) else None,
            responder=(self.responder.value,) if self.responder.value else None,
            date_from=date_from,
            date_to=date_to,
        )

    def request(self) -> Request:
        """The current widgets as an immutable request."""
        rule = None
        if self.instrument.value:
            rule = research.ResponderRule(self.instrument.value, threshold=self.threshold.value)
        return Request(
            view=self.view.value,
            # A layer the page does not know (a forged value) is the superficial one.
            layer=self.layer.value if self.layer.value in model.LAYERS else "superficial",
            mode=MODES[self.mode.active or 0],  # None: nothing chosen, the first mode
            weighting=self.weighting.value,
            filters=self.filters(),
            fold=bool(self.fold.active),
            compare=bool(self.compare.active),
            group_by=self.group_by.value,
            groups=(self.group_a.value, self.group_b.value),
            group_labels=(self._group_label(self.group_a), self._group_label(self.group_b)),
            k=self.policy.k(self.k.value),
            rule=rule,
        )

    def update(self) -> None:
        """Recompute from the widgets on the research worker; redraw when it is done."""
        if not self._ready:
            return
        req = self.request()
        with self._lock:
            self._generation += 1
            generation = self._generation
        self.status.text = "Computing ..."
        future = self.shared.submit(self.compute, req)
        self._pending = future
        future.add_done_callback(lambda f: self._schedule(lambda: self._apply(f, generation)))

    # ------------------------------------------------------------------ computing (worker)
    def _cohort(self, data: research.Dataset, rule: research.ResponderRule | None) -> pd.DataFrame:
        """The episode cohort with a ``responder`` column under ``rule``."""
        if rule is None:
            return data.cohort.assign(responder="unknown")
        status = self._statuses.get(rule)
        if status is None:
            result = research.responders(data.outcomes, data.cohort, rule=rule)
            status = pd.Series(
                result["status"].to_numpy(), index=result["episode_id"].to_numpy()
            ).reindex(data.cohort["episode_id"].to_numpy())
            status = status.fillna("unknown").astype(str)
            self._statuses[rule] = status
        return data.cohort.assign(responder=status.to_numpy())

    def _check(
        self,
        data: research.Dataset,
        cohort: pd.DataFrame,
        filters: research.Filters,
        req: Request,
    ) -> research.QueryCheck | None:
        if not self.policy.check_differences:
            return None
        return research.check_query(
            filters,
            cohort,
            data.marks,
            sessions=data.sessions,
            k=req.k,
            fold=req.fold,
            date_step=self.policy.date_step,
        )

    def select(self, req: Request) -> tuple[Any, ...]:
        """The selection for ``req``: checked, filtered, folded (runs on the worker)."""
        data = self.shared.data
        assert data is not None
        cohort_all = self._cohort(data, req.rule)
        f = self.policy.coarsen(req.filters)
        check = self._check(data, cohort_all, f, req)
        if check is not None and check.refused:
            return data, cohort_all, f, check, None, None
        cohort, marks = f.apply(cohort_all, data.marks, sessions=data.sessions)
        if req.fold:
            cohort, marks = research.fold_to_affected_side(cohort, marks)
        return data, cohort_all, f, check, cohort, marks

    def compute(self, req: Request) -> Result:
        """Everything one redraw needs, under the disclosure policy (runs on the worker)."""
        data, cohort_all, f, check, cohort, marks = self.select(req)
        k = req.k
        noise = self.shared.cell_key if self.policy.perturb else None
        if cohort is None:
            return Result(req, pd.DataFrame(), "", refused=check.refused)
        hidden = check.hidden_cells if check is not None else frozenset()
        n = _count(cohort, noise, k)
        view, layer = req.view, req.layer
        in_view = ((marks["view"] == view) & (marks["layer"] == layer)).to_numpy()
        marks_v = marks.loc[in_view]
        grid_kw: dict[str, Any] = {
            "bounds": self.atlas.bounds(view),
            "mask": self.atlas.outline(view),
            "cell": CELL,
            "sigma": SIGMA,
            "radius": RADIUS,
            "weighting": req.weighting,
            "min_patients": k,
            "dominance": self.policy.dominance,
            "perturbation": noise,
        }
        who = _who(f, n, self.policy)
        what = (
            f"{who}; about {_round10(len(marks))} marks, about {_round10(len(marks_v))} on "
            "this view and layer"
        )
        notes = []
        grid: research.DensityGrid | research.DifferenceGrid | None = None
        if req.compare:
            result = self._compare(req, data, cohort_all, f, cohort, marks, noise, grid_kw)
            if isinstance(result, str):
                return Result(req, pd.DataFrame(), "", refused=result)
            table, grid, what, meaning = result
        elif req.mode == "density":
            spec = research.GridSpec.from_bounds(self.atlas.bounds(view), CELL)
            grid = research.density_grid(
                marks_v, view, cells=_cells(data, marks_v, spec, req), **grid_kw
            )
            table = _drop_cells(
                research.muscle_table(marks, cohort, min_patients=k, perturbation=noise), hidden
            )
            meaning = _density_meaning(grid, req.weighting)
        else:
            table = _drop_cells(
                research.muscle_table(marks, cohort, min_patients=k, perturbation=noise), hidden
            )
            meaning = (
                f"Colour: percentage of these {n} patients with at least one mark in the "
                "muscle (each patient once, whichever of their episodes; hover for the 95 % "
                "Wilson interval)."
                if req.mode == "percent"
                else "Colour: number of marks in the muscle."
            )
        suppressed = table.attrs.get("n_suppressed", 0)
        notes.append(
            f"Grey: not shown, because fewer than {k} patients are behind it (small-cell "
            f"suppression; {suppressed} muscle rows) or none"
            + (
                f", or because another permitted view differs from this one by fewer than {k}"
                f" patients there ({len(hidden)} muscle rows)"
                if hidden
                else ""
            )
            + "."
        )
        if isinstance(grid, research.DensityGrid) and grid.n_dominated:
            notes.append(
                f"{grid.n_dominated} spots hidden because one patient gives most of their value."
            )
        if req.fold:
            n_both = cohort.attrs.get("n_bilateral", 0)
            notes.append(
                "Marks of left-affected episodes are mirrored to the right; "
                f"{n_both} episodes affecting both knees are left out."
            )
        if req.rule is not None:
            notes.append(self._responder_note(req, cohort, noise, k))
        if noise is not None:
            notes.append("Counts carry consistent noise of up to ±2 patients.")
        legend = f"<b>{_text(what)}.</b> {_text(meaning)} " + _text(" ".join(notes))
        return Result(req, table, legend, None, grid, n, hidden)

    def _responder_note(self, req: Request, cohort: pd.DataFrame, noise: Any, k: int) -> str:
        assert req.rule is not None
        shown = _small(cohort.loc[cohort["responder"] == "unknown"], noise, k)
        return f"Responder: {req.rule.describe()}; unknown status: {shown} patients."

    def _compare(
        self,
        req: Request,
        data: research.Dataset,
        cohort_all: pd.DataFrame,
        f: research.Filters,
        cohort: pd.DataFrame,
        marks: pd.DataFrame,
        noise: research.CellKey | None,
        grid_kw: dict[str, Any],
    ) -> tuple[pd.DataFrame, research.DifferenceGrid | None, str, str] | str:
        field_name = _GROUP_FILTER[req.group_by]
        column_name = req.group_by
        parts = []
        hidden: set[tuple[str, str]] = set()
        for value in req.groups:
            current = getattr(f, field_name)
            wanted = (value,) if current is None else tuple(v for v in current if v == value)
            change: dict[str, Any] = {field_name: wanted or (value,)}
            g_filter = replace(f, **change)
            check = self._check(data, cohort_all, g_filter, req)
            if check is not None and check.refused:
                label = req.group_labels[req.groups.index(value)]
                return f"Group {label}: {check.refused}"
            if check is not None:
                hidden |= check.hidden_cells
            c = cohort.loc[(cohort[column_name].astype(str) == str(value)).to_numpy()]
            parts.append((c, marks))
        (ca, ma), (cb, mb) = parts
        k = req.k
        na, nb = _count(ca, noise, k), _count(cb, noise, k)
        labels = req.group_labels
        table = research.compare_groups(ma, ca, mb, cb, min_patients=k, perturbation=noise)
        table = _drop_cells(table, hidden)
        what = f"Group A: {labels[0]}, {na} patients. Group B: {labels[1]}, {nb} patients"
        if req.group_by == "responder":
            unknown = _small(cohort.loc[cohort["responder"] == "unknown"], noise, k)
            what += f"; {unknown} patients of unknown status are in neither"
        both = table.attrs.get("n_in_both", 0)
        if both:
            in_both = np.intersect1d(ca["patient_id"].to_numpy(), cb["patient_id"].to_numpy())
            what += (
                f"; {_small(pd.DataFrame({'patient_id': in_both}), noise, k)} patients are in both"
            )
        grid = None
        if req.mode == "density":
            view, layer = req.view, req.layer
            in_layer = [m.loc[(m["layer"] == layer).to_numpy()] for m in (ma, mb)]
            grid = research.difference_grid(
                in_layer[0], ca, in_layer[1], cb, view, n_cohort_a=na, n_cohort_b=nb, **grid_kw
            )
            meaning = (
                f"Red: a larger share of {labels[0]}'s {na} patients was needled there; blue: "
                f"of {labels[1]}'s {nb} patients ({grid.label}). White: no difference."
            )
        else:
            meaning = (
                f"Colour: percentage of {labels[0]}'s {na} patients with a mark in the muscle "
                f"minus that of {labels[1]}'s {nb} patients. Fisher's exact test per muscle; "
                f"q: Benjamini-Hochberg over {table.attrs.get('n_tests', 0)} tests, "
                f"{research.BH_FAMILY}. The difference's 95 % interval (hover, table) is not "
                "adjusted for multiple comparisons."
            )
        return table, grid, what, meaning

    # ------------------------------------------------------------------ drawing (event loop)
    def _apply(self, future: Future[Result], generation: int) -> None:
        if generation != self._generation:
            return  # a newer request is on its way
        self._pending = None
        if future.exception() is not None:
            log.error("explore computation failed", exc_info=future.exception())
            self.status.text = "This view could not be computed; the server's log has the details."
            return
        result = future.result()
        self.result = result
        req = result.request
        if result.refused:
            self.status.text = _text(result.refused)
            self.legend.text = ""
            self._show_table(pd.DataFrame())
            fig = self._figure("muscles", req.view, req.layer)
            update_muscle_map(fig, None, title=f"{VIEW_TITLES[req.view]}: not shown")
            self._show_figure(fig)
            return
        self.status.text = ""
        title_view = VIEW_TITLES[req.view]
        labels = req.group_labels
        if req.compare and req.mode == "density":
            fig = self._figure("difference", req.view, req.layer)
            update_difference_map(
                fig, result.grid, labels=labels, title=f"{title_view}: {labels[0]} vs {labels[1]}"
            )
        elif req.compare:
            fig = self._figure("muscles", req.view, req.layer)
            update_muscle_map(
                fig,
                result.table,
                value="diff",
                diverging=True,
                title=f"{title_view}: {labels[0]} vs {labels[1]}",
                colour_title=f"{labels[0]} minus {labels[1]}, percentage points",
            )
        elif req.mode == "density":
            fig = self._figure("density", req.view, req.layer)
            update_density_map(
                fig,
                result.grid,
                n_cohort=result.n_patients,
                title=f"{title_view}: where needling concentrates",
            )
        else:
            fig = self._figure("muscles", req.view, req.layer)
            value = "pct" if req.mode == "percent" else "n_marks"
            update_muscle_map(
                fig,
                result.table,
                value=value,
                colour_title=(
                    f"% of {result.n_patients} patients" if req.mode == "percent" else "marks"
                ),
                title=f"{title_view}: patients needled per muscle",
            )
        self._show_figure(fig)
        self.legend.text = result.legend
        self._show_table(result.table)

    def _show_figure(self, fig: Any) -> None:
        if list(self.figure_holder.children) != [fig]:
            self.figure_holder.children = [fig]

    def _figure(self, kind: str, view: str, layer: str) -> Any:
        """The page's figure of this kind, view and layer: built once, then updated in place.

        Rebuilding a figure for every filter change would send it whole to the browser and
        make BokehJS build new views; updating sends only the new numbers.
        """
        key = (kind, view, layer)
        fig = self._figures.get(key)
        if fig is None:
            spec = research.GridSpec.from_bounds(self.atlas.bounds(view), CELL)
            if kind == "muscles":
                fig = muscle_map(self.atlas, view, None, layer=layer, height=HEIGHT)
            else:
                fig = image_map(self.atlas, view, spec, layer=layer, height=HEIGHT)
            fig.name = "explore-figure"
            fig.toolbar_location = "below"  # keep the title readable
            self._figures[key] = fig
        return fig

    def _group_label(self, w: Select) -> str:
        # The options this page gives a group picker: (value, label) pairs.
        options = cast("list[tuple[str, str]]", w.options)
        return dict(options).get(w.value, w.value) if options else ""

    def _show_table(self, table: pd.DataFrame) -> None:
        t = table.copy()
        if "muscle" in t:
            t.insert(0, "name", [self.atlas.muscle_name(m) for m in t["muscle"]])
        self.table_source.data = {c: t[c].tolist() for c in t.columns}
        pct = NumberFormatter(format="0.0")
        p = NumberFormatter(format="0.0000")
        titles = {
            "name": "Muscle",
            "side": "Side",
            "n_marks": "Marks",
            "n_patients": "Patients",
            "n_cohort": "Cohort",
            "pct": "%",
            "ci_low": "95% CI low",
            "ci_high": "95% CI high",
            "a": "A",
            "n_a": "n A",
            "b": "B",
            "n_b": "n B",
            "pct_a": "% A",
            "pct_b": "% B",
            "diff": "A-B",
            "diff_low": "CI low (unadj.)",
            "diff_high": "CI high (unadj.)",
            "p": "p",
            "q": "q (BH)",
        }
        shown = tuple(c for c in t.columns if c in titles)
        if shown == self._table_fields:
            return  # same columns: the new rows are enough (new models cost a round trip)
        cols = []
        for c in shown:
            fmt = p if c in ("p", "q") else pct if t[c].dtype.kind == "f" else None
            kwargs: dict[str, Any] = {"formatter": fmt} if fmt is not None else {}
            width = 170 if c == "name" else 60
            cols.append(TableColumn(field=c, title=titles[c], width=width, **kwargs))
        self.table.columns = cols
        self._table_fields = shown

    # ------------------------------------------------------------------ downloads
    def _send(self, filename: str, payload: bytes, mime: str) -> None:
        self.download.send(filename, payload, mime)

    def _record_export(self, record: dict[str, Any]) -> None:
        """Record an export (filters, k, rows, kind, columns) in the audit trail.

        Runs on the worker before the file is sent: an export that cannot be recorded is
        not sent. Without a store (a notebook's page) the record goes to the log.
        """
        if self._recorder is None:
            log.info("research export (not recorded: no store): %s", record)
            return
        self._recorder(record)

    def download_table(self) -> None:
        """Send the per-muscle table (as shown: suppressed, checked, perturbed) as CSV."""
        result = self.result
        if result is None or result.refused:
            return
        table = result.table
        payload = table.to_csv(index=False).encode()
        record = research.export_record(
            "muscle_table",
            filters=self.policy.coarsen(result.request.filters),
            k=result.request.k,
            rows=len(table),
            columns=list(table.columns),
            file_format="csv",
            fold=result.request.fold,
            compare=result.request.compare,
        )

        def recorded() -> tuple[str, bytes, str]:
            self._record_export(record)  # on the worker: the database is not the event loop's
            return "tpmap-muscles.csv", payload, "text/csv"

        future = self.shared.submit(recorded)
        future.add_done_callback(lambda f: self._schedule(lambda: self._sent(f)))

    def export_marks(self, req: Request, file_format: str = "csv") -> research.Export | str:
        """The de-identified marks export for ``req`` (runs on the worker), or why not."""
        _data, _cohort_all, f, check, cohort, marks = self.select(req)
        if cohort is None:
            return check.refused
        grids = {
            v: research.GridSpec.from_bounds(self.atlas.bounds(v), CELL) for v in self.atlas.views
        }
        return research.export_marks(
            cohort,
            marks,
            filters=f,
            k=req.k,
            hidden_cells=check.hidden_cells if check is not None else (),
            dates=self.policy.export_dates,
            clinicians=self.policy.export_clinicians,
            responder=cohort["responder"] if req.rule is not None else None,
            grids=grids,
            radius=RADIUS,
            fold=req.fold,
            file_format=file_format,
        )

    def download_marks(self, kind: str) -> None:
        """Send the de-identified marks as Parquet or CSV (built on the worker)."""
        if self.result is None or not self._ready:
            return
        req = self.request()
        self.status.text = "Preparing the download ..."
        future = self.shared.submit(self._marks_payload, req, kind)
        self._pending = future
        future.add_done_callback(lambda f: self._schedule(lambda: self._sent(f)))

    def _marks_payload(self, req: Request, kind: str) -> tuple[str, bytes, str] | str:
        export = self.export_marks(req, kind)
        if isinstance(export, str):
            return export
        self._record_export(export.record)  # recorded before anything leaves
        if kind == "parquet":
            buf = io.BytesIO()
            export.frame.to_parquet(buf, index=False)
            return "tpmap-marks.parquet", buf.getvalue(), "application/vnd.apache.parquet"
        payload = export.frame.to_csv(index=False).encode()
        return "tpmap-marks.csv", payload, "text/csv"

    def _sent(self, future: Future[Any]) -> None:
        self._pending = None
        if future.exception() is not None:
            log.error("research export failed", exc_info=future.exception())
            self.status.text = "The download could not be prepared; the server's log has why."
            return
        answer = future.result()
        if isinstance(answer, str):
            self.status.text = _text(answer)
            return
        filename, payload, mime = answer
        self.status.text = ""
        self._send(filename, payload, mime)


def _text(value: str) -> str:
    """Plain text for a Div (whose text is HTML): escaped, quotes left readable."""
    return html.escape(value, quote=False)


def _date(value: Any) -> dt.date | None:
    if value in (None, ""):
        return None
    return pd.Timestamp(value).date()


def _cells(
    data: research.Dataset, marks: pd.DataFrame, spec: research.GridSpec, req: Request
) -> Any:
    """The shared data set's precomputed cells of ``marks`` in ``spec`` (None: compute them).

    Folded marks moved, so their precomputed cells no longer apply.
    """
    view = req.view
    if req.fold or data.cells is None or (data.grids or {}).get(view) != spec:
        return None
    return data.cells[marks.index.to_numpy()]


def _small(frame: pd.DataFrame, noise: research.CellKey | None, k: int) -> str:
    """A patient count for a legend: "fewer than k" for 1 .. k-1, else as displayed."""
    n = int(pd.unique(frame["patient_id"].to_numpy()).size)
    if 0 < n < k:
        return f"fewer than {k}"
    return str(_count(frame, noise, k)) if n else "0"


def _count(cohort: pd.DataFrame, noise: research.CellKey | None, k: int) -> int:
    ids = cohort["patient_id"].to_numpy()
    if noise is None:
        return int(pd.unique(ids).size)
    return noise.count(ids, floor=k)


def _round10(n: int) -> str:
    return f"{round(n, -1):,}".replace(",", " ")


def _drop_cells(table: pd.DataFrame, hidden: frozenset[tuple[str, str]] | set) -> pd.DataFrame:
    if not hidden or table.empty or "side" not in table.columns:
        return table
    keep = [(m, s) not in hidden for m, s in zip(table["muscle"], table["side"], strict=True)]
    out = table.loc[keep].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def _options(pairs: Iterable[tuple[str, str]]) -> Options:
    """``(value, label)`` pairs as a Select's options."""
    return list(pairs)


def _months(day: dt.date) -> str:
    return day.strftime("%b %Y")


def _who(f: research.Filters, n: int, policy: research.DisclosurePolicy) -> str:
    """The denominator in words: who these patients are."""
    parts = [f"{n} patients"]
    if f.clinicians:
        names = ", ".join(f.clinicians)
        parts.append(f"treated by {names}")
    if f.date_from is not None or f.date_to is not None:
        fmt: Callable[[dt.date], str] = (
            _months if policy.date_granularity == "month" else (lambda d: d.isoformat())
        )
        low = fmt(f.date_from) if f.date_from else "the start"
        high = fmt(f.date_to) if f.date_to else "now"
        parts.append(f"with a session between {low} and {high}")
    if len(parts) == 1:
        parts.append("in the filtered cohort")
    # Episodes are not counted aloud: that would be one more exact number to subtract.
    return " ".join(parts) + " (with or without marks; each patient once)"


def _density_meaning(grid: research.DensityGrid, weighting: str) -> str:
    if weighting == "patients":
        return (
            f"Colour: share of these patients with a mark within {grid.radius:g} cm of the spot "
            "(each patient counted at most once per spot)."
        )
    if weighting == "marks":
        return f"Colour: marks per cm², Gaussian smoothing (sigma {grid.sigma:g} cm)."
    return (
        "Colour: patients per cm², each patient's marks sharing one patient's weight, "
        f"Gaussian smoothing (sigma {grid.sigma:g} cm)."
    )


def make_document(
    doc: Document,
    *,
    store: Any = None,
    atlas: Atlas | None = None,
    settings: Any = None,
    research: Any = None,
    dataset: Any = None,
    policy: Any = None,
    user: Any = None,
    **_: Any,
) -> ExplorePage:
    """Build the researcher page into ``doc`` and return its state object.

    Parameters
    ----------
    research
        The server's :class:`~tpmap.research.SharedDataset` (from the page context).
    dataset
        A loaded :class:`~tpmap.research.Dataset` instead (tests, notebooks, benchmarks).
    policy
        The :class:`~tpmap.research.DisclosurePolicy`; by default :func:`policy_for`
        (``settings``'s floor, ``user``'s role).
    store
        Without ``research`` or ``dataset``: a shared data set is made on it.
    """
    from tpmap import research as _research

    shared = research
    atlas = atlas or load_atlas()
    if shared is None:
        if dataset is not None:
            shared = _research.SharedDataset.of(dataset, grids=_research.view_grids(atlas, CELL))
        else:
            snapshot = getattr(settings, "snapshot_dir", None)
            shared = _research.SharedDataset(
                store, snapshot=snapshot, grids=_research.view_grids(atlas, CELL)
            )
    recorder = None
    if store is not None and user is not None:

        def recorder(record: dict[str, Any]) -> None:
            store.record_export(user, record)

    return ExplorePage(
        doc,
        shared=shared,
        atlas=atlas,
        policy=policy or policy_for(settings, user),
        record_export=recorder,
        user_name=getattr(user, "name", None),
    )
