"""A researcher's filter and the fold to the affected side.

Filters work on three levels, each with its own meaning for the denominator:

episode filters (condition, sex, age band, affected side, responder status)
    choose patient episodes: the cohort shrinks and only the marks of those episodes count;
session filters (date range, clinician)
    choose sessions: the cohort becomes the episodes with at least one such session (with
    or without marks), and only marks made in those sessions count;
mark filters (technique, twitch response, trigger point status, view, layer, muscle)
    choose marks: the cohort stays as it is, and a patient whose marks were all filtered
    out still counts in the denominator, as a patient without such a mark.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import pandas as pd

from tpmap.research._frames import (
    AGE_BANDS,
    RESPONDER_STATUSES,
    SIDE_DTYPE,
    VIEW_DTYPE,
    to_days,
)
from tpmap.research._outcomes import INSTRUMENTS

__all__ = [
    "EPISODE_FILTERS",
    "MARK_FILTERS",
    "SESSION_FILTERS",
    "Filters",
    "age_band",
    "fold_to_affected_side",
    "sessions_from_marks",
]

#: Filter fields by level (see the module docstring).
EPISODE_FILTERS: tuple[str, ...] = (
    "conditions",
    "sexes",
    "age_bands",
    "affected_sides",
    "responder",
)
SESSION_FILTERS: tuple[str, ...] = ("clinicians",)  # and the date range
MARK_FILTERS: tuple[str, ...] = (
    "techniques",
    "ltr_grades",
    "tp_statuses",
    "views",
    "layers",
    "muscles",
)
_COLUMNS = {
    "conditions": "condition",
    "sexes": "sex",
    "affected_sides": "affected_side",
    "clinicians": "clinician",
    "techniques": "technique",
    "ltr_grades": "ltr_grade",
    "tp_statuses": "tp_status",
    "views": "view",
    "layers": "layer",
    "muscles": "muscle",
}


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


def sessions_from_marks(marks: pd.DataFrame) -> pd.DataFrame:
    """The sessions seen in a marks frame (sessions without marks are not in it)."""
    columns = [
        c
        for c in ("session_id", "episode_id", "patient_id", "session_date", "clinician")
        if c in marks.columns
    ]
    return marks[columns].drop_duplicates("session_id").reset_index(drop=True)


@dataclass(frozen=True)
class Filters:
    """A researcher's filter, applied to the cohort, the sessions and the marks together.

    ``None`` means "no filter". Dates are inclusive. See the module docstring for what each
    level does to the denominator.

    The cohort has one row per patient episode (:attr:`Dataset.cohort`); a hand-made cohort
    of one row per patient (no ``episode_id``) works too, the marks then following their
    patient. The age band is taken at the episode's ``index_date`` or ``start_date`` when
    the cohort has one, otherwise at the year of ``date_to``, otherwise this year.

    ``responder`` takes statuses from :data:`RESPONDER_STATUSES` and reads the cohort's
    ``responder`` column, or with ``instrument`` set the ``responder_<instrument>`` column
    that :func:`load_dataset` adds per instrument.

    Examples
    --------
    >>> f = Filters(conditions=["patellofemoral_pain"], techniques=["electrical"])
    >>> f.active()
    ('conditions', 'techniques')
    """

    conditions: tuple[str, ...] | None = None
    sexes: tuple[str, ...] | None = None
    age_bands: tuple[str, ...] | None = None
    affected_sides: tuple[str, ...] | None = None
    responder: tuple[str, ...] | None = None
    # Typed as what they hold: __post_init__ also takes ISO text and makes it a date.
    date_from: _dt.date | None = None
    date_to: _dt.date | None = None
    clinicians: tuple[str, ...] | None = None
    techniques: tuple[str, ...] | None = None
    ltr_grades: tuple[str, ...] | None = None
    tp_statuses: tuple[str, ...] | None = None
    views: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    muscles: tuple[str, ...] | None = None
    instrument: str | None = None

    def __post_init__(self) -> None:
        for name in (*EPISODE_FILTERS, *SESSION_FILTERS, *MARK_FILTERS):
            # Frozen and hashable whatever iterable the caller passed (a list from a widget).
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, pd.Timestamp(value).date())
        known = {label for label, _, _ in AGE_BANDS}
        if self.age_bands and not set(self.age_bands) <= known:
            raise ValueError(f"unknown age bands: {sorted(set(self.age_bands) - known)}")
        if self.responder and not set(self.responder) <= set(RESPONDER_STATUSES):
            raise ValueError(f"responder must be among {RESPONDER_STATUSES}")
        if self.instrument is not None and self.instrument not in INSTRUMENTS:
            raise ValueError(f"unknown instrument {self.instrument!r}")

    # ---------------------------------------------------------------- description
    def active(self) -> tuple[str, ...]:
        """Names of the filters in use (the date range counts as ``"dates"``)."""
        out = [
            f.name
            for f in fields(self)
            if f.name not in ("date_from", "date_to", "instrument")
            and getattr(self, f.name) is not None
        ]
        if self.date_from is not None or self.date_to is not None:
            out.insert(out.index("clinicians") if "clinicians" in out else len(out), "dates")
        return tuple(out)

    @property
    def has_session_filter(self) -> bool:
        """True when the cohort is restricted to episodes with a matching session."""
        return self.clinicians is not None or self.date_from is not None or self.date_to is not None

    def describe(self) -> dict[str, object]:
        """The filter as plain values (for an export's record), unset filters left out."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = (
                value.isoformat()
                if isinstance(value, _dt.date)
                else list(value)
                if (isinstance(value, tuple))
                else value
            )
        return out

    def without(self, *names: str) -> Filters:
        """A copy with the named filters removed (``"dates"`` removes both ends)."""
        changes: dict[str, None] = {}
        for name in names:
            if name == "dates":
                changes.update(date_from=None, date_to=None)
            else:
                changes[name] = None
        return replace(self, **changes)

    @property
    def responder_column(self) -> str:
        """The cohort column the ``responder`` filter reads."""
        return "responder" if self.instrument is None else f"responder_{self.instrument}"

    # ---------------------------------------------------------------- applying
    def apply(
        self,
        cohort: pd.DataFrame,
        marks: pd.DataFrame,
        *,
        sessions: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return ``(cohort, marks)`` filtered.

        Parameters
        ----------
        cohort, marks
            As in :class:`Dataset`.
        sessions
            Every session (:attr:`Dataset.sessions`), needed for the session filters to see
            sessions without marks; without it the sessions are taken from the marks.
        """
        ev = Evaluation(self, cohort, marks, sessions)
        return cohort.loc[ev.cohort_mask()], marks.loc[ev.marks_mask()]

    def episode_values(self, cohort: pd.DataFrame, name: str) -> pd.Series:
        """The values an episode filter reads, one per cohort row."""
        if name == "age_bands":
            bands = age_band(cohort["birth_year"], self._reference_year(cohort))
            return pd.Series(pd.Categorical(bands, categories=[b for b, _, _ in AGE_BANDS]))
        column = self.responder_column if name == "responder" else _COLUMNS[name]
        return _column(cohort, column, "cohort")

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


@dataclass
class Dimension:
    """One filter as row codes: ``selected[codes]`` is the filter's mask on its level."""

    name: str
    level: Literal["episode", "session", "mark"]
    codes: np.ndarray  # int per row of its level; -1 for a missing value (never matches)
    labels: tuple[str, ...]
    selected: np.ndarray  # bool per label

    def mask(self, selected: np.ndarray | None = None) -> np.ndarray:
        chosen = self.selected if selected is None else selected
        table = np.append(chosen, False)  # code -1 looks up the last slot
        return table[self.codes]


class Evaluation:
    """A filter evaluated on frames: per-filter masks that can be recombined.

    The disclosure checks ask "what if this one filter also let value v through?": every
    filter is kept as codes per row of its level (episodes, sessions, marks), and the
    masks of the cohort and the marks are composed from them with any one filter replaced.
    """

    def __init__(
        self,
        filters: Filters,
        cohort: pd.DataFrame,
        marks: pd.DataFrame,
        sessions: pd.DataFrame | None = None,
    ) -> None:
        self.filters = filters
        self.cohort = cohort
        self.marks = marks
        by_episode = "episode_id" in cohort.columns and "episode_id" in marks.columns
        self.key = "episode_id" if by_episode else "patient_id"
        self.mark_row = _row_index(cohort[self.key].to_numpy(), marks[self.key].to_numpy())
        self.dims: dict[str, Dimension] = {}
        for name in EPISODE_FILTERS:
            wanted = getattr(filters, name)
            if wanted is not None:
                values = filters.episode_values(cohort, name)
                self.dims[name] = _dimension(name, "episode", values, wanted)
        self.session_filter = filters.has_session_filter
        if self.session_filter:
            sess = sessions if sessions is not None else sessions_from_marks(marks)
            self.sessions = sess
            self.session_row = _row_index(cohort[self.key].to_numpy(), sess[self.key].to_numpy())
            self.mark_session = _row_index(
                sess["session_id"].to_numpy(), marks["session_id"].to_numpy()
            )
            if filters.clinicians is not None:
                values = _column(sess, "clinician", "sessions")
                self.dims["clinicians"] = _dimension(
                    "clinicians", "session", values, filters.clinicians
                )
            self.session_days = sess["session_date"].to_numpy()
        self.days = (
            None if filters.date_from is None else to_days(filters.date_from),
            None if filters.date_to is None else to_days(filters.date_to),
        )
        for name in MARK_FILTERS:
            wanted = getattr(filters, name)
            if wanted is not None:
                values = _column(marks, _COLUMNS[name], "marks")
                self.dims[name] = _dimension(name, "mark", values, wanted)

    # ------------------------------------------------------------ masks by level
    def episode_mask(self, override: Mapping[str, np.ndarray | None] | None = None) -> np.ndarray:
        """Cohort rows passing the episode filters (``override`` replaces selections)."""
        keep = np.ones(len(self.cohort), dtype=bool)
        for dim in self.dims.values():
            if dim.level == "episode":
                keep &= self._dim_mask(dim, override)
        return keep

    def session_mask(
        self,
        override: Mapping[str, np.ndarray | None] | None = None,
        days: tuple[int | None, int | None] | None = None,
    ) -> np.ndarray:
        """Session rows passing the session filters (dates and clinicians)."""
        low, high = self.days if days is None else days
        keep = np.ones(len(self.sessions), dtype=bool)
        if low is not None:
            keep &= self.session_days >= low
        if high is not None:
            keep &= self.session_days <= high
        for dim in self.dims.values():
            if dim.level == "session":
                keep &= self._dim_mask(dim, override)
        return keep

    def cohort_mask(
        self,
        override: Mapping[str, np.ndarray | None] | None = None,
        days: tuple[int | None, int | None] | None = None,
        episodes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Cohort rows in the query: episode filters, and a matching session if asked for."""
        keep = self.episode_mask(override) if episodes is None else episodes.copy()
        if self.session_filter:
            s_keep = self.session_mask(override, days)
            rows = self.session_row[s_keep]
            has = np.zeros(len(self.cohort) + 1, dtype=bool)
            has[rows] = True  # row -1 (a session outside the cohort) lands in the last slot
            keep &= has[:-1]
        return keep

    def marks_mask(
        self,
        override: Mapping[str, np.ndarray | None] | None = None,
        days: tuple[int | None, int | None] | None = None,
        episodes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Mark rows in the query: their own episode passes, their session, and the mark."""
        ep = self.episode_mask(override) if episodes is None else episodes
        keep = _take(ep, self.mark_row)
        if self.session_filter:
            keep &= _take(self.session_mask(override, days), self.mark_session)
        for dim in self.dims.values():
            if dim.level == "mark":
                keep &= self._dim_mask(dim, override)
        return keep

    def mark_codes(self, name: str) -> np.ndarray:
        """The codes of filter ``name`` per mark (episode and session values carried over)."""
        dim = self.dims[name]
        if dim.level == "mark":
            return dim.codes
        rows = self.mark_row if dim.level == "episode" else self.mark_session
        return _take_codes(dim.codes, rows)

    def _dim_mask(
        self, dim: Dimension, override: Mapping[str, np.ndarray | None] | None
    ) -> np.ndarray:
        if override is not None and dim.name in override:
            selected = override[dim.name]
            if selected is None:  # the filter lifted
                return np.ones(len(dim.codes), dtype=bool)
            return dim.mask(selected)
        return dim.mask()


def _dimension(
    name: str,
    level: Literal["episode", "session", "mark"],
    values: pd.Series,
    wanted: tuple[object, ...],
) -> Dimension:
    codes, labels = category_codes(values)
    want = {str(v) for v in wanted}
    selected = np.array([lab in want for lab in labels], dtype=bool)
    return Dimension(name, level, codes, labels, selected)


def category_codes(values: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes (-1 for missing) and labels of a column, without a string per row."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy().astype(np.int32)
        labels = tuple(str(c) for c in values.cat.categories)
    else:
        raw, uniques = pd.factorize(values, use_na_sentinel=True)
        codes = raw.astype(np.int32)
        labels = tuple(str(u) for u in uniques)
    return codes, labels


def _row_index(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of ``keys`` holding each of ``values`` (-1 when absent); keys must be unique."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    if len(keys) and keys.min() >= 0 and values.min() >= 0:
        top = int(max(keys.max(), values.max()))
        if top <= 64 * (len(keys) + len(values)) + 1_000_000:
            table = np.full(top + 1, -1, dtype=np.int64)
            table[keys] = np.arange(len(keys))
            return table[values]
    index = pd.Index(keys)
    return index.get_indexer(values)


def _take(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``mask[rows]`` with row -1 meaning False."""
    return np.append(mask, False)[rows]


def _take_codes(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.append(codes, -1)[rows]


# --------------------------------------------------------------------------------------------
# Folding to the affected side
# --------------------------------------------------------------------------------------------

# Code of the mirrored view for each code of VIEWS (last entry: missing view stays missing).
_MIRROR_VIEW_CODES = np.array([0, 1, 3, 2, -1], dtype=np.int8)


def fold_to_affected_side(
    cohort: pd.DataFrame, marks: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mirror marks so that every affected knee is on the right; bilateral episodes apart.

    Each mark is folded by its *own* episode's affected side: for a left-affected episode
    ``x -> -x`` and ``side`` swapped on every view, and ``lateral_left`` and
    ``lateral_right`` swap (they are mirror images of each other). Afterwards ``side ==
    "right"`` means "the affected side". Episodes affecting both knees (or with no side) have
    no affected side to fold onto: they are left out of both the cohort and the marks, so
    that they are not silently mixed into "affected side"; ``cohort.attrs["n_bilateral"]``
    counts the episodes left out. Analyse them on their own, unfolded.

    Returns
    -------
    (cohort, marks)
        The unilateral episodes, and their marks folded.

    Examples
    --------
    >>> cohort_f, marks_f = fold_to_affected_side(cohort, marks)  # doctest: +SKIP
    """
    if "x" in cohort.columns and "affected_side" in marks.columns:
        raise TypeError("fold_to_affected_side takes (cohort, marks), in that order")
    by_episode = "episode_id" in cohort.columns and "episode_id" in marks.columns
    key = "episode_id" if by_episode else "patient_id"
    side = cohort["affected_side"].astype(str).to_numpy()
    unilateral = np.isin(side, ["left", "right"])
    kept = cohort.loc[unilateral].copy()
    kept.attrs = {**cohort.attrs, "n_bilateral": int((~unilateral).sum())}
    rows = _row_index(cohort[key].drop_duplicates().to_numpy(), marks[key].to_numpy())
    first = cohort.drop_duplicates(key)
    first_side = first["affected_side"].astype(str).to_numpy()
    mark_side = np.append(first_side, "").astype(object)[rows]
    keep = np.isin(mark_side, ["left", "right"])
    out = marks.loc[keep].copy()
    flip = (mark_side[keep] == "left").astype(bool)
    if not flip.any():
        return kept, out
    x = out["x"].to_numpy().copy()
    x[flip] = -x[flip]
    out["x"] = x
    # Work on the category codes of the fixed vocabularies: no string round trip.
    sides = out["side"].astype(SIDE_DTYPE).cat.codes.to_numpy().copy()
    swap = flip & (sides >= 0)
    sides[swap] = 1 - sides[swap]  # left 0 <-> right 1
    out["side"] = pd.Categorical.from_codes(sides, dtype=SIDE_DTYPE)
    views = out["view"].astype(VIEW_DTYPE).cat.codes.to_numpy().copy()
    views[flip] = _MIRROR_VIEW_CODES[views[flip]]
    out["view"] = pd.Categorical.from_codes(views, dtype=VIEW_DTYPE)
    return kept, out
