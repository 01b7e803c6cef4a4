"""Pure analysis of needling marks across patients: filters, tables, density grids, comparisons.

Everything here works on three pandas frames, so that the explore page and a notebook share
one code path (no Bokeh). :func:`load_dataset` reads them from a tpmap database into a
:class:`Dataset` (through an incrementally refreshed Parquet snapshot, :mod:`tpmap._snapshot`);
everything else is pure analysis of the frames:

marks
    One row per mark, in the compact layout of :func:`compact_marks` (27 bytes a mark;
    :func:`load_dataset` adds ``clinician`` and ``episode_id``: 32 bytes).
cohort
    One row per patient in the filtered cohort, *with or without marks*: this is the
    denominator of every percentage. Columns ``patient_id``, ``sex``, ``birth_year``,
    ``condition``, ``affected_side`` and optionally ``index_date`` or ``start_date`` (start of
    the episode, used for age bands), ``responder`` (from :func:`attach_responders`) or
    ``responder_<instrument>`` columns (from :func:`load_dataset`).
outcomes
    One row per outcome measurement: ``patient_id``, ``episode_id``, ``instrument``,
    ``score``, ``date``.

Small-cell suppression is applied by every function whose output may be displayed or
exported: a row or cell backed by fewer than ``min_patients`` distinct patients is not shown.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage, stats

from tpmap import model

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

    from tpmap._snapshot import RefreshStats
    from tpmap.store import Store

__all__ = [
    "AGE_BANDS",
    "DATASET_MARK_COLUMNS",
    "DROPPED_ON_EXPORT",
    "INSTRUMENTS",
    "MARK_COLUMNS",
    "RESPONDER_STATUSES",
    "VIEWS",
    "Dataset",
    "DensityGrid",
    "DifferenceGrid",
    "Filters",
    "GridSpec",
    "Instrument",
    "age_band",
    "attach_responders",
    "bin_counts",
    "compact_marks",
    "compare_groups",
    "days_to_dates",
    "deidentify",
    "density_grid",
    "difference_grid",
    "fold_to_affected_side",
    "load_dataset",
    "muscle_table",
    "responders",
    "to_days",
    "wilson_interval",
]

# --------------------------------------------------------------------------------------------
# Vocabulary: the stable ids of model.py (one source of truth)
# --------------------------------------------------------------------------------------------

VIEWS: tuple[str, ...] = model.VIEWS
LAYERS: tuple[str, ...] = model.LAYERS
SIDES: tuple[str, ...] = model.SIDES
_VIEW_DTYPE = pd.CategoricalDtype(VIEWS)
_LAYER_DTYPE = pd.CategoricalDtype(LAYERS)
_SIDE_DTYPE = pd.CategoricalDtype(SIDES)

#: Columns of the compact marks frame, in order; an optional ``clinician`` column comes last.
MARK_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "session_id",
    "view",
    "layer",
    "x",
    "y",
    "muscle",
    "side",
    "technique",
    "ltr_grade",
    "tp_status",
    "session_date",
)

#: Age bands in years, as ``(label, lowest age, highest age)``; ``"<18"`` catches minors.
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("<18", 0, 17),
    ("18-29", 18, 29),
    ("30-44", 30, 44),
    ("45-59", 45, 59),
    ("60-74", 60, 74),
    ("75+", 75, 200),
)

RESPONDER_STATUSES: tuple[str, ...] = ("responder", "non_responder", "unknown")
_STATUS_DTYPE = pd.CategoricalDtype(RESPONDER_STATUSES)

_EPOCH = np.datetime64("1970-01-01", "D")
_Z95 = 1.959963984540054  # two-sided 95 % standard normal quantile


# --------------------------------------------------------------------------------------------
# Dates and the compact marks layout
# --------------------------------------------------------------------------------------------


def to_days(value: object) -> int:
    """Convert one date-like value to days since 1970-01-01 (the ``session_date`` unit).

    Examples
    --------
    >>> to_days("1970-01-02"), to_days(_dt.date(2024, 1, 1))
    (1, 19723)
    """
    return int((np.datetime64(pd.Timestamp(value).date(), "D") - _EPOCH).astype(np.int64))


def _days_series(values: pd.Series) -> np.ndarray:
    """Days since 1970 for a whole column (integers are taken as days already)."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int32)
    stamps = pd.to_datetime(values)
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_localize(None)  # the local calendar date is the session date
    days = stamps.to_numpy(dtype="datetime64[D]")
    if np.isnat(days).any():
        raise ValueError("session_date has missing values")
    return (days - _EPOCH).astype(np.int32)


def days_to_dates(days: pd.Series | np.ndarray) -> pd.Series:
    """Turn ``session_date`` day numbers back into ``datetime64`` for display.

    Examples
    --------
    >>> days_to_dates(np.array([0, 19723])).dt.strftime("%Y-%m-%d").tolist()
    ['1970-01-01', '2024-01-01']
    """
    arr = np.asarray(days, dtype=np.int64).astype("timedelta64[D]") + _EPOCH
    index = days.index if isinstance(days, pd.Series) else None
    return pd.Series(arr.astype("datetime64[s]"), index=index, name="session_date")


def compact_marks(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a marks frame to the compact analysis layout (at most 32 bytes a mark).

    Layout: ``patient_id``, ``session_id`` int32; ``view``, ``layer``, ``side`` categoricals
    with the fixed vocabularies; ``muscle``, ``technique``, ``ltr_grade``, ``tp_status``
    categoricals of the values present; ``x``, ``y`` float32 centimetres; ``session_date``
    int32 days since 1970-01-01 (:func:`days_to_dates` converts back). An optional
    ``clinician`` categorical is kept when present; other columns (notes, codes, episode
    ids: episodes are patient facts, carried by the cohort frame) are dropped. With fewer
    than 128 categories per column a mark takes 27 bytes, 28 with ``clinician``.

    Examples
    --------
    >>> raw = pd.DataFrame({"patient_id": [1], "session_id": [7], "view": ["anterior"],
    ...     "layer": ["superficial"], "x": [-8.0], "y": [55.0], "muscle": ["vmo"],
    ...     "side": ["right"], "technique": ["static"], "ltr_grade": ["weak"],
    ...     "tp_status": ["active"], "session_date": ["2024-03-01"], "note": ["x"]})
    >>> m = compact_marks(raw)
    >>> m["session_date"].iat[0], "note" in m
    (np.int32(19783), False)
    """
    missing = [c for c in MARK_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"marks frame lacks columns: {missing}")
    out: dict[str, object] = {
        "patient_id": df["patient_id"].to_numpy(dtype=np.int32),
        "session_id": df["session_id"].to_numpy(dtype=np.int32),
    }
    for name, dtype in (("view", _VIEW_DTYPE), ("layer", _LAYER_DTYPE)):
        out[name] = _fixed_category(df[name], dtype, name)
    out["x"] = df["x"].to_numpy(dtype=np.float32)
    out["y"] = df["y"].to_numpy(dtype=np.float32)
    out["muscle"] = _open_category(df["muscle"])
    out["side"] = _fixed_category(df["side"], _SIDE_DTYPE, "side")
    for name in ("technique", "ltr_grade", "tp_status"):
        out[name] = _open_category(df[name])
    out["session_date"] = _days_series(df["session_date"])
    if "clinician" in df.columns:
        out["clinician"] = _open_category(df["clinician"])
    return pd.DataFrame(out)


def _fixed_category(values: pd.Series, dtype: pd.CategoricalDtype, name: str) -> pd.Categorical:
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.cat.categories[np.unique(values.cat.codes[values.cat.codes >= 0])])
    else:
        present = set(pd.unique(values.dropna()))
    # A value outside the vocabulary would silently become NaN: refuse it instead.
    unknown = present - set(dtype.categories)
    if unknown:
        raise ValueError(f"unknown {name} values: {sorted(map(str, unknown))}")
    return pd.Categorical(values, dtype=dtype)


def _open_category(values: pd.Series) -> pd.Categorical:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.remove_unused_categories().array
    return pd.Categorical(values)


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


def age_band(
    birth_year: pd.Series | np.ndarray, reference_year: pd.Series | np.ndarray | int
) -> np.ndarray:
    """Age band label for each birth year at a reference year.

    Age is ``reference_year - birth_year``: only the birth year is stored, so this can be one
    year too high before the birthday. Missing birth years give ``None``.

    Examples
    --------
    >>> age_band(np.array([2000, 1950, 1994]), 2024).tolist()
    ['18-29', '60-74', '30-44']
    """
    age = np.asarray(reference_year, dtype=float) - np.asarray(birth_year, dtype=float)
    labels = np.full(np.shape(age), None, dtype=object)
    for label, low, high in AGE_BANDS:
        labels[(age >= low) & (age <= high)] = label
    return labels


def _tuple(values: Iterable[object] | str | None) -> tuple[object, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return (values,)
    return tuple(values)


@dataclass(frozen=True)
class Filters:
    """A researcher's filter, applied to the cohort (patients) and the marks together.

    Patient-level filters (``conditions``, ``sexes``, ``age_bands``, ``affected_sides``,
    ``responder``) shrink the cohort, and the marks follow. Mark-level filters (the date
    window, ``clinicians``, ``techniques``, ``ltr_grades``, ``tp_statuses``, ``views``,
    ``layers``, ``muscles``) keep only matching marks but leave the cohort as it is: a
    patient whose marks were all filtered out still counts in the denominator, as a patient
    without such a mark. ``None`` means "no filter". Dates are inclusive.

    The age band is a patient attribute taken at the cohort's ``index_date`` (start of the
    episode; :func:`load_dataset` calls it ``start_date``, which is used when there is no
    ``index_date``) when that column exists, otherwise at the year of ``date_to``, otherwise at the
    current year, so that every patient, with or without marks, gets one.

    ``responder`` takes statuses from :data:`RESPONDER_STATUSES` and reads the cohort's
    ``responder`` column (see :func:`attach_responders`), or with ``instrument`` set the
    ``responder_<instrument>`` column that :func:`load_dataset` adds per instrument.

    Examples
    --------
    >>> f = Filters(conditions=["patellofemoral_pain"], techniques=["electrical"])
    >>> cohort_f, marks_f = f.apply(cohort, marks)  # doctest: +SKIP
    """

    conditions: tuple[str, ...] | None = None
    sexes: tuple[str, ...] | None = None
    age_bands: tuple[str, ...] | None = None
    affected_sides: tuple[str, ...] | None = None
    responder: tuple[str, ...] | None = None
    date_from: _dt.date | str | None = None
    date_to: _dt.date | str | None = None
    clinicians: tuple[str, ...] | None = None
    techniques: tuple[str, ...] | None = None
    ltr_grades: tuple[str, ...] | None = None
    tp_statuses: tuple[str, ...] | None = None
    views: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    muscles: tuple[str, ...] | None = None
    instrument: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "conditions", "sexes", "age_bands", "affected_sides", "responder",
            "clinicians", "techniques", "ltr_grades", "tp_statuses", "views", "layers",
            "muscles",
        ):  # fmt: skip
            # Frozen and hashable whatever iterable the caller passed (a list from a widget).
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        known = {label for label, _, _ in AGE_BANDS}
        if self.age_bands and not set(self.age_bands) <= known:
            raise ValueError(f"unknown age bands: {sorted(set(self.age_bands) - known)}")
        if self.responder and not set(self.responder) <= set(RESPONDER_STATUSES):
            raise ValueError(f"responder must be among {RESPONDER_STATUSES}")
        if self.instrument is not None and self.instrument not in INSTRUMENTS:
            raise ValueError(f"unknown instrument {self.instrument!r}")

    def apply(self, cohort: pd.DataFrame, marks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return ``(cohort, marks)`` filtered; marks of patients outside the cohort go too."""
        keep = np.ones(len(cohort), dtype=bool)
        for column, wanted in (
            ("condition", self.conditions),
            ("sex", self.sexes),
            ("affected_side", self.affected_sides),
            (self.responder_column, self.responder),
        ):
            if wanted is not None:
                keep &= _column(cohort, column, "cohort").isin(wanted).to_numpy()
        if self.age_bands is not None:
            bands = age_band(cohort["birth_year"], self._reference_year(cohort))
            keep &= np.isin(bands.astype(str), self.age_bands)
        cohort_f = cohort.loc[keep]

        # A copy: pandas hands out read-only views under copy-on-write.
        mkeep = marks["patient_id"].isin(cohort_f["patient_id"]).to_numpy().copy()
        days = marks["session_date"].to_numpy()
        if self.date_from is not None:
            mkeep &= days >= to_days(self.date_from)
        if self.date_to is not None:
            mkeep &= days <= to_days(self.date_to)
        for column, wanted in (
            ("clinician", self.clinicians),
            ("technique", self.techniques),
            ("ltr_grade", self.ltr_grades),
            ("tp_status", self.tp_statuses),
            ("view", self.views),
            ("layer", self.layers),
            ("muscle", self.muscles),
        ):
            if wanted is not None:
                mkeep &= _column(marks, column, "marks").isin(wanted).to_numpy()
        return cohort_f, marks.loc[mkeep]

    @property
    def responder_column(self) -> str:
        """The cohort column the ``responder`` filter reads."""
        return "responder" if self.instrument is None else f"responder_{self.instrument}"

    def _reference_year(self, cohort: pd.DataFrame) -> np.ndarray | int:
        for column in ("index_date", "start_date"):
            if column in cohort.columns:
                return pd.to_datetime(cohort[column]).dt.year.to_numpy(dtype=float)
        if self.date_to is not None:
            return pd.Timestamp(self.date_to).year
        return _dt.date.today().year


def _column(frame: pd.DataFrame, name: str, what: str) -> pd.Series:
    if name not in frame.columns:
        raise KeyError(f"filtering on {name!r} needs a {name!r} column in the {what} frame")
    return frame[name]


# --------------------------------------------------------------------------------------------
# Proportions: Wilson interval and the per-muscle table
# --------------------------------------------------------------------------------------------


def wilson_interval(
    successes: np.ndarray | int, n: np.ndarray | int, *, z: float = _Z95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (95 % by default), as fractions.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage at 0/n and n/n.
    ``n == 0`` gives NaN.

    Examples
    --------
    >>> low, high = wilson_interval(5, 10)
    >>> round(float(low), 4), round(float(high), 4)
    (0.2366, 0.7634)
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        z2 = z * z
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; rounding would leave a hair's difference.
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def _patient_counts(
    marks: pd.DataFrame, cohort: pd.DataFrame, by_side: bool
) -> tuple[pd.DataFrame, int]:
    """Marks and distinct patients per muscle (and side), restricted to the cohort."""
    n_cohort = int(cohort["patient_id"].nunique())
    marks = marks.loc[marks["patient_id"].isin(cohort["patient_id"]).to_numpy()]
    keys = ["muscle", "side"] if by_side else ["muscle"]
    grouped = marks.groupby(keys, observed=True, sort=True)["patient_id"]
    counts = pd.DataFrame({"n_marks": grouped.size(), "n_patients": grouped.nunique()})
    counts = counts.reset_index()
    for key in keys:  # plain strings: the categories of unused muscles are noise downstream
        counts[key] = counts[key].astype(str)
    return counts, n_cohort


def muscle_table(
    marks: pd.DataFrame,
    cohort: pd.DataFrame,
    *,
    by_side: bool = True,
    min_patients: int = 5,
) -> pd.DataFrame:
    """Per muscle (and side): marks, patients marked, and the percentage of the cohort.

    ``pct`` is the share of *all* cohort patients (``n_cohort``, with or without marks) who
    have at least one mark in the muscle, with its 95 % Wilson interval ``ci_low``..
    ``ci_high`` (percent). ``by_side=False`` pools both sides (a patient marked on both
    counts once). Rows backed by fewer than ``min_patients`` patients are dropped, so they
    can reach neither the screen nor an export; ``table.attrs`` records ``n_cohort``,
    ``n_suppressed`` and ``min_patients``.

    Examples
    --------
    >>> t = muscle_table(marks, cohort, min_patients=5)  # doctest: +SKIP
    >>> t.columns.tolist()  # doctest: +SKIP
    ['muscle', 'side', 'n_marks', 'n_patients', 'n_cohort', 'pct', 'ci_low', 'ci_high']
    """
    counts, n_cohort = _patient_counts(marks, cohort, by_side)
    shown = counts["n_patients"] >= min_patients
    table = counts.loc[shown].reset_index(drop=True)
    table["n_cohort"] = n_cohort
    low, high = wilson_interval(table["n_patients"].to_numpy(), n_cohort)
    table["pct"] = 100.0 * table["n_patients"] / n_cohort if n_cohort else np.nan
    table["ci_low"] = 100.0 * low
    table["ci_high"] = 100.0 * high
    table = table.sort_values(["n_patients", "muscle"], ascending=[False, True], kind="stable")
    table = table.reset_index(drop=True)
    table.attrs.update(
        n_cohort=n_cohort, n_suppressed=int((~shown).sum()), min_patients=min_patients
    )
    return table


# --------------------------------------------------------------------------------------------
# Density grids
# --------------------------------------------------------------------------------------------

Weighting = Literal["marks", "patient_cell", "patient_normalised"]
_WEIGHTINGS = ("marks", "patient_cell", "patient_normalised")


@dataclass(frozen=True)
class GridSpec:
    """A regular grid of square cells: ``nx`` by ``ny`` cells of ``cell`` cm from (x0, y0).

    Arrays on the grid have shape ``(ny, nx)``: row 0 is the bottom row (smallest y), the
    layout Bokeh's ``image`` glyph expects.

    Examples
    --------
    >>> g = GridSpec.from_bounds((-25, 0, 25, 120), cell=0.5)
    >>> g.nx, g.ny, g.extent
    (100, 240, (-25.0, 0.0, 25.0, 120.0))
    """

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int

    @classmethod
    def from_bounds(cls, bounds: tuple[float, float, float, float], cell: float) -> GridSpec:
        """Cover ``bounds=(xmin, ymin, xmax, ymax)``; the far edges round up to whole cells."""
        xmin, ymin, xmax, ymax = map(float, bounds)
        if not (xmax > xmin and ymax > ymin and cell > 0):
            raise ValueError("bounds must be (xmin, ymin, xmax, ymax) with positive size")
        # The small tolerance stops 50 / 0.5 computed as 100.00000000001 adding a cell.
        nx = math.ceil((xmax - xmin) / cell - 1e-9)
        ny = math.ceil((ymax - ymin) / cell - 1e-9)
        return cls(xmin, ymin, float(cell), nx, ny)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the whole grid."""
        return (self.x0, self.y0, self.x0 + self.nx * self.cell, self.y0 + self.ny * self.cell)

    @property
    def x_edges(self) -> np.ndarray:
        return self.x0 + self.cell * np.arange(self.nx + 1)

    @property
    def y_edges(self) -> np.ndarray:
        return self.y0 + self.cell * np.arange(self.ny + 1)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates as two ``(ny, nx)`` arrays."""
        xs = self.x0 + self.cell * (np.arange(self.nx) + 0.5)
        ys = self.y0 + self.cell * (np.arange(self.ny) + 0.5)
        return np.meshgrid(xs, ys)


# Points per block of the binning loop: the float64 scratch (1 MB) stays in cache, which
# makes the loop about three times faster than whole-array temporaries (measured).
_BLOCK = 1 << 17


def _in_bounds(
    x: np.ndarray, y: np.ndarray, spec: GridSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop NaN and outside points; the mask is None when all are inside (the usual case).

    The usual case is recognised from the coordinates' min and max, which skips per-point
    bounds tests; NaN makes min/max NaN and so falls to the checked path.
    """
    # np.float64 bounds: a Python float would be compared in float32 with float32 data.
    xmin, ymin, xmax, ymax = map(np.float64, spec.extent)
    x = np.asarray(x)
    y = np.asarray(y)
    if not len(x) or (x.min() >= xmin and x.max() < xmax and y.min() >= ymin and y.max() < ymax):
        return x, y, None
    # The far edge is inside, as in numpy.histogram2d.
    mask = (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    return x[mask], y[mask], mask


def _block_cells(
    x: np.ndarray,
    y: np.ndarray,
    spec: GridSpec,
    out: np.ndarray,
    scratch: tuple[np.ndarray, np.ndarray],
    clip: bool = True,
) -> None:
    """Write the flat cell index ``iy * nx + ix`` of in-bounds points ``x, y`` into ``out``.

    float64 even for float32 coordinates: float32 arithmetic rounds points within a few
    micrometres below an edge into the next cell (15.499999 + 25 is 40.5 in float32). The
    multiply writes straight into the integer output (truncation is floor, the values being
    non-negative).
    """
    inv = 1.0 / spec.cell
    ix = scratch[1][: len(x)]
    fx = scratch[0][: len(x)]
    # dtype=float64 forces the float64 loop: with float32 input and a Python float, numpy
    # would subtract in float32 and only then widen.
    np.subtract(y, spec.y0, out=fx, dtype=np.float64)
    np.multiply(fx, inv, out=out, casting="unsafe")
    if clip:
        np.minimum(out, spec.ny - 1, out=out)  # the far edge, and rounding just below it
    out *= spec.nx
    np.subtract(x, spec.x0, out=fx, dtype=np.float64)
    np.multiply(fx, inv, out=ix, casting="unsafe")
    if clip:
        np.minimum(ix, spec.nx - 1, out=ix)
    out += ix


def _needs_clip(x: np.ndarray, y: np.ndarray, spec: GridSpec) -> bool:
    """False when no point can land past the last cell, so the clamp can be skipped.

    Subtraction and multiplication round monotonically, so if the largest coordinate maps
    below the grid's far edge, every coordinate does.
    """
    if not len(x):
        return False
    inv = 1.0 / spec.cell
    fx = (np.float64(x.max()) - spec.x0) * inv
    fy = (np.float64(y.max()) - spec.y0) * inv
    return not (fx < spec.nx and fy < spec.ny)


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    size = min(n, _BLOCK)
    return np.empty(size, dtype=np.float64), np.empty(size, dtype=np.int32)


def _cell_index(
    x: np.ndarray, y: np.ndarray, spec: GridSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat cell index (int32) of each in-bounds point, and the in-bounds mask (or None)."""
    x, y, mask = _in_bounds(x, y, spec)
    cells = np.empty(len(x), dtype=np.int32)
    scratch = _scratch(len(x))
    clip = _needs_clip(x, y, spec)
    for start in range(0, len(x), _BLOCK):
        stop = start + _BLOCK
        _block_cells(x[start:stop], y[start:stop], spec, cells[start:stop], scratch, clip)
    return cells, mask


def bin_counts(
    x: np.ndarray, y: np.ndarray, spec: GridSpec, weights: np.ndarray | None = None
) -> np.ndarray:
    """Count (or sum ``weights`` of) points per grid cell, shape ``(ny, nx)``.

    Same answer as ``numpy.histogram2d(x, y, bins=[spec.x_edges, spec.y_edges]).T`` away
    from float ties on cell edges, many times faster: index arithmetic and ``bincount`` on
    cache-sized blocks, no per-point search, no index array for the whole input.

    Examples
    --------
    >>> g = GridSpec.from_bounds((0, 0, 2, 1), cell=1)
    >>> bin_counts(np.array([0.5, 1.5, 1.7]), np.array([0.5, 0.2, 0.9]), g).tolist()
    [[1.0, 2.0]]
    """
    x, y, mask = _in_bounds(x, y, spec)
    if weights is not None:
        weights = np.asarray(weights, dtype=float)
        if mask is not None:
            weights = weights[mask]
    ncells = spec.nx * spec.ny
    counts = np.zeros(ncells, dtype=np.int64 if weights is None else np.float64)
    scratch = _scratch(len(x))
    block = np.empty(len(scratch[0]), dtype=np.int32)
    clip = _needs_clip(x, y, spec)
    for start in range(0, len(x), _BLOCK):
        stop = start + _BLOCK
        cells = block[: len(x[start:stop])]
        _block_cells(x[start:stop], y[start:stop], spec, cells, scratch, clip)
        w = None if weights is None else weights[start:stop]
        counts += np.bincount(cells, weights=w, minlength=ncells)
    return counts.astype(float).reshape(spec.shape)


@dataclass(frozen=True)
class DensityGrid:
    """A smoothed density of marks on one view.

    ``values`` (shape ``spec.shape``) is the Gaussian-smoothed weight per cell; before
    masking and suppression it sums to ``total_weight``. NaN marks cells outside the body
    outline and suppressed cells (fewer than ``min_patients`` patients nearby). The units
    follow ``weighting``: marks, patient-cells, or patients (each patient weighing one).
    ``support_radius`` is the half-width (cm, whole cells) of the suppression window;
    ``n_suppressed`` counts cells with a non-zero value hidden by suppression.
    """

    spec: GridSpec
    values: np.ndarray
    weighting: str
    n_marks: int
    n_patients: int
    total_weight: float
    min_patients: int
    support_radius: float
    n_out_of_bounds: int = 0
    n_suppressed: int = 0


def density_grid(
    marks: pd.DataFrame,
    view: str,
    *,
    bounds: tuple[float, float, float, float],
    cell: float = 0.5,
    sigma: float = 1.5,
    weighting: Weighting = "patient_cell",
    mask: np.ndarray | shapely.Geometry | None = None,
    min_patients: int = 5,
    support_radius: float | None = None,
) -> DensityGrid:
    """Smoothed density of the marks of one ``view`` on a grid over ``bounds`` (cm).

    Weighting, so that one heavily treated patient cannot paint the map alone:

    ``"marks"``
        every mark weighs 1;
    ``"patient_cell"``
        each patient counts once per cell however many marks they have there;
    ``"patient_normalised"``
        each patient's marks in this view (inside the bounds) share a total weight of 1.

    The binned weights are smoothed with a Gaussian of ``sigma`` cm; the grid edge
    reflects (the reflection method of boundary correction), which keeps the total weight.
    ``mask`` (a boolean ``(ny, nx)`` array or a shapely geometry tested at cell centres)
    sets cells outside the body outline to NaN.

    Small-cell suppression: the *support* of a cell is the number of distinct patients with
    a mark in the square of half-width ``support_radius`` (default ``2 * sigma``, rounded
    up to whole cells) around it, where about 91 % of the kernel's weight lies. Cells with
    support below ``min_patients`` are NaN, also where support is 0, so that an empty area
    and a suppressed one look alike. ``min_patients=0`` turns suppression off (internal
    use only: never display or export such a grid).

    Examples
    --------
    >>> g = density_grid(marks, "anterior", bounds=(-25, 0, 25, 120))  # doctest: +SKIP
    >>> g.values.shape  # doctest: +SKIP
    (240, 100)
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}")
    spec = GridSpec.from_bounds(bounds, cell)
    radius = 2.0 * sigma if support_radius is None else float(support_radius)
    half = max(0, math.ceil(radius / cell - 1e-9))

    in_view = (marks["view"] == view).to_numpy()
    sub = marks.loc[in_view] if not in_view.all() else marks
    x, y, inside = _in_bounds(sub["x"].to_numpy(), sub["y"].to_numpy(), spec)
    n_out = len(sub) - len(x)
    pid = sub["patient_id"].to_numpy()
    if inside is not None:
        pid = pid[inside]
    codes, uniques = pd.factorize(pid)
    n_patients = len(uniques)
    ncells = spec.nx * spec.ny

    distinct = support = None
    if (weighting == "patient_cell" or min_patients > 0) and len(x):
        cells, _ = _cell_index(x, y, spec)
        distinct, support = _patient_cell_counts(codes, cells, n_patients, spec, half)

    if weighting == "marks":
        binned = bin_counts(x, y, spec)
    elif weighting == "patient_cell":
        binned = distinct.astype(float) if distinct is not None else np.zeros(ncells, dtype=float)
    else:
        per_patient = np.bincount(codes, minlength=n_patients)
        binned = bin_counts(x, y, spec, weights=1.0 / per_patient[codes])
    binned = binned.reshape(spec.shape)
    total = float(binned.sum())
    values = ndimage.gaussian_filter(binned, sigma=sigma / cell, mode="reflect")

    outside = _outside_mask(mask, spec)
    if outside is not None:
        values[outside] = np.nan
    n_suppressed = 0
    if min_patients > 0:
        support_grid = (
            support.reshape(spec.shape) if support is not None else np.zeros(spec.shape, int)
        )
        support_ok = support_grid >= min_patients
        hidden = ~support_ok & ~np.isnan(values)
        n_suppressed = int((hidden & (values > 0)).sum())
        values[hidden] = np.nan
    return DensityGrid(
        spec=spec,
        values=values,
        weighting=weighting,
        n_marks=len(x),
        n_patients=n_patients,
        total_weight=total,
        min_patients=min_patients,
        support_radius=half * cell,
        n_out_of_bounds=n_out,
        n_suppressed=n_suppressed,
    )


def _outside_mask(mask: np.ndarray | shapely.Geometry | None, spec: GridSpec) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, shapely.Geometry):
        xs, ys = spec.centres()
        return ~shapely.contains_xy(mask, xs, ys)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spec.shape:
        raise ValueError(f"mask has shape {mask.shape}, the grid is {spec.shape}")
    return ~mask


# Bytes per chunk of the bit-packed (patient-word, y, x) bitmap: 32 MB keeps memory flat
# whatever the number of patients while staying large enough for numpy to be efficient.
_BITMAP_BUDGET = 1 << 25


def _or_dilate(cube: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Bitwise OR of each element with its neighbours up to ``half`` away along ``axis``."""
    out = cube.copy()
    n = cube.shape[axis]
    for d in range(1, min(half, n - 1) + 1):
        dst_hi = [slice(None)] * cube.ndim
        src_lo = [slice(None)] * cube.ndim
        dst_hi[axis], src_lo[axis] = slice(d, None), slice(None, n - d)
        out[tuple(dst_hi)] |= cube[tuple(src_lo)]
        out[tuple(src_lo)] |= cube[tuple(dst_hi)]
    return out


def _patient_cell_counts(
    codes: np.ndarray, cells: np.ndarray, n_patients: int, spec: GridSpec, half: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct patients per cell, and per (2*half+1)-square window, both flat ``(ncells,)``.

    Patients are bits: 64 to a word of a (word, y, x) bitmap built by scatter-OR (no sort,
    no hashing of (patient, cell) keys). Counting set bits over the words gives distinct
    patients per cell; dilating every bit plane by the square window first (bitwise OR of
    shifted copies, separable in x and y) gives distinct patients per window. Bit-packing
    makes this 64 times less work than a byte per patient and cell; words are processed in
    chunks so that memory stays at about ``_BITMAP_BUDGET`` bytes.
    """
    ny, nx = spec.shape
    ncells = nx * ny
    n_words = -(-n_patients // 64)
    chunk = max(1, _BITMAP_BUDGET // (8 * ncells))  # words per chunk
    n_chunks = -(-n_words // chunk)
    distinct = np.zeros(ncells, dtype=np.int64)
    support = np.zeros(ncells, dtype=np.int64)
    word = codes >> 6
    bit = np.left_shift(np.uint64(1), (codes & 63).astype(np.uint64))
    if n_chunks <= 1:
        groups: Iterable[tuple[int, np.ndarray | slice]] = [(0, slice(None))]
    else:
        # Group the marks by chunk with one stable sort of small integers (radix sort).
        chunk_of = (word // chunk).astype(np.int16 if n_chunks < 2**15 else np.int32)
        order = np.argsort(chunk_of, kind="stable")
        starts = np.concatenate(([0], np.cumsum(np.bincount(chunk_of, minlength=n_chunks))))
        groups = [(k, order[starts[k] : starts[k + 1]]) for k in range(n_chunks)]
    for k, idx in groups:
        lo = k * chunk
        size = min(chunk, n_words - lo)
        bitmap = np.zeros(size * ncells, dtype=np.uint64)
        local = (word[idx] - lo).astype(np.int64) * ncells + cells[idx]
        np.bitwise_or.at(bitmap, local, bit[idx])
        cube = bitmap.reshape(size, ny, nx)
        distinct += np.bitwise_count(cube).sum(axis=0, dtype=np.int64).ravel()
        if half > 0:
            cube = _or_dilate(_or_dilate(cube, half, axis=2), half, axis=1)
        support += np.bitwise_count(cube).sum(axis=0, dtype=np.int64).ravel()
    return distinct, support


@dataclass(frozen=True)
class DifferenceGrid:
    """Group A minus group B, each as a percentage of its own cohort (see difference_grid)."""

    spec: GridSpec
    values: np.ndarray
    a: DensityGrid
    b: DensityGrid
    n_cohort_a: int
    n_cohort_b: int


def difference_grid(
    marks_a: pd.DataFrame,
    cohort_a: pd.DataFrame,
    marks_b: pd.DataFrame,
    cohort_b: pd.DataFrame,
    view: str,
    *,
    bounds: tuple[float, float, float, float],
    cell: float = 0.5,
    sigma: float = 1.5,
    weighting: Weighting = "patient_cell",
    mask: np.ndarray | shapely.Geometry | None = None,
    min_patients: int = 5,
) -> DifferenceGrid:
    """Density of A minus density of B, each in percent of its own cohort's patients.

    Dividing each group's grid by the number of patients in its cohort (with or without
    marks) lets groups of different size compare honestly: with ``"patient_cell"`` a value
    reads "percentage points more of A's patients than of B's were marked here". Cells
    suppressed in either group, or outside the mask, are NaN.

    Examples
    --------
    >>> d = difference_grid(ma, ca, mb, cb, "posterior", bounds=b)  # doctest: +SKIP
    """
    kwargs = dict(
        bounds=bounds,
        cell=cell,
        sigma=sigma,
        weighting=weighting,
        mask=mask,
        min_patients=min_patients,
    )
    marks_a = marks_a.loc[marks_a["patient_id"].isin(cohort_a["patient_id"]).to_numpy()]
    marks_b = marks_b.loc[marks_b["patient_id"].isin(cohort_b["patient_id"]).to_numpy()]
    grid_a = density_grid(marks_a, view, **kwargs)
    grid_b = density_grid(marks_b, view, **kwargs)
    n_a = int(cohort_a["patient_id"].nunique())
    n_b = int(cohort_b["patient_id"].nunique())
    if n_a == 0 or n_b == 0:
        raise ValueError("both cohorts need at least one patient")
    values = 100.0 * grid_a.values / n_a - 100.0 * grid_b.values / n_b  # NaN propagates
    return DifferenceGrid(grid_a.spec, values, grid_a, grid_b, n_a, n_b)


# --------------------------------------------------------------------------------------------
# Folding to the affected side
# --------------------------------------------------------------------------------------------

# Code of the mirrored view for each code of VIEWS (last entry: missing view stays missing).
_MIRROR_VIEW_CODES = np.array([0, 1, 3, 2, -1], dtype=np.int8)


def fold_to_affected_side(marks: pd.DataFrame, cohort: pd.DataFrame) -> pd.DataFrame:
    """Mirror the marks of left-affected patients so that every affected knee is on the right.

    For patients whose ``affected_side`` is ``"left"``: ``x -> -x`` and ``side`` swapped on
    every view, and ``lateral_left`` and ``lateral_right`` swap (they are mirror images of
    each other). Afterwards ``side == "right"`` means "the affected side" for unilateral
    patients. Patients with ``"both"`` (or missing, or not in the cohort) are left as they
    are: there is no affected side to fold onto, so restrict to unilateral patients when the
    question is ipsilateral versus contralateral.

    Examples
    --------
    >>> folded = fold_to_affected_side(marks, cohort)  # doctest: +SKIP
    """
    affected = cohort.drop_duplicates("patient_id").set_index("patient_id")["affected_side"]
    left_ids = affected.index[(affected == "left").to_numpy()]
    flip = marks["patient_id"].isin(left_ids).to_numpy()
    out = marks.copy()
    if not flip.any():
        return out
    out.loc[flip, "x"] = -out.loc[flip, "x"]
    # Work on the category codes of the fixed vocabularies: no string round trip.
    side = out["side"].astype(_SIDE_DTYPE).cat.codes.to_numpy().copy()
    side[flip & (side >= 0)] = 1 - side[flip & (side >= 0)]  # left 0 <-> right 1
    out["side"] = pd.Categorical.from_codes(side, dtype=_SIDE_DTYPE)
    view = out["view"].astype(_VIEW_DTYPE).cat.codes.to_numpy().copy()
    view[flip] = _MIRROR_VIEW_CODES[view[flip]]
    out["view"] = pd.Categorical.from_codes(view, dtype=_VIEW_DTYPE)
    return out


# --------------------------------------------------------------------------------------------
# Responders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    """Direction of improvement and minimal clinically important difference (MCID)."""

    lower_is_better: bool
    mcid: float


#: Direction and MCID per instrument, derived from :data:`tpmap.model.OUTCOME_INSTRUMENTS`
#: (ANATOMY.md section 3; NPRS 2 is for chronic musculoskeletal pain, 1.16 has been reported
#: in patellofemoral pain: pass ``mcid=`` to use it).
INSTRUMENTS: dict[str, Instrument] = {
    key: Instrument(info.direction is model.Direction.LOWER_IS_BETTER, float(info.mcid))
    for key, info in model.OUTCOME_INSTRUMENTS.items()
}


def responders(
    outcomes: pd.DataFrame, *, instrument: str, mcid: float | None = None
) -> pd.DataFrame:
    """Responder status per patient episode, from the first to the last score of an instrument.

    ``improvement`` is the change in the instrument's good direction (a drop for NPRS, VAS,
    WOMAC function; a rise for the others). A ``"responder"`` improved by at least the MCID
    (default from :data:`INSTRUMENTS`), a ``"non_responder"`` did not. Episodes with fewer
    than two scores on different dates are ``"unknown"``: missing follow-up is never counted
    as a non-response.

    Examples
    --------
    >>> o = pd.DataFrame({"patient_id": [1, 1, 2], "episode_id": [1, 1, 2],
    ...     "instrument": "nprs", "score": [7, 4, 6],
    ...     "date": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-01-01"])})
    >>> responders(o, instrument="nprs")["status"].tolist()
    ['responder', 'unknown']
    """
    if instrument not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {instrument!r}; known: {sorted(INSTRUMENTS)}")
    info = INSTRUMENTS[instrument]
    threshold = info.mcid if mcid is None else float(mcid)
    rows = outcomes.loc[(outcomes["instrument"] == instrument).to_numpy()]
    rows = rows.dropna(subset=["score", "date"]).assign(date=lambda d: pd.to_datetime(d["date"]))
    rows = rows.sort_values(["patient_id", "episode_id", "date"], kind="stable")
    grouped = rows.groupby(["patient_id", "episode_id"], sort=True)
    out = grouped.agg(
        n_scores=("score", "size"),
        first_date=("date", "first"),
        last_date=("date", "last"),
        baseline=("score", "first"),
        final=("score", "last"),
    ).reset_index()
    out["baseline"] = out["baseline"].astype(float)
    out["final"] = out["final"].astype(float)
    change = out["final"] - out["baseline"]
    out["improvement"] = -change if info.lower_is_better else change
    known = (out["n_scores"] >= 2) & (out["last_date"] > out["first_date"])
    out.loc[~known, "improvement"] = np.nan
    # The tolerance keeps 12.5 computed as 12.4999999 from summed item scores a responder.
    hit = out["improvement"] >= threshold - 1e-9
    status = np.where(~known, "unknown", np.where(hit, "responder", "non_responder"))
    out["status"] = pd.Categorical(status, dtype=_STATUS_DTYPE)
    out.attrs.update(instrument=instrument, mcid=threshold)
    return out


def attach_responders(cohort: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """Add a patient-level ``responder`` column to the cohort from :func:`responders` output.

    A patient with several episodes takes the status of the latest episode (by last score
    date) whose status is known; patients with no known episode, or no scores at all, are
    ``"unknown"``.

    Examples
    --------
    >>> cohort = attach_responders(cohort, responders(outcomes, instrument="kujala"))
    ... # doctest: +SKIP
    """
    known = episodes.loc[(episodes["status"] != "unknown").to_numpy()]
    latest = known.sort_values("last_date", kind="stable").drop_duplicates(
        "patient_id", keep="last"
    )
    by_patient = dict(zip(latest["patient_id"], latest["status"].astype(str), strict=True))
    status = [by_patient.get(pid, "unknown") for pid in cohort["patient_id"]]
    out = cohort.copy()
    out["responder"] = pd.Categorical(status, dtype=_STATUS_DTYPE)
    return out


# --------------------------------------------------------------------------------------------
# Group comparison
# --------------------------------------------------------------------------------------------


def compare_groups(
    marks_a: pd.DataFrame,
    cohort_a: pd.DataFrame,
    marks_b: pd.DataFrame,
    cohort_b: pd.DataFrame,
    *,
    by_side: bool = True,
    min_patients: int = 5,
) -> pd.DataFrame:
    """Per muscle (and side), compare the share of patients marked in groups A and B.

    For each muscle marked in either group: patients marked ``a``/``b`` out of the cohorts'
    ``n_a``/``n_b`` (all patients, with or without marks), percentages, their difference in
    percentage points with a 95 % Newcombe hybrid-score interval, the two-sided Fisher exact
    p on the 2x2 table of patients with/without a mark, and Benjamini-Hochberg q-values.
    The family for the q-values is every muscle (side) marked in either group, *including*
    rows later suppressed, so hiding a row never makes the others look more significant.
    Rows where either group has fewer than ``min_patients`` patients marked are dropped;
    ``attrs`` records ``n_tests``, ``n_suppressed`` and the cohort sizes.

    Examples
    --------
    >>> cmp = compare_groups(ma, ca, mb, cb, min_patients=5)  # doctest: +SKIP
    """
    keys = ["muscle", "side"] if by_side else ["muscle"]
    counts_a, n_a = _patient_counts(marks_a, cohort_a, by_side)
    counts_b, n_b = _patient_counts(marks_b, cohort_b, by_side)
    table = counts_a[[*keys, "n_patients"]].merge(
        counts_b[[*keys, "n_patients"]], on=keys, how="outer", suffixes=("_a", "_b")
    )
    a = table["n_patients_a"].fillna(0).to_numpy(dtype=np.int64)
    b = table["n_patients_b"].fillna(0).to_numpy(dtype=np.int64)
    out = table[keys].copy()
    out["a"], out["n_a"], out["b"], out["n_b"] = a, n_a, b, n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        pa, pb = a / n_a, b / n_b
    la, ua = wilson_interval(a, n_a)
    lb, ub = wilson_interval(b, n_b)
    diff = pa - pb
    # Newcombe (1998) method 10: combine the two Wilson intervals.
    out["pct_a"], out["pct_b"], out["diff"] = 100 * pa, 100 * pb, 100 * diff
    out["diff_low"] = 100 * (diff - np.sqrt((pa - la) ** 2 + (ub - pb) ** 2))
    out["diff_high"] = 100 * (diff + np.sqrt((ua - pa) ** 2 + (pb - lb) ** 2))
    p = np.array(
        [
            stats.fisher_exact([[ai, n_a - ai], [bi, n_b - bi]]).pvalue
            for ai, bi in zip(a, b, strict=True)
        ]
    )
    p = np.clip(p, 0.0, 1.0)
    out["p"] = p
    out["q"] = stats.false_discovery_control(p, method="bh") if len(p) else p
    shown = (a >= min_patients) & (b >= min_patients)
    out = out.loc[shown].sort_values(["p", "muscle"], kind="stable").reset_index(drop=True)
    out.attrs.update(
        n_a=n_a,
        n_b=n_b,
        n_tests=len(p),
        n_suppressed=int((~shown).sum()),
        min_patients=min_patients,
    )
    return out


# --------------------------------------------------------------------------------------------
# De-identification for exports
# --------------------------------------------------------------------------------------------

#: Columns that never leave in an export: free text and direct identifiers.
DROPPED_ON_EXPORT = frozenset(
    {
        "note",
        "notes",
        "patient_code",
        "code",
        "name",
        "first_name",
        "last_name",
        "email",
        "phone",
        "address",
        "free_text",
    }
)
_HASHED_IDS = ("patient_id", "episode_id", "session_id")


def deidentify(frame: pd.DataFrame, *, salt: bytes | None = None) -> pd.DataFrame:
    """Copy of ``frame`` fit for export: notes and codes dropped, ids replaced by hashes.

    ``patient_id``, ``episode_id`` and ``session_id`` become 16-hex-digit keyed BLAKE2b
    hashes. The key is ``salt``, by default 16 fresh random bytes from :mod:`secrets` per
    call and never returned, so pseudonyms differ between exports and cannot be joined back
    to the database. Pass one ``salt`` to keep ids consistent across the files of *one*
    export (e.g. marks and outcomes), then discard it.

    Examples
    --------
    >>> out = deidentify(pd.DataFrame({"patient_id": [3, 3], "note": ["a", "b"]}))
    >>> list(out.columns), out["patient_id"].nunique()
    (['patient_id'], 1)
    """
    key = secrets.token_bytes(16) if salt is None else bytes(salt)
    if not 0 < len(key) <= hashlib.blake2b.MAX_KEY_SIZE:
        raise ValueError("salt must be 1 to 64 bytes")
    out = frame.drop(columns=[c for c in frame.columns if c.lower() in DROPPED_ON_EXPORT])
    for column in _HASHED_IDS:
        if column in out.columns:
            codes, uniques = pd.factorize(out[column], use_na_sentinel=True)
            # One hash per distinct id; ``person`` separates the id spaces, so patient 7
            # and session 7 do not share a pseudonym.
            hashed = np.array(
                [_hash(key, column, value) for value in uniques] + [None], dtype=object
            )
            out[column] = pd.array(hashed[codes], dtype="string")
    return out


def _hash(key: bytes, column: str, value: object) -> str:
    person = column.encode()[:16]
    data = str(value).encode()
    return hashlib.blake2b(data, key=key, digest_size=8, person=person).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading from the database
# --------------------------------------------------------------------------------------------

#: Columns of :attr:`Dataset.marks`: the compact layout, then ``clinician`` and ``episode_id``.
DATASET_MARK_COLUMNS: tuple[str, ...] = (*MARK_COLUMNS, "clinician", "episode_id")
_FIXED_VOCABULARIES = {"view": VIEWS, "layer": LAYERS, "side": SIDES}
_OPEN_CATEGORIES = ("muscle", "technique", "ltr_grade", "tp_status", "clinician")
_OUTCOME_SOURCES = pd.CategoricalDtype(["outcome_measures", "sessions"])


@dataclass(frozen=True, eq=False)
class Dataset:
    """Everything the explore page or a notebook analyses, loaded by :func:`load_dataset`.

    Attributes
    ----------
    marks
        One row per visible (not soft-deleted) mark, sorted by mark id: the compact layout of
        :func:`compact_marks` plus ``clinician`` (categorical) and ``episode_id`` (int32, the
        episode of the mark's own session): 32 bytes a mark with fewer than 128 muscles,
        clinicians and other category values per column.
    cohort
        One row per patient who has at least one episode, with or without marks: the
        denominator of every percentage. Columns ``patient_id``, ``episode_id``, ``sex``,
        ``birth_year`` (float, NaN when unknown), ``condition``, ``affected_side``,
        ``start_date`` and one ``responder_<instrument>`` column per instrument with data
        (``"responder"``/``"non_responder"``/``"unknown"``). A patient with several episodes
        is described by the *latest* one (by start date, then id): its condition, side,
        start date and responder status. Their marks keep their own session's episode in
        ``marks.episode_id``, so marks of earlier episodes still count for the patient;
        select on ``marks.episode_id == cohort.episode_id`` to keep only the latest episode.
        One row per patient keeps "percentage of patients" honest.
    outcomes
        One row per score: ``patient_id``, ``episode_id``, ``instrument``, ``score``,
        ``date`` and ``source``: ``"outcome_measures"``, or ``"sessions"`` for the NPRS of
        an episode without NPRS outcome measures, taken from its sessions (the first
        session's ``nprs_before`` as baseline, the last session's ``nprs_after`` as final).
    loaded_at
        When the data was read (UTC).
    n_deleted_excluded
        Soft-deleted marks left out.
    atlas_versions
        Atlas versions the visible marks were placed with (sorted).
    """

    marks: pd.DataFrame
    cohort: pd.DataFrame
    outcomes: pd.DataFrame
    loaded_at: _dt.datetime
    n_deleted_excluded: int
    atlas_versions: tuple[str, ...]
    snapshot: Path | None = None
    refresh: RefreshStats | None = field(default=None, repr=False)

    def filter(self, filters: Filters) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(cohort, marks)`` after ``filters`` (see :meth:`Filters.apply`)."""
        return filters.apply(self.cohort, self.marks)

    @property
    def clinicians(self) -> tuple[str, ...]:
        """Clinicians with at least one visible mark, sorted (for a filter widget)."""
        return tuple(str(c) for c in self.marks["clinician"].cat.categories)

    @property
    def date_range(self) -> tuple[_dt.date, _dt.date] | None:
        """First and last session date with a visible mark; None without marks."""
        if self.marks.empty:
            return None
        days = self.marks["session_date"].to_numpy()
        first, last = (_EPOCH + np.timedelta64(int(d), "D") for d in (days.min(), days.max()))
        return first.astype(_dt.date), last.astype(_dt.date)

    @property
    def instruments(self) -> tuple[str, ...]:
        """Instruments with a ``responder_<instrument>`` column in the cohort."""
        prefix = "responder_"
        return tuple(c[len(prefix) :] for c in self.cohort.columns if c.startswith(prefix))


def load_dataset(
    source: Store | str | URL | Engine,
    *,
    snapshot: str | Path | bool | None = None,
) -> Dataset:
    """Load marks, cohort and outcomes from a tpmap database for analysis.

    Parameters
    ----------
    source
        A :class:`~tpmap.store.Store`, a database URL, or an engine. Only read from.
    snapshot
        Where to keep the Parquet snapshot of the marks (see :mod:`tpmap._snapshot`), which
        is refreshed incrementally on every call: only marks that changed since are read
        from the database. ``None`` or ``True``: the user cache directory, keyed by a hash
        of the URL (an in-memory SQLite database gets none). A path: that directory (for
        instance next to the database file). ``False``: read every mark from the database.

    Returns
    -------
    Dataset
        See :class:`Dataset` for the frames and how patients with several episodes and
        deleted marks are handled.

    Examples
    --------
    >>> ds = load_dataset("sqlite:///tpmap.db")  # doctest: +SKIP
    >>> cohort, marks = ds.filter(Filters(conditions=["patellofemoral_pain"]))  # doctest: +SKIP
    >>> muscle_table(marks, cohort)  # doctest: +SKIP
    """
    from sqlalchemy import Engine as _Engine
    from sqlalchemy import inspect as sa_inspect

    from tpmap import _snapshot
    from tpmap.store import Store as _Store
    from tpmap.store import make_engine

    if isinstance(source, _Store):
        engine, owned = source.engine, False
    elif isinstance(source, _Engine):
        engine, owned = source, False
    else:
        engine, owned = make_engine(source), True
    try:
        missing = {"patients", "episodes", "sessions", "marks"} - set(
            sa_inspect(engine).get_table_names()
        )
        if missing:
            raise ValueError(
                f"{engine.url.render_as_string(hide_password=True)} is not a tpmap database "
                f"(no {', '.join(sorted(missing))} table): check the URL, or open it once "
                "with tpmap serve or tpmap demo to create the tables"
            )
        loaded_at = _dt.datetime.now(_dt.UTC)
        directory = _snapshot_dir(engine, snapshot)
        stats = None
        columns = [*DATASET_MARK_COLUMNS, "atlas_version", "deleted"]
        if directory is None:
            table = _snapshot.read_marks_table(engine).select(columns)
        else:
            snap = _snapshot.MarkSnapshot(directory, engine)
            stats = snap.refresh()
            table = snap.read(columns)
        table, n_deleted = _snapshot.live_rows(table)
        atlas_versions = tuple(_unique_strings(table.column("atlas_version")))
        marks = _marks_from_arrow(table.drop_columns(["atlas_version"]))
        del table
        # The cohort is read after the marks: a patient added meanwhile only widens it.
        with engine.connect() as conn:
            episodes = _read_episodes(conn)
            outcomes = _read_outcomes(conn)
        cohort = _cohort(episodes, outcomes)
    finally:
        if owned:
            engine.dispose()
    return Dataset(
        marks=marks,
        cohort=cohort,
        outcomes=outcomes,
        loaded_at=loaded_at,
        n_deleted_excluded=n_deleted,
        atlas_versions=atlas_versions,
        snapshot=directory,
        refresh=stats,
    )


def _unique_strings(column: pa.ChunkedArray) -> list[str]:
    """Distinct non-null values of an Arrow dictionary-encoded string column.

    Counts the dictionary indices in use per chunk (a bincount), without decoding strings.
    """
    found: set[str] = set()
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        indices = chunk.indices.to_numpy(zero_copy_only=False)
        if chunk.null_count:
            indices = indices[chunk.is_valid().to_numpy(zero_copy_only=False)]
        used = np.flatnonzero(np.bincount(indices, minlength=len(chunk.dictionary)))
        found.update(str(chunk.dictionary[int(i)]) for i in used)
    return sorted(found)


def _snapshot_dir(engine: Engine, snapshot: str | Path | bool | None) -> Path | None:
    from tpmap import _snapshot

    if snapshot is False:
        return None
    if snapshot is None or snapshot is True:
        url = engine.url
        if url.get_backend_name() == "sqlite" and (url.database or ":memory:") == ":memory:":
            return None  # every in-memory database would share one cache key
        return _snapshot.default_snapshot_dir(url)
    return Path(snapshot)


def _marks_from_arrow(table: pa.Table) -> pd.DataFrame:
    """The :attr:`Dataset.marks` frame from snapshot columns (no per-row Python work).

    Dictionary columns become categoricals by remapping their indices with one numpy take:
    fixed vocabularies (view, layer, side) keep the model's order; the others keep the values
    in use, sorted, so that the frame does not depend on the snapshot's history.
    """
    table = table.unify_dictionaries()
    out: dict[str, object] = {}
    for name in DATASET_MARK_COLUMNS:
        column = table.column(name)
        if name not in _FIXED_VOCABULARIES and name not in _OPEN_CATEGORIES:
            out[name] = column.to_numpy()
            continue
        dictionary = [] if not column.num_chunks else column.chunk(0).dictionary.to_pylist()
        # Per chunk (a row group: cache-sized), with nulls as the extra last index.
        chunks = [
            (c.indices.fill_null(len(dictionary)) if c.null_count else c.indices).to_numpy()
            for c in column.chunks
            if len(c)
        ]
        used = np.zeros(len(dictionary) + 1, dtype=np.int64)
        for chunk in chunks:
            used += np.bincount(chunk, minlength=len(dictionary) + 1)
        present = [v for v, n in zip(dictionary, used[:-1], strict=True) if n]
        if name in _FIXED_VOCABULARIES:
            categories = list(_FIXED_VOCABULARIES[name])
            unknown = set(present) - set(categories)
            if unknown:
                raise ValueError(f"unknown {name} values in the database: {sorted(unknown)}")
        else:
            categories = sorted(present)
        position = {v: i for i, v in enumerate(categories)}
        width = (
            np.int8 if len(categories) < 128 else np.int16 if len(categories) < 2**15 else np.int32
        )
        # Old index -> new code; the last slot maps nulls to -1.
        mapping = np.array([position.get(v, -1) for v in dictionary] + [-1], dtype=width)
        codes = np.empty(sum(len(c) for c in chunks), dtype=width)
        start = 0
        for chunk in chunks:
            np.take(mapping, chunk, out=codes[start : start + len(chunk)])
            start += len(chunk)
        dtype = pd.CategoricalDtype(pd.Index(categories, dtype=str))
        out[name] = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return pd.DataFrame(out)


def _read_episodes(conn: object) -> pd.DataFrame:
    from sqlalchemy import select

    from tpmap.store.schema import EpisodeRow, PatientRow

    e, p = EpisodeRow.__table__, PatientRow.__table__
    stmt = select(
        e.c.patient_id,
        e.c.id.label("episode_id"),
        p.c.sex,
        p.c.birth_year,
        e.c.condition,
        e.c.affected_side,
        e.c.start_date,
    ).join_from(e, p, p.c.id == e.c.patient_id)
    rows = conn.execute(stmt).all()  # type: ignore[attr-defined]
    columns = ["patient_id", "episode_id", "sex", "birth_year", "condition", "affected_side"]
    frame = pd.DataFrame.from_records(rows, columns=[*columns, "start_date"])
    return frame


def _read_outcomes(conn: object) -> pd.DataFrame:
    from sqlalchemy import func, select

    from tpmap.store.schema import EpisodeRow, OutcomeMeasureRow, SessionRow

    e, o, s = EpisodeRow.__table__, OutcomeMeasureRow.__table__, SessionRow.__table__
    measured = select(e.c.patient_id, o.c.episode_id, o.c.instrument, o.c.score, o.c.date)
    measured = measured.join_from(o, e, e.c.id == o.c.episode_id)
    has_nprs = select(o.c.episode_id).where(o.c.instrument == "nprs")

    def session_nprs(column: object, last: bool) -> object:
        order = [s.c.date.desc(), s.c.id.desc()] if last else [s.c.date, s.c.id]
        rank = func.row_number().over(partition_by=s.c.episode_id, order_by=order)
        sub = (
            select(s.c.episode_id, s.c.date, column.label("score"), rank.label("rank"))  # type: ignore[attr-defined]
            .where(column.is_not(None), s.c.episode_id.not_in(has_nprs))  # type: ignore[attr-defined]
            .subquery()
        )
        return (
            select(e.c.patient_id, sub.c.episode_id, sub.c.score, sub.c.date)
            .join_from(sub, e, e.c.id == sub.c.episode_id)
            .where(sub.c.rank == 1)
        )

    rows = [(*r, "outcome_measures") for r in conn.execute(measured).all()]  # type: ignore[attr-defined]
    for column, last in ((s.c.nprs_before, False), (s.c.nprs_after, True)):
        for r in conn.execute(session_nprs(column, last)).all():  # type: ignore[attr-defined]
            rows.append((r[0], r[1], "nprs", r[2], r[3], "sessions"))
    columns = ["patient_id", "episode_id", "instrument", "score", "date", "source"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame = frame.astype({"patient_id": np.int32, "episode_id": np.int32, "score": float})
    frame["instrument"] = frame["instrument"].astype(str)
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[s]")
    frame["source"] = pd.Categorical(frame["source"], dtype=_OUTCOME_SOURCES)
    return frame.sort_values(["patient_id", "episode_id", "instrument", "date"]).reset_index(
        drop=True
    )


def _cohort(episodes: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per patient from the latest episode, with a responder column per instrument."""
    latest = episodes.sort_values(["patient_id", "start_date", "episode_id"], kind="stable")
    latest = latest.drop_duplicates("patient_id", keep="last").reset_index(drop=True)
    cohort = pd.DataFrame(
        {
            "patient_id": latest["patient_id"].to_numpy(dtype=np.int32),
            "episode_id": latest["episode_id"].to_numpy(dtype=np.int32),
            "sex": pd.Categorical(latest["sex"], dtype=pd.CategoricalDtype(model.SEXES)),
            "birth_year": pd.to_numeric(latest["birth_year"]).astype(float).to_numpy(),
            "condition": pd.Categorical(
                latest["condition"], dtype=pd.CategoricalDtype(model.CONDITIONS)
            ),
            "affected_side": pd.Categorical(
                latest["affected_side"], dtype=pd.CategoricalDtype(model.AFFECTED_SIDES)
            ),
            "start_date": pd.to_datetime(latest["start_date"]).astype("datetime64[s]"),
        }
    )
    key = pd.MultiIndex.from_arrays([cohort["patient_id"], cohort["episode_id"]])
    for instrument in sorted(set(outcomes["instrument"]) & set(INSTRUMENTS)):
        status = responders(outcomes, instrument=instrument)
        by_episode = pd.Series(
            status["status"].to_numpy(),
            index=pd.MultiIndex.from_arrays([status["patient_id"], status["episode_id"]]),
        )
        values = by_episode.reindex(key).to_numpy()
        cohort[f"responder_{instrument}"] = pd.Categorical(
            np.where(pd.isna(values), "unknown", values), dtype=_STATUS_DTYPE
        )
    return cohort
