"""What the researcher page computes: a request in, numbers and words out (no Bokeh).

:class:`Analysis` holds what one page's computations need (its disclosure policy and the
atlas's view bounds and outlines) and is small and picklable: the page sends its methods,
with a :class:`Request`, to the server's research process (:class:`tpmap.research.
ResearchProcess`), or to a :class:`tpmap.research.SharedDataset` in this process (notebooks,
tests). Each method takes that shared data set first and reads ``shared.data``.
"""

from __future__ import annotations

import datetime as dt
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tpmap import research

if TYPE_CHECKING:
    from tpmap.atlas import Atlas

__all__ = ["CELL", "RADIUS", "SIGMA", "Analysis", "Request", "Result"]

Shared = research.SharedDataset

CELL = 0.5  # cm, density grid
SIGMA = 1.5  # cm, Gaussian smoothing of the smoothed maps
RADIUS = 1.5  # cm, "patients with a mark within"
#: The filter field a comparison's group column corresponds to.
_GROUP_FILTER = {
    "responder": "responder",
    "condition": "conditions",
    "sex": "sexes",
    "affected_side": "affected_sides",
}


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


@dataclass(frozen=True, eq=False)
class Analysis:
    """The computations of one researcher page.

    Parameters
    ----------
    policy
        The page's :class:`~tpmap.research.DisclosurePolicy`.
    bounds, outlines
        Each view's bounds and body outline (the density grid and its edge correction).
    """

    policy: research.DisclosurePolicy
    bounds: dict[str, tuple[float, float, float, float]]
    outlines: dict[str, Any]

    @classmethod
    def of(cls, atlas: Atlas, policy: research.DisclosurePolicy) -> Analysis:
        """The analysis of a page on ``atlas`` under ``policy``."""
        return cls(
            policy,
            {v: tuple(atlas.bounds(v)) for v in atlas.views},  # type: ignore[misc]
            {v: atlas.outline(v) for v in atlas.views},
        )

    @staticmethod
    def _cohort(shared: Shared, rule: research.ResponderRule | None) -> pd.DataFrame:
        """The episode cohort with a ``responder`` column under ``rule``."""
        data = shared.data
        assert data is not None
        if rule is None:
            return data.cohort.assign(responder="unknown")

        def statuses() -> pd.Series:
            result = research.responders(data.outcomes, data.cohort, rule=rule)
            status = pd.Series(
                result["status"].to_numpy(), index=result["episode_id"].to_numpy()
            ).reindex(data.cohort["episode_id"].to_numpy())
            return status.fillna("unknown").astype(str)

        # Once per data set and rule, for every page.
        status = shared.memo(("responders", rule), statuses)
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

    def select(self, shared: Shared, req: Request) -> tuple[Any, ...]:
        """The selection for ``req``: checked, filtered, folded."""
        data = shared.data
        assert data is not None
        cohort_all = self._cohort(shared, req.rule)
        f = self.policy.coarsen(req.filters)
        check = self._check(data, cohort_all, f, req)
        if check is not None and check.refused:
            return data, cohort_all, f, check, None, None
        cohort, marks = f.apply(cohort_all, data.marks, sessions=data.sessions)
        if req.fold:
            cohort, marks = research.fold_to_affected_side(cohort, marks)
        return data, cohort_all, f, check, cohort, marks

    def compute(self, shared: Shared, req: Request) -> Result:
        """Everything one redraw needs, under the disclosure policy."""
        data, cohort_all, f, check, cohort, marks = self.select(shared, req)
        k = req.k
        noise = shared.cell_key if self.policy.perturb else None
        if cohort is None:
            return Result(req, pd.DataFrame(), "", refused=check.refused)
        hidden = check.hidden_cells if check is not None else frozenset()
        n = _count(cohort, noise, k)
        view, layer = req.view, req.layer
        in_view = ((marks["view"] == view) & (marks["layer"] == layer)).to_numpy()
        marks_v = marks.loc[in_view]
        grid_kw: dict[str, Any] = {
            "bounds": self.bounds[view],
            "mask": self.outlines[view],
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
            spec = research.GridSpec.from_bounds(self.bounds[view], CELL)
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

    def export_marks(
        self, shared: Shared, req: Request, file_format: str = "csv"
    ) -> research.Export | str:
        """The de-identified marks export for ``req``, or why not."""
        _data, _cohort_all, f, check, cohort, marks = self.select(shared, req)
        if cohort is None:
            return check.refused
        grids = {v: research.GridSpec.from_bounds(b, CELL) for v, b in self.bounds.items()}
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

    def marks_payload(
        self, shared: Shared, req: Request, kind: str
    ) -> tuple[dict[str, Any], str, bytes, str] | str:
        """The export for ``req`` as a file: its audit record, name, bytes and type (or why
        not). The caller records it before anything leaves."""
        export = self.export_marks(shared, req, kind)
        if isinstance(export, str):
            return export
        if kind == "parquet":
            buf = io.BytesIO()
            export.frame.to_parquet(buf, index=False)
            name, payload, mime = (
                "tpmap-marks.parquet",
                buf.getvalue(),
                "application/vnd.apache.parquet",
            )
        else:
            name, payload, mime = (
                "tpmap-marks.csv",
                export.frame.to_csv(index=False).encode(),
                "text/csv",
            )
        return export.record, name, payload, mime


def _text(value: str) -> str:
    """Plain text for a Div (whose text is HTML): escaped, quotes left readable."""
    return html.escape(value, quote=False)


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
