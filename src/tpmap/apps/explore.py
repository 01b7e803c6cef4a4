"""The researcher page (``/explore``): where clinicians needle, for whom, and with what result.

All numbers come from :mod:`tpmap.research`, the same code a notebook uses; this module only
turns widget values into a :class:`~tpmap.research.Filters` and draws the result.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    Checkbox,
    ColumnDataSource,
    CustomJS,
    DataTable,
    DatePicker,
    Div,
    MultiChoice,
    NumberFormatter,
    RadioButtonGroup,
    Select,
    Spinner,
    TableColumn,
)

from tpmap import model, research
from tpmap.apps import tag_widgets
from tpmap.atlas import Atlas, load_atlas
from tpmap.plotting import (
    VIEW_TITLES,
    image_map,
    muscle_map,
    update_density_map,
    update_difference_map,
    update_muscle_map,
)

__all__ = ["ExplorePage", "make_document"]

log = logging.getLogger("tpmap.explore")

MODES = ("percent", "density", "counts")
MODE_LABELS = ["% of patients", "Density", "Marks"]
WEIGHTINGS = {
    "patient_cell": "Each patient once per spot",
    "patient_normalised": "Each patient's marks sum to one",
    "marks": "Every mark counts",
}
GROUP_BY = {
    "responder": "Responder status",
    "condition": "Condition",
    "sex": "Sex",
    "affected_side": "Affected side",
}
HEIGHT = 600
CELL = 0.5  # cm, density grid
SIGMA = 1.5  # cm, Gaussian smoothing of the density

# A download: Python fills this source, the browser turns it into a file.
_DOWNLOAD_JS = """
const d = source.data;
const col = k => (d instanceof Map ? d.get(k) : d[k]) ?? [];
if (col("b64").length === 0) { return; }
const bytes = Uint8Array.from(atob(col("b64")[0]), c => c.charCodeAt(0));
const blob = new Blob([bytes], {type: col("mime")[0]});
const a = document.createElement("a");
a.href = URL.createObjectURL(blob);
a.download = col("filename")[0];
document.body.appendChild(a);
a.click();
setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
"""
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


@dataclass
class Result:
    """What one redraw computed (kept for downloads and tests)."""

    cohort: pd.DataFrame
    marks: pd.DataFrame
    table: pd.DataFrame
    description: str


class ExplorePage:
    """Widgets and state of one researcher page."""

    def __init__(self, doc: Document, *, dataset: Any, atlas: Atlas, min_patients: int = 5):
        self.doc = doc
        self.data = dataset
        self.atlas = atlas
        self.result: Result | None = None
        self._figures: dict[tuple[str, str, str], Any] = {}
        self._table_fields: tuple[str, ...] = ()
        self._build(min_patients)
        self.update()

    # ------------------------------------------------------------------ widgets
    def _build(self, min_patients: int) -> None:
        self.view = Select(
            title="View",
            value="posterior",
            options=[(v, VIEW_TITLES[v]) for v in self.atlas.views],
            name="view",
        )
        self.layer = RadioButtonGroup(labels=["Superficial", "Deep"], active=0, name="layer")
        self.mode = RadioButtonGroup(labels=MODE_LABELS, active=0, name="mode")
        self.weighting = Select(
            title="Density weighting",
            value="patient_cell",
            options=list(WEIGHTINGS.items()),
            name="weighting",
        )

        def choice(title: str, name: str, values: Any, labels: dict[str, str] | None = None):
            labels = labels or {}
            opts = [(str(v), labels.get(str(v), str(v).replace("_", " "))) for v in values]
            return MultiChoice(title=title, options=opts, value=[], name=name, width=250)

        self.conditions = choice(
            "Condition", "conditions", model.CONDITIONS, model.CONDITION_LABELS
        )
        self.clinicians = choice("Clinician", "clinicians", self.data.clinicians)
        self.techniques = choice(
            "Technique", "techniques", model.TECHNIQUES, model.TECHNIQUE_LABELS
        )
        self.ltr = choice("Local twitch response", "ltr", model.LTR_GRADES)
        self.sexes = choice("Sex", "sexes", model.SEXES)
        self.age_bands = choice("Age band", "age-bands", [b for b, _, _ in research.AGE_BANDS])
        instruments = list(self.data.instruments)
        self.instrument = Select(
            title="Responder by",
            value="nprs" if "nprs" in instruments else (instruments[0] if instruments else ""),
            options=[
                (i, model.OUTCOME_INSTRUMENTS[i].label if i in model.OUTCOME_INSTRUMENTS else i)
                for i in instruments
            ],
            name="instrument",
            width=120,
        )
        self.responder = Select(
            title="Responder status",
            value="",
            options=[("", "Any"), *[(s, s.replace("_", "-")) for s in research.RESPONDER_STATUSES]],
            name="responder",
            width=125,
        )
        first, last = self.data.date_range or (None, None)
        self.date_from = DatePicker(title="From", value=first, name="date-from", width=122)
        self.date_to = DatePicker(title="To", value=last, name="date-to", width=122)
        self.fold = Checkbox(
            label="Fold to the affected side (affected knee on the right)",
            active=False,
            name="fold",
        )
        self.compare = Checkbox(label="Compare two groups", active=False, name="compare")
        self.group_by = Select(
            title="Groups by",
            value="responder",
            options=list(GROUP_BY.items()),
            name="group-by",
            width=250,
        )
        self.group_a = Select(title="Group A", name="group-a", width=122)
        self.group_b = Select(title="Group B", name="group-b", width=122)
        self.k = Spinner(
            title="Hide muscles and spots with fewer than k patients",
            value=max(5, min_patients),
            low=5,
            high=100,
            step=1,
            mode="int",
            name="k",
            width=250,
        )
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
        self.download = ColumnDataSource({"filename": [], "b64": [], "mime": []}, name="download")
        self.download.js_on_change(
            "data", CustomJS(args={"source": self.download}, code=_DOWNLOAD_JS)
        )
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
            self.responder,
            self.group_a,
            self.group_b,
            self.date_from,
            self.date_to,
            self.k,
        ):
            w.on_change("value", lambda _a, _o, _n: self.update())
        for w in (
            self.conditions,
            self.clinicians,
            self.techniques,
            self.ltr,
            self.sexes,
            self.age_bands,
        ):
            w.on_change("value", lambda _a, _o, _n: self.update())
        for w in (self.layer, self.mode, self.fold, self.compare):
            w.on_change("active", lambda _a, _o, _n: self.update())
        self.group_by.on_change("value", lambda _a, _o, _n: self._group_options(reset=True))

        controls = column(
            row(self.view, column(Div(text="Layer"), self.layer)),
            self.mode,
            self.weighting,
            self.conditions,
            row(self.date_from, self.date_to),
            self.clinicians,
            self.techniques,
            self.ltr,
            self.sexes,
            self.age_bands,
            row(self.instrument, self.responder),
            self.fold,
            self.compare,
            self.group_by,
            row(self.group_a, self.group_b),
            self.k,
            width=270,
            name="controls",
        )
        self.figure_holder = column(name="figure-holder")
        self.main = column(
            self.figure_holder,
            self.legend,
            row(csv_table, parquet, csv_marks, png),
            self.table,
            name="main",
        )
        self.doc.title = "tpmap: explore"
        self.doc.add_root(row(controls, self.main, name="explore-page"))
        self.doc.add_root(self.download)  # not drawn, but it must reach the browser
        tag_widgets(self.doc)

    def _group_options(self, *, reset: bool, redraw: bool = True) -> None:
        by = self.group_by.value
        if by == "responder":
            values = [(s, s.replace("_", "-")) for s in ("responder", "non_responder")]
        elif by == "condition":
            values = [(c, model.CONDITION_LABELS[c]) for c in model.CONDITIONS]
        elif by == "sex":
            values = [(s, s) for s in model.SEXES]
        else:
            values = [(s, s) for s in model.AFFECTED_SIDES]
        for w in (self.group_a, self.group_b):
            w.options = values
        if reset and len(values) >= 2:
            self.group_a.value, self.group_b.value = values[0][0], values[1][0]
        if redraw:
            self.update()

    # ------------------------------------------------------------------ computing
    def filters(self) -> research.Filters:
        """The researcher's filter as the widgets say it."""

        def chosen(w: MultiChoice) -> list[str] | None:
            return list(w.value) or None

        return research.Filters(
            conditions=chosen(self.conditions),
            sexes=chosen(self.sexes),
            age_bands=chosen(self.age_bands),
            clinicians=chosen(self.clinicians),
            techniques=chosen(self.techniques),
            ltr_grades=chosen(self.ltr),
            responder=[self.responder.value] if self.responder.value else None,
            date_from=self.date_from.value,
            date_to=self.date_to.value,
        )

    def _cohort(self) -> pd.DataFrame:
        cohort = self.data.cohort
        col = f"responder_{self.instrument.value}"
        if col in cohort.columns:
            cohort = cohort.assign(responder=cohort[col])
        elif "responder" not in cohort.columns:
            cohort = cohort.assign(responder="unknown")
        return cohort

    def selection(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(cohort, marks)`` after the filters and the fold."""
        cohort, marks = self.filters().apply(self._cohort(), self.data.marks)
        if self.fold.active:
            marks = research.fold_to_affected_side(marks, cohort)
        return cohort, marks

    def _groups(self, cohort: pd.DataFrame, marks: pd.DataFrame):
        by = self.group_by.value
        out = []
        for value in (self.group_a.value, self.group_b.value):
            c = cohort.loc[(cohort[by].astype(str) == str(value)).to_numpy()]
            m = marks.loc[marks["patient_id"].isin(c["patient_id"]).to_numpy()]
            out.append((c, m))
        return out

    def update(self) -> None:
        """Recompute from the widgets and redraw the figure, legend and table."""
        view = self.view.value
        layer = "deep" if self.layer.active == 1 else "superficial"
        mode = MODES[self.mode.active]
        k = int(self.k.value or 5)
        cohort, marks = self.selection()
        marks_v = marks.loc[((marks["view"] == view) & (marks["layer"] == layer)).to_numpy()]
        n = int(cohort["patient_id"].nunique())
        labels = (self._group_label(self.group_a), self._group_label(self.group_b))
        # One grid for every density on the page: the figures are built for it.
        grid = {
            "bounds": self.atlas.bounds(view),
            "mask": self.atlas.outline(view),
            "cell": CELL,
            "sigma": SIGMA,
            "weighting": self.weighting.value,
            "min_patients": k,
        }
        what = (
            f"{n} patients in the filtered cohort (with or without marks); "
            f"{len(marks)} marks, {len(marks_v)} on this view and layer"
        )
        if self.compare.active:
            (ca, ma), (cb, mb) = self._groups(cohort, marks)
            na, nb = int(ca["patient_id"].nunique()), int(cb["patient_id"].nunique())
            table = research.compare_groups(ma, ca, mb, cb, min_patients=k)
            title = f"{VIEW_TITLES[view]}: {labels[0]} vs {labels[1]}"
            if na == 0 or nb == 0:
                fig = self._figure("muscles", view, layer)
                update_muscle_map(fig, None, title=f"{VIEW_TITLES[view]}: a group is empty")
                meaning = "One of the two groups has no patients under these filters."
            elif mode == "density":
                in_layer = [m.loc[(m["layer"] == layer).to_numpy()] for m in (ma, mb)]
                diff = research.difference_grid(in_layer[0], ca, in_layer[1], cb, view, **grid)
                fig = self._figure("difference", view, layer)
                update_difference_map(fig, diff, labels=labels, title=title)
                meaning = (
                    f"Red: a larger share of {labels[0]}'s {na} patients was needled there; "
                    f"blue: of {labels[1]}'s {nb} patients (percentage points per cm², "
                    "smoothed). White: no difference."
                )
            else:
                fig = self._figure("muscles", view, layer)
                update_muscle_map(
                    fig,
                    table,
                    value="diff",
                    diverging=True,
                    title=title,
                    colour_title=f"{labels[0]} minus {labels[1]}, percentage points",
                )
                meaning = (
                    f"Colour: percentage of {labels[0]}'s {na} patients with a mark in the "
                    f"muscle minus that of {labels[1]}'s {nb} patients. Fisher's exact test "
                    "per muscle, Benjamini-Hochberg q-values (hover)."
                )
            what = f"Group A: {labels[0]}, {na} patients. Group B: {labels[1]}, {nb} patients"
        elif mode == "density":
            density = research.density_grid(marks_v, view, **grid)
            fig = self._figure("density", view, layer)
            update_density_map(
                fig, density, n_cohort=n, title=f"{VIEW_TITLES[view]}: where needling concentrates"
            )
            table = research.muscle_table(marks, cohort, min_patients=k)
            meaning = (
                f"Smoothed density of marks ({WEIGHTINGS[self.weighting.value].lower()}), "
                f"Gaussian sigma {SIGMA:g} cm."
            )
        else:
            table = research.muscle_table(marks, cohort, min_patients=k)
            value = "pct" if mode == "percent" else "n_marks"
            fig = self._figure("muscles", view, layer)
            update_muscle_map(
                fig,
                table,
                value=value,
                colour_title=f"% of {n} patients" if mode == "percent" else "marks",
                title=f"{VIEW_TITLES[view]}: patients needled per muscle",
            )
            meaning = (
                "Colour: percentage of the cohort's patients with at least one mark in the "
                "muscle (hover for the 95 % Wilson interval)."
                if mode == "percent"
                else "Colour: number of marks in the muscle."
            )
        if list(self.figure_holder.children) != [fig]:
            self.figure_holder.children = [fig]
        suppressed = table.attrs.get("n_suppressed", 0)
        self.legend.text = (
            f"<b>{what}.</b> {meaning} Grey: not shown, because fewer than {k} patients are "
            f"behind it (small-cell suppression; {suppressed} muscle rows hidden) or none."
            + (
                " Marks of left-affected patients are mirrored to the right."
                if self.fold.active
                else ""
            )
        )
        self._show_table(table)
        self.result = Result(cohort, marks, table, what)

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
        return dict(w.options).get(w.value, w.value) if w.options else ""

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
            "diff_low": "CI low",
            "diff_high": "CI high",
            "p": "p",
            "q": "q (BH)",
        }
        shown = tuple(c for c in t.columns if c in titles)
        if shown == self._table_fields:
            return  # same columns: the new rows are enough (new models cost a round trip)
        cols = []
        for c in shown:
            fmt = p if c in ("p", "q") else pct if t[c].dtype.kind == "f" else None
            kwargs = {"formatter": fmt} if fmt is not None else {}
            width = 170 if c == "name" else 60
            cols.append(TableColumn(field=c, title=titles[c], width=width, **kwargs))
        self.table.columns = cols
        self._table_fields = shown

    # ------------------------------------------------------------------ downloads
    def _send(self, filename: str, payload: bytes, mime: str) -> None:
        self.download.data = {
            "filename": [filename],
            "b64": [base64.b64encode(payload).decode("ascii")],
            "mime": [mime],
        }

    def download_table(self) -> None:
        """Send the per-muscle table (already suppressed) as CSV."""
        if self.result is None:
            return
        self._send("tpmap-muscles.csv", self.result.table.to_csv(index=False).encode(), "text/csv")

    def export_marks(self) -> pd.DataFrame:
        """The filtered marks, de-identified: no notes, no patient codes, salted hashes."""
        assert self.result is not None
        marks = self.result.marks.copy()
        marks["session_date"] = research.days_to_dates(marks["session_date"])
        # Suppression applies to exports too: drop muscles backed by fewer than k patients.
        k = int(self.k.value or 5)
        per = marks.groupby(["muscle", "side"], observed=True)["patient_id"].transform("nunique")
        marks = marks.loc[(per >= k).to_numpy()]
        return research.deidentify(marks)

    def download_marks(self, kind: str) -> None:
        """Send the de-identified marks as Parquet or CSV."""
        if self.result is None:
            return
        frame = self.export_marks()
        if kind == "parquet":
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            self._send("tpmap-marks.parquet", buf.getvalue(), "application/vnd.apache.parquet")
        else:
            self._send("tpmap-marks.csv", frame.to_csv(index=False).encode(), "text/csv")


def make_document(
    doc: Document,
    *,
    store: Any = None,
    atlas: Atlas | None = None,
    settings: Any = None,
    dataset: Any = None,
    **_: Any,
) -> ExplorePage:
    """Build the researcher page into ``doc`` and return its state object."""
    data = dataset if dataset is not None else research.load_dataset(store)
    k = getattr(settings, "min_patients", 5) or 5
    return ExplorePage(doc, dataset=data, atlas=atlas or load_atlas(), min_patients=k)
