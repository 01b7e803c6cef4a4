"""The researcher page (``/explore``): where clinicians needle, for whom, and with what result.

All numbers come from :mod:`tpmap.research`, the same code a notebook uses; this module turns
widget values into a :class:`~tpmap.research.Filters`, has the server's research worker
compute the answer under the page's :class:`~tpmap.research.DisclosurePolicy`, and draws it.

Nothing heavy runs on the event loop, nor in the server's process: the data set lives in the
server's one :class:`~tpmap.research.ResearchProcess` (a low-priority child process, loaded
the first time a page needs it while the page shows progress), every recomputation
(:class:`~tpmap.apps._explore_analysis.Analysis`) runs there, and the result comes back
with ``doc.add_next_tick_callback``. Rules hold on the server: whatever k
the browser sends, the page uses ``policy.k(value)``, never less than the server's floor.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

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
from tpmap.apps._explore_analysis import CELL, Analysis, Request, Result, _text
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
THRESHOLDS = {"mcid": "MCID", "relative": "30 % change"}
HEIGHT = 600

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


class ExplorePage:
    """Widgets and state of one researcher page.

    Parameters
    ----------
    doc
        The Bokeh document.
    shared
        The server's :class:`~tpmap.research.ResearchProcess`, or a
        :class:`~tpmap.research.SharedDataset` in this process (notebooks, tests).
    atlas
        The body diagram.
    policy
        The disclosure policy for this page's user (see :func:`policy_for`).
    """

    def __init__(
        self,
        doc: Document,
        *,
        shared: research.SharedDataset | research.ResearchProcess,
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
        self.analysis = Analysis.of(atlas, policy)  # what the research worker computes
        self._recorder = record_export
        self.result: Result | None = None
        self._figures: dict[tuple[str, str, str], Any] = {}
        self._table_fields: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._pending: Future[Any] | None = None
        self._generation = 0
        self._ready = False
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

    def _on_loaded(self, future: Future[Any]) -> None:
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

    def _fill_options(self, data: research.Dataset | research.DatasetSummary) -> None:
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
        future = self.shared.run(self.analysis.compute, req)
        self._pending = future
        future.add_done_callback(lambda f: self._schedule(lambda: self._apply(f, generation)))

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

        Runs on a worker thread before the file is sent: an export that cannot be recorded
        is not sent. Without a store (a notebook's page) the record goes to the log.
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

    def download_marks(self, kind: str) -> None:
        """Send the de-identified marks as Parquet or CSV (built on the worker)."""
        if self.result is None or not self._ready:
            return
        req = self.request()
        self.status.text = "Preparing the download ..."
        built = self.shared.run(self.analysis.marks_payload, req, kind)
        # One future for the whole download (built, then recorded), which settle() waits on.
        sent: Future[tuple[str, bytes, str] | str] = Future()
        self._pending = sent
        sent.add_done_callback(lambda f: self._schedule(lambda: self._sent(f)))

        def record(answer: tuple[dict[str, Any], str, bytes, str] | str) -> None:
            if isinstance(answer, str):  # refused: nothing leaves, nothing to record
                sent.set_result(answer)
                return
            record, filename, payload, mime = answer
            try:
                self._record_export(record)  # recorded before anything leaves
            except BaseException as exc:
                sent.set_exception(exc)
            else:
                sent.set_result((filename, payload, mime))

        def recorded(f: Future[tuple[dict[str, Any], str, bytes, str] | str]) -> None:
            if f.exception() is not None:
                sent.set_exception(cast(BaseException, f.exception()))
            else:
                self.shared.submit(record, f.result())

        built.add_done_callback(recorded)

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


def _date(value: Any) -> dt.date | None:
    if value in (None, ""):
        return None
    return pd.Timestamp(value).date()


def _options(pairs: Iterable[tuple[str, str]]) -> Options:
    """``(value, label)`` pairs as a Select's options."""
    return list(pairs)


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
