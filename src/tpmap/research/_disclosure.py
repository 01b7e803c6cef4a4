"""Disclosure control: the small-cell floor, differencing checks, consistent perturbation.

docs/privacy.md describes the threat model; in short, a research output must not let its
reader learn something about fewer than ``k`` patients, neither directly (small-cell
suppression) nor by subtracting two outputs that are each allowed (differencing). This
module holds the rules; the page, the downloads and ``tpmap heatmap`` apply them through a
:class:`DisclosurePolicy`.

- :meth:`DisclosurePolicy.k`: the floor, ``max(requested, floor)``, for every output.
- :func:`check_query`: query-set-size control. A filtered cohort needs at least ``k``
  patients, the patients it leaves out (its complement) none or at least ``k``, and every
  *parent* query (one filter widened by one value, or the date range moved out by one step)
  must differ from it by none or at least ``k`` patients; in each muscle too, where a
  muscle failing the test is hidden.
- :meth:`DisclosurePolicy.coarsen`: dates by whole months for the researcher role, so that
  a date range cannot be moved by one day.
- :class:`CellKey`: consistent noise on displayed counts (the cell key method): the same
  patients always give the same number, so repeating a query teaches nothing, and the
  difference of two counts is blurred by two independent draws.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import hashlib
import itertools
import math
import secrets
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from tpmap.research._filters import SIDE_DTYPE, Evaluation, Filters, category_codes

__all__ = [
    "DEFAULT_MIN_PATIENTS",
    "ROLES",
    "CellKey",
    "DisclosureError",
    "DisclosurePolicy",
    "DisclosureWarning",
    "QueryCheck",
    "check_min_patients",
    "check_query",
]

#: The default small-cell threshold k (patients), the server's floor unless set otherwise.
DEFAULT_MIN_PATIENTS = 5
#: Roles a policy is chosen for (the sign-in's roles).
ROLES: tuple[str, ...] = ("researcher", "clinician", "admin")


class DisclosureWarning(UserWarning):
    """A research function was asked for outputs below the disclosure floor."""


class DisclosureError(ValueError):
    """A query the disclosure rules refuse; the message says why in plain words."""


def check_min_patients(min_patients: int) -> None:
    """Refuse a negative k; warn when k is below :data:`DEFAULT_MIN_PATIENTS`.

    Only the Python API used with direct database access may go below the floor (a person
    who can read the database learns nothing new from a small cell); the page, its
    downloads and ``tpmap heatmap`` never pass such a value (see
    :meth:`DisclosurePolicy.k`).
    """
    if min_patients < 0:
        raise ValueError("min_patients must be 0 or more")
    if min_patients < DEFAULT_MIN_PATIENTS:
        warnings.warn(
            f"min_patients={min_patients} is below the disclosure floor of "
            f"{DEFAULT_MIN_PATIENTS}: for analysis with direct database access only; do not "
            "publish or share the result",
            DisclosureWarning,
            stacklevel=3,
        )


def _parse_k(value: object) -> int | None:
    """A requested k from a widget or the command line, or None when it is no number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # any value may come: float() decides
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return math.ceil(number)


@dataclass(frozen=True)
class DisclosurePolicy:
    """What one audience may see: the floor k and the defences that apply to it.

    Parameters
    ----------
    min_patients
        The floor k: no output shows fewer patients, whatever is requested.
    role
        Who this policy is for (:data:`ROLES`); see :meth:`for_role`.
    date_granularity
        ``"month"``: date filters are widened to whole months (researchers);
        ``"day"``: any date.
    check_differences
        Run :func:`check_query` on every output.
    perturb
        Displayed counts carry consistent noise (:class:`CellKey`).
    dominance
        Hide a density spot where one patient gives more than this share of the value.
    export_dates
        Research exports give dates as ``"days_since_start"`` (days since the episode's
        start) or ``"month"`` (``YYYY-MM``).
    export_clinicians
        ``"hash"``: a per-export pseudonym; ``"drop"``: no clinician column.

    Examples
    --------
    >>> policy = DisclosurePolicy.for_role("researcher", min_patients=5)
    >>> policy.k(1), policy.k(8), policy.k("x")
    (5, 8, 5)
    """

    min_patients: int = DEFAULT_MIN_PATIENTS
    role: str = "researcher"
    date_granularity: Literal["day", "month"] = "month"
    check_differences: bool = True
    perturb: bool = True
    dominance: float = 0.5
    export_dates: Literal["days_since_start", "month"] = "days_since_start"
    export_clinicians: Literal["hash", "drop"] = "hash"

    def __post_init__(self) -> None:
        if int(self.min_patients) < 1:
            raise ValueError("a disclosure policy needs a floor of at least 1 patient")
        object.__setattr__(self, "min_patients", int(self.min_patients))
        if self.date_granularity not in ("day", "month"):
            raise ValueError("date_granularity must be 'day' or 'month'")
        if self.export_dates not in ("days_since_start", "month"):
            raise ValueError("export_dates must be 'days_since_start' or 'month'")
        if self.export_clinicians not in ("hash", "drop"):
            raise ValueError("export_clinicians must be 'hash' or 'drop'")

    @classmethod
    def for_role(
        cls, role: str | None, *, min_patients: int = DEFAULT_MIN_PATIENTS
    ) -> DisclosurePolicy:
        """The policy for a role (docs/privacy.md, "Who gets which defence").

        ``"researcher"`` (and any unknown role): every defence, dates by month, exports with
        days since the episode's start and hashed clinicians. ``"clinician"`` and
        ``"admin"``: the same floor, differencing checks and noise, dates by day (they see
        their patients' records in the clinic anyway), clinicians hashed in exports.
        """
        if role in ("clinician", "admin"):
            return cls(min_patients=min_patients, role=role, date_granularity="day")
        return cls(min_patients=min_patients, role="researcher")

    def k(self, requested: object = None) -> int:
        """The threshold to use: ``max(requested, floor)``; no number means the floor."""
        value = _parse_k(requested)
        return self.min_patients if value is None else max(value, self.min_patients)

    def coarsen(self, filters: Filters) -> Filters:
        """``filters`` with the date range widened to whole months when the policy says so."""
        if self.date_granularity == "day":
            return filters
        changes: dict[str, Any] = {}
        if filters.date_from is not None:
            changes["date_from"] = month_start(filters.date_from)
        if filters.date_to is not None:
            changes["date_to"] = month_end(filters.date_to)
        return replace(filters, **changes) if changes else filters

    @property
    def date_step(self) -> str:
        """The smallest move of a date filter: ``"day"`` or ``"month"``."""
        return self.date_granularity


def month_start(day: _dt.date) -> _dt.date:
    """First day of the month of ``day``."""
    return _dt.date(day.year, day.month, 1)


def month_end(day: _dt.date) -> _dt.date:
    """Last day of the month of ``day``."""
    return _dt.date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])


def _step(day: _dt.date, step: str, direction: int) -> _dt.date:
    if step == "day":
        return day + _dt.timedelta(days=direction)
    if direction < 0:
        return month_start(month_start(day) - _dt.timedelta(days=1))
    return month_end(month_end(day) + _dt.timedelta(days=1))


# --------------------------------------------------------------------------------------------
# Consistent perturbation (the cell key method)
# --------------------------------------------------------------------------------------------

#: Noise by cell key (sixteenths): 0 with probability 6/16, +-1 with 3/16, +-2 with 2/16.
NOISE_TABLE = np.array([-2, -2, -1, -1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2], dtype=np.int64)


class CellKey:
    """Consistent noise for displayed counts (after the ABS cell key method).

    Every patient gets a secret, uniform key in [0, 1) (a keyed BLAKE2b hash of the patient
    id). A count's *cell key* is the fractional part of the sum of the keys of the patients
    it counts; the noise (-2 .. +2, mean 0) is looked up from the cell key. The same
    patients therefore always give the same noise, whatever query produced them, and two
    counts that differ by a few patients get independent noise. Counts at or above the
    floor stay at or above it. Density grids get noise keyed by their neighbourhood's
    content (:meth:`perturb_grid`).

    Parameters
    ----------
    secret
        The key (16 to 64 bytes). Keep it for the life of the data (the server stores one
        next to its snapshot): a new key gives the same query new noise, which an attacker
        could average.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        key = secrets.token_bytes(32) if secret is None else bytes(secret)
        if not 16 <= len(key) <= 64:
            raise ValueError("the perturbation key must be 16 to 64 bytes")
        self._key = key
        self._lock = threading.Lock()
        self._cache: dict[int, float] = {}
        kernel_rng = np.random.default_rng(int.from_bytes(self._digest(b"kernel"), "little"))
        self._kernel = kernel_rng.random((7, 7))
        self._offset = kernel_rng.random()

    def __repr__(self) -> str:  # never show the key
        return "CellKey(<secret>)"

    def _digest(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._key, digest_size=8, person=b"tpmap-cellkey").digest()

    def patient_keys(self, patient_ids: np.ndarray) -> np.ndarray:
        """The secret key in [0, 1) of each patient id."""
        ids = np.asarray(patient_ids, dtype=np.int64)
        uniques, inverse = _unique_inverse(ids)
        with self._lock:
            missing = [int(u) for u in uniques if int(u) not in self._cache]
            for u in missing:
                self._cache[u] = int.from_bytes(self._digest(str(u).encode()), "little") / 2.0**64
            keys = np.array([self._cache[int(u)] for u in uniques], dtype=float)
        return keys[inverse]

    def noise(self, cell_keys: np.ndarray) -> np.ndarray:
        """The noise for each cell key."""
        index = np.floor(np.mod(cell_keys, 1.0) * len(NOISE_TABLE)).astype(np.int64)
        return NOISE_TABLE[np.clip(index, 0, len(NOISE_TABLE) - 1)]

    def perturb(self, counts: np.ndarray, cell_keys: np.ndarray, floor: int) -> np.ndarray:
        """Counts plus their noise; counts at or above ``floor`` never drop below it."""
        counts = np.asarray(counts, dtype=np.int64)
        noisy = counts + self.noise(cell_keys)
        return np.where(counts >= floor, np.maximum(noisy, floor), np.maximum(noisy, 0))

    def count(self, patient_ids: np.ndarray, floor: int) -> int:
        """The perturbed number of distinct patients among ``patient_ids``."""
        ids = pd.unique(np.asarray(patient_ids))
        key = float(self.patient_keys(ids).sum())
        return int(self.perturb(np.array([len(ids)]), np.array([key]), floor)[0])

    def perturb_table(
        self,
        table: pd.DataFrame,
        marks: pd.DataFrame,
        keys: list[str],
        n_cohort: int,
        cohort: pd.DataFrame,
        *,
        floor: int,
    ) -> tuple[pd.DataFrame, int]:
        """Perturb ``n_patients`` and ``n_marks`` of a per-muscle table, and the cohort size."""
        out = table.copy()
        if len(out):
            cells, labels, patients = cell_patient_pairs(marks, keys)
            sums = np.bincount(cells, weights=self.patient_keys(patients), minlength=len(labels))
            lookup = {label: i for i, label in enumerate(labels)}
            rows = [lookup.get(tuple(str(v) for v in r)) for r in out[keys].itertuples(index=False)]
            cell_keys = np.array([0.0 if i is None else sums[i] for i in rows])
            out["n_patients"] = self.perturb(out["n_patients"].to_numpy(), cell_keys, floor)
            if "n_marks" in out.columns:
                # Marks: the same patients' key, shifted, so its noise is a separate draw.
                out["n_marks"] = self.perturb(
                    out["n_marks"].to_numpy(), cell_keys + 0.5, max(int(floor), 1)
                )
        n = self.count(cohort["patient_id"].to_numpy(), floor) if n_cohort else 0
        return out, n

    def perturb_grid(
        self, values: np.ndarray, weighting: str, sigma_cells: float, *, floor: int
    ) -> np.ndarray:
        """Consistent noise on a density grid's shown cells.

        The key of a cell is a secret weighted sum of the values around it (7 x 7 cells), so
        it changes when the patients near the cell change and not otherwise. Patient maps
        (counts) get -2 .. +2 patients and stay at or above the floor; smoothed maps get the
        same in units of one mark's (or one patient's) peak smoothed value.
        """
        shown = np.isfinite(values)
        filled = np.where(shown, values, 0.0)
        keys = ndimage.correlate(filled, self._kernel, mode="constant") + self._offset
        noise = self.noise(keys * 997.0).astype(float)
        if weighting == "patients":
            noisy = np.maximum(filled + noise, float(floor))
        else:
            peak = 1.0 / (2.0 * math.pi * max(sigma_cells, 1e-9) ** 2)
            noisy = np.maximum(filled + noise * peak, 0.0)
        return np.where(shown, noisy, np.nan)


def cell_patient_pairs(
    marks: pd.DataFrame, keys: list[str]
) -> tuple[np.ndarray, list[tuple[str, ...]], np.ndarray]:
    """The distinct (cell, patient) pairs of ``marks``, cells being the ``keys`` columns.

    Returns the cell code of each pair, the cell labels (tuples of strings) and the pair's
    patient id.
    """
    codes = []
    labels = []
    for column in keys:
        c, lab = category_codes(marks[column])
        codes.append(c.astype(np.int64))
        labels.append(lab)
    cell = np.zeros(len(marks), dtype=np.int64)
    valid = np.ones(len(marks), dtype=bool)
    for c, lab in zip(codes, labels, strict=True):
        valid &= c >= 0
        cell = cell * max(len(lab), 1) + np.maximum(c, 0)
    n_cells = int(np.prod([max(len(lab), 1) for lab in labels]))
    pid = marks["patient_id"].to_numpy()
    pcode, uniques = pd.factorize(pid[valid])
    key = cell[valid] * max(len(uniques), 1) + pcode
    present = np.zeros(n_cells * max(len(uniques), 1), dtype=bool)
    present[key] = True
    flat = np.flatnonzero(present)
    pair_cell, pair_patient = np.divmod(flat, max(len(uniques), 1))
    all_labels = [tuple(t) for t in itertools.product(*labels)]
    return pair_cell, all_labels, np.asarray(uniques)[pair_patient]


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values and the inverse index, by sorting (numpy's unique is slow here)."""
    codes, uniques = pd.factorize(values)
    return np.asarray(uniques), codes


# --------------------------------------------------------------------------------------------
# Differencing: query-set-size control on the cohort, its complement and its parents
# --------------------------------------------------------------------------------------------

_FILTER_WORDS = {
    "conditions": "condition",
    "sexes": "sex",
    "age_bands": "age band",
    "affected_sides": "affected side",
    "responder": "responder status",
    "clinicians": "clinician",
    "techniques": "technique",
    "ltr_grades": "twitch response",
    "tp_statuses": "trigger point status",
}
#: Filters that choose which muscles or views are drawn rather than whom: not checked.
_NOT_CHECKED = ("views", "layers", "muscles")


@dataclass(frozen=True)
class QueryCheck:
    """The verdict of :func:`check_query`.

    Attributes
    ----------
    k
        The threshold used.
    n_patients
        Distinct patients in the filtered cohort (the true count: do not display it).
    refused
        Why nothing may be shown, in plain words; None when the query may be answered.
    hidden_cells
        ``(muscle, side)`` cells whose count could be recovered by subtracting a parent
        query's or the whole cohort's: hide them (and their marks in an export).
    parents
        Number of parent queries compared.
    """

    k: int
    n_patients: int
    refused: str | None = None
    hidden_cells: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    parents: int = 0

    def raise_if_refused(self) -> None:
        """Raise :class:`DisclosureError` when the query is refused."""
        if self.refused is not None:
            raise DisclosureError(self.refused)


def _value_words(name: str, value: str) -> str:
    if name == "clinicians":
        return value
    return value.replace("_", " ")


def check_query(
    filters: Filters,
    cohort: pd.DataFrame,
    marks: pd.DataFrame,
    *,
    sessions: pd.DataFrame | None = None,
    k: int,
    fold: bool = False,
    date_step: str = "day",
    cells: bool = True,
) -> QueryCheck:
    """Query-set-size control for one query, on the *unfiltered* frames.

    Parameters
    ----------
    filters
        The query (already coarsened by the policy).
    cohort, marks, sessions
        The whole data set (:class:`Dataset` frames; the cohort with the ``responder``
        column the filter reads).
    k
        The threshold.
    fold
        The marks will be folded to the affected side: bilateral episodes are left out (an
        implicit affected-side filter, checked like the others), and a left-affected
        episode's marks count on the mirrored side.
    date_step
        How far a date filter can move: ``"day"`` or ``"month"``.
    cells
        Also check each ``(muscle, side)`` cell (for tables, maps per muscle and exports).

    Returns
    -------
    QueryCheck
        ``refused`` when the filtered cohort has fewer than ``k`` patients, when it leaves
        out between 1 and ``k - 1`` patients of the whole cohort, or when widening one
        filter by one value (adding a condition, a clinician, a sex, an age band, a
        responder status...) or moving a date one step outward would add between 1 and
        ``k - 1`` patients. ``hidden_cells``: the muscles where the same comparisons, made
        on the patients marked in the muscle, differ by between 1 and ``k - 1`` patients.
    """
    if fold:
        sides = ("left", "right")
        wanted = (
            sides
            if filters.affected_sides is None
            else tuple(s for s in filters.affected_sides if s in sides)
        )
        filters = replace(filters, affected_sides=wanted)
    ev = Evaluation(filters, cohort, marks, sessions)
    patients = _PatientCodes(cohort, marks, ev)
    q_cohort = ev.cohort_mask()
    in_q = patients.present(patients.cohort[q_cohort])
    n_q = int(in_q.sum())
    n_all = int(patients.present(patients.cohort).sum())
    if n_q < k:
        return QueryCheck(
            k,
            n_q,
            f"Fewer than {k} patients match these filters, so nothing is shown. Widen the filters.",
        )
    left_out = n_all - n_q
    if 0 < left_out < k:
        return QueryCheck(
            k,
            n_q,
            f"These filters leave out fewer than {k} patients of the whole cohort: comparing "
            "them with the unfiltered view would show those few patients. Widen or remove a "
            "filter.",
        )

    n_parents = 0
    # Parents on the cohort: one episode or session filter widened by one value.
    for name, dim in ev.dims.items():
        if dim.level == "mark" or name in _NOT_CHECKED:
            continue
        added, labels = _added_patients_cohort(ev, name, patients, in_q)
        n_parents += len(labels)
        for label, n in zip(labels, added, strict=True):
            if 0 < n < k:
                return QueryCheck(
                    k,
                    n_q,
                    f"Adding {_value_words(name, label)} to the {_FILTER_WORDS[name]} filter "
                    f"would add fewer than {k} patients: comparing the two would show those "
                    f"few patients. Include {_value_words(name, label)} as well, or choose "
                    "other filters.",
                )
    # Parents on the cohort: the date range moved outward by one step.
    for which, days in _date_parents(filters, date_step):
        n_parents += 1
        parent = ev.cohort_mask(days=days)
        n_added = int((patients.present(patients.cohort[parent]) & ~in_q).sum())
        if 0 < n_added < k:
            return QueryCheck(
                k,
                n_q,
                f"Moving the {which} of the period one {date_step} outward would add fewer "
                f"than {k} patients: comparing the two would show those few patients. "
                f"Choose a wider period.",
            )
    if not cells:
        return QueryCheck(k, n_q, None, frozenset(), n_parents)

    hidden = _hidden_cells(ev, filters, patients, k, fold, date_step)
    return QueryCheck(k, n_q, None, frozenset(hidden), n_parents)


class _PatientCodes:
    """Dense codes for every patient of the data set, per cohort row, mark and session."""

    def __init__(self, cohort: pd.DataFrame, marks: pd.DataFrame, ev: Evaluation) -> None:
        ids = np.concatenate([cohort["patient_id"].to_numpy(), marks["patient_id"].to_numpy()])
        codes, uniques = pd.factorize(ids)
        self.n = len(uniques)
        self.cohort = codes[: len(cohort)]
        self.marks = codes[len(cohort) :]
        self.sessions: np.ndarray | None = None
        if ev.session_filter:
            sess_ids = ev.sessions["patient_id"].to_numpy()
            index = pd.Index(uniques)
            self.sessions = index.get_indexer(sess_ids)

    def present(self, codes: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        out[codes[codes >= 0]] = True
        return out


def _date_parents(filters: Filters, step: str) -> list[tuple[str, tuple[int | None, int | None]]]:
    from tpmap.research._frames import to_days

    low = None if filters.date_from is None else to_days(filters.date_from)
    high = None if filters.date_to is None else to_days(filters.date_to)
    out: list[tuple[str, tuple[int | None, int | None]]] = []
    if filters.date_from is not None:
        out.append(("start", (to_days(_step(filters.date_from, step, -1)), high)))
    if filters.date_to is not None:
        out.append(("end", (low, to_days(_step(filters.date_to, step, +1)))))
    return out


def _count_new(
    value: np.ndarray, key: np.ndarray, seen: np.ndarray, n_values: int, n_keys_per_value: int
) -> np.ndarray:
    """Per value: distinct keys not in ``seen`` (keys are ints < len(seen))."""
    new = ~seen[key]
    value, key = value[new], key[new]
    if not len(key):
        return np.zeros(n_values, dtype=np.int64)
    combined = np.sort(value.astype(np.int64) * n_keys_per_value + key)
    first = np.ones(len(combined), dtype=bool)
    first[1:] = combined[1:] != combined[:-1]
    return np.bincount(combined[first] // n_keys_per_value, minlength=n_values)


def _added_patients_cohort(
    ev: Evaluation, name: str, patients: _PatientCodes, in_q: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Patients each unselected value of filter ``name`` would add to the cohort."""
    dim = ev.dims[name]
    override: Mapping[str, np.ndarray | None] = {name: None}
    others = ~dim.selected
    if dim.level == "episode":
        rest = ev.cohort_mask(override)
        codes, rows_patients = dim.codes, patients.cohort
    else:
        episodes_ok = ev.episode_mask()
        rest = ev.session_mask(override) & np.append(episodes_ok, False)[ev.session_row]
        # A session-level filter is why the sessions' patient codes were made.
        assert patients.sessions is not None
        codes, rows_patients = dim.codes, patients.sessions
    cand = rest & (codes >= 0) & np.append(others, False)[codes]
    counts = _count_new(codes[cand], rows_patients[cand], in_q, len(dim.labels), patients.n)
    chosen = np.flatnonzero(others)
    return counts[chosen], tuple(dim.labels[i] for i in chosen)


def _mark_cells(ev: Evaluation, fold: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A (muscle, side) cell code per mark (sides mirrored for left-affected episodes)."""
    marks = ev.marks
    muscle_codes, muscles = category_codes(marks["muscle"])
    side = marks["side"].astype(SIDE_DTYPE).cat.codes.to_numpy().astype(np.int64)
    if fold:
        affected = ev.cohort["affected_side"].astype(str).to_numpy()
        left = np.append(affected == "left", False)[ev.mark_row]
        side = np.where(left & (side >= 0), 1 - side, side)
    n_sides = len(SIDE_DTYPE.categories)
    valid = (muscle_codes >= 0) & (side >= 0)
    cell = np.where(valid, muscle_codes.astype(np.int64) * n_sides + side, -1)
    labels = [(m, str(s)) for m in muscles for s in SIDE_DTYPE.categories]
    return cell, labels


def _hidden_cells(
    ev: Evaluation,
    filters: Filters,
    patients: _PatientCodes,
    k: int,
    fold: bool,
    date_step: str,
) -> set[tuple[str, str]]:
    """Cells whose patients differ from the whole data set's or a parent's by 1 to k-1."""
    cell, labels = _mark_cells(ev, fold)
    n_cells = len(labels)
    valid = cell >= 0
    pat = patients.marks
    q = ev.marks_mask() & valid
    seen = np.zeros(n_cells * patients.n, dtype=bool)
    seen[cell[q] * patients.n + pat[q]] = True
    bad = np.zeros(n_cells, dtype=bool)

    def flag(added: np.ndarray) -> None:
        bad[(added > 0) & (added < k)] = True

    # The complement: patients marked in the cell whom the query leaves out.
    flag(_new_per_cell(cell, pat, valid & ~q, seen, patients.n, n_cells))
    for name, dim in ev.dims.items():
        if name in _NOT_CHECKED:
            continue
        rest = ev.marks_mask({name: None}) & valid
        codes = ev.mark_codes(name)
        cand = rest & (codes >= 0) & np.append(~dim.selected, False)[codes]
        if cand.any():
            for added in _new_per_value_cell(
                codes[cand], cell[cand], pat[cand], seen, patients.n, n_cells
            ):
                flag(added)
    for _which, days in _date_parents(filters, date_step):
        parent = ev.marks_mask(days=days) & valid & ~q
        flag(_new_per_cell(cell, pat, parent, seen, patients.n, n_cells))
    return {labels[i] for i in np.flatnonzero(bad)}


def _new_per_cell(
    cell: np.ndarray, pat: np.ndarray, mask: np.ndarray, seen: np.ndarray, n: int, n_cells: int
) -> np.ndarray:
    """Per cell: distinct patients of the masked marks not already seen in that cell."""
    key = cell[mask].astype(np.int64) * n + pat[mask]
    key = key[~seen[key]]
    if not len(key):
        return np.zeros(n_cells, dtype=np.int64)
    added = np.zeros(len(seen), dtype=bool)
    added[key] = True  # a presence table: distinct without sorting
    return added.reshape(n_cells, n).sum(axis=1)


def _new_per_value_cell(
    value: np.ndarray, cell: np.ndarray, pat: np.ndarray, seen: np.ndarray, n: int, n_cells: int
) -> np.ndarray:
    """Per (value, cell): distinct patients not already seen in that cell."""
    key = cell.astype(np.int64) * n + pat
    new = ~seen[key]
    value, key = value[new].astype(np.int64), key[new]
    if not len(key):
        return np.zeros((0, n_cells), dtype=np.int64)
    n_values = int(value.max()) + 1
    span = n_cells * n
    if n_values * span <= 1 << 26:
        added = np.zeros(n_values * span, dtype=bool)
        added[value * span + key] = True
        return added.reshape(n_values, n_cells, n).sum(axis=2)
    combined = np.sort(value * span + key)
    first = np.ones(len(combined), dtype=bool)
    first[1:] = combined[1:] != combined[:-1]
    combined = combined[first]
    value_cell = (combined // span) * n_cells + (combined % span) // n
    return np.bincount(value_cell, minlength=n_values * n_cells).reshape(n_values, n_cells)
