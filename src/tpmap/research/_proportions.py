"""Percentages of patients per muscle, with Wilson intervals, and two-group comparisons.

Every percentage counts *patients*: the numerator is the number of distinct patients with
at least one counted mark in the muscle, the denominator the number of distinct patients in
the (filtered) cohort, with or without marks. A patient with two episodes in the cohort
counts once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from tpmap.research._frames import member, patient_count

if TYPE_CHECKING:
    from tpmap.research._disclosure import CellKey

__all__ = [
    "BH_FAMILY",
    "compare_groups",
    "muscle_table",
    "patient_counts",
    "wilson_interval",
]

_Z95 = 1.959963984540054  # two-sided 95 % standard normal quantile

#: What the Benjamini-Hochberg family of :func:`compare_groups` is, in words.
BH_FAMILY = (
    "every muscle (and side) marked in either group on any view and layer under the same "
    "filters, including the rows hidden by small-cell suppression"
)


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


def counted_marks(marks: pd.DataFrame, cohort: pd.DataFrame) -> pd.DataFrame:
    """The marks that count for ``cohort``: those of its episodes (or patients)."""
    key = (
        "episode_id"
        if "episode_id" in cohort.columns and "episode_id" in marks.columns
        else ("patient_id")
    )
    inside = member(marks[key].to_numpy(), cohort[key].to_numpy())
    return marks if inside.all() else marks.loc[inside]


def patient_counts(
    marks: pd.DataFrame, cohort: pd.DataFrame, *, by_side: bool = True
) -> tuple[pd.DataFrame, int]:
    """Marks and distinct patients per muscle (and side) among the cohort's marks.

    Returns the counts (``muscle``, ``side``, ``n_marks``, ``n_patients``) and the number of
    distinct patients in the cohort.
    """
    from tpmap.research._disclosure import cell_patient_pairs
    from tpmap.research._filters import category_codes

    n_cohort = patient_count(cohort)
    marks = counted_marks(marks, cohort)
    keys = ["muscle", "side"] if by_side else ["muscle"]
    pair_cell, labels, _patients = cell_patient_pairs(marks, keys)
    # Marks per cell, with the same cell codes as the pairs.
    cell = np.zeros(len(marks), dtype=np.int64)
    valid = np.ones(len(marks), dtype=bool)
    for key in keys:
        codes, names = category_codes(marks[key])
        valid &= codes >= 0
        cell = cell * max(len(names), 1) + np.maximum(codes, 0)
    n_marks = np.bincount(cell[valid], minlength=len(labels))
    n_patients = np.bincount(pair_cell, minlength=len(labels))
    used = np.flatnonzero(n_marks)
    counts = pd.DataFrame([labels[i] for i in used], columns=keys)
    if counts.empty:
        counts = pd.DataFrame({key: pd.Series(dtype=str) for key in keys})
    counts["n_marks"] = n_marks[used].astype(np.int64)
    counts["n_patients"] = n_patients[used].astype(np.int64)
    return counts, n_cohort


def muscle_table(
    marks: pd.DataFrame,
    cohort: pd.DataFrame,
    *,
    by_side: bool = True,
    min_patients: int = 5,
    perturbation: CellKey | None = None,
) -> pd.DataFrame:
    """Per muscle (and side): marks, patients marked, and the percentage of the cohort.

    ``pct`` is the share of *all* cohort patients (``n_cohort``, with or without marks) who
    have at least one mark in the muscle, with its 95 % Wilson interval ``ci_low``..
    ``ci_high`` (percent). ``by_side=False`` pools both sides (a patient marked on both
    counts once). Rows backed by fewer than ``min_patients`` patients are dropped, so they
    can reach neither the screen nor an export; ``table.attrs`` records ``n_cohort``,
    ``n_suppressed`` and ``min_patients``.

    With ``perturbation`` (a :class:`~tpmap.research.CellKey`, as the web page uses) every
    count is perturbed consistently (the same patients always give the same number) and the
    percentages and intervals are computed from the perturbed counts; ``attrs["perturbed"]``
    says so. Suppression always uses the true counts.

    Examples
    --------
    >>> t = muscle_table(marks, cohort, min_patients=5)  # doctest: +SKIP
    >>> t.columns.tolist()  # doctest: +SKIP
    ['muscle', 'side', 'n_marks', 'n_patients', 'n_cohort', 'pct', 'ci_low', 'ci_high']
    """
    from tpmap.research._disclosure import check_min_patients

    check_min_patients(min_patients)
    counts, n_cohort = patient_counts(marks, cohort, by_side=by_side)
    shown = counts["n_patients"] >= min_patients
    table = counts.loc[shown].reset_index(drop=True)
    if perturbation is not None:
        counted = counted_marks(marks, cohort)
        keys = ["muscle", "side"] if by_side else ["muscle"]
        table, n_cohort = perturbation.perturb_table(
            table, counted, keys, n_cohort, cohort, floor=min_patients
        )
    table["n_cohort"] = n_cohort
    low, high = wilson_interval(table["n_patients"].to_numpy(), n_cohort)
    table["pct"] = 100.0 * table["n_patients"] / n_cohort if n_cohort else np.nan
    table["ci_low"] = 100.0 * low
    table["ci_high"] = 100.0 * high
    table = table.sort_values(["n_patients", "muscle"], ascending=[False, True], kind="stable")
    table = table.reset_index(drop=True)
    table.attrs.update(
        n_cohort=n_cohort,
        n_suppressed=int((~shown).sum()),
        min_patients=min_patients,
        perturbed=perturbation is not None,
    )
    return table


def compare_groups(
    marks_a: pd.DataFrame,
    cohort_a: pd.DataFrame,
    marks_b: pd.DataFrame,
    cohort_b: pd.DataFrame,
    *,
    by_side: bool = True,
    min_patients: int = 5,
    perturbation: CellKey | None = None,
) -> pd.DataFrame:
    """Per muscle (and side), compare the share of patients marked in groups A and B.

    For each muscle marked in either group: patients marked ``a``/``b`` out of the cohorts'
    ``n_a``/``n_b`` (all patients, with or without marks), percentages, their difference in
    percentage points with a 95 % Newcombe hybrid-score interval (``diff_low``,
    ``diff_high``: *unadjusted* for multiple comparisons), the two-sided Fisher exact p on
    the 2x2 table of patients with/without a mark, and Benjamini-Hochberg q-values (adjusted).

    The Benjamini-Hochberg family is every muscle (side) of the two frames marked in either
    group (:data:`BH_FAMILY`), *including* rows later suppressed, so hiding a row never makes
    the others look more significant. Rows where either group has fewer than
    ``min_patients`` patients marked are dropped. ``attrs`` records ``n_tests``,
    ``n_suppressed``, the cohort sizes and ``n_in_both``: patients with episodes in both
    groups (Fisher's test treats the groups as independent, so keep this at zero when it
    matters, e.g. by comparing one episode per patient).

    With ``perturbation``, counts are perturbed as in :func:`muscle_table` and every
    statistic is computed from the perturbed counts.

    Examples
    --------
    >>> cmp = compare_groups(ma, ca, mb, cb, min_patients=5)  # doctest: +SKIP
    """
    from tpmap.research._disclosure import check_min_patients

    check_min_patients(min_patients)
    keys = ["muscle", "side"] if by_side else ["muscle"]
    counts_a, n_a = patient_counts(marks_a, cohort_a, by_side=by_side)
    counts_b, n_b = patient_counts(marks_b, cohort_b, by_side=by_side)
    true_a, true_b = counts_a, counts_b
    if perturbation is not None:
        counts_a, n_a = perturbation.perturb_table(
            counts_a, counted_marks(marks_a, cohort_a), keys, n_a, cohort_a, floor=min_patients
        )
        counts_b, n_b = perturbation.perturb_table(
            counts_b, counted_marks(marks_b, cohort_b), keys, n_b, cohort_b, floor=min_patients
        )
    table = counts_a[[*keys, "n_patients"]].merge(
        counts_b[[*keys, "n_patients"]], on=keys, how="outer", suffixes=("_a", "_b")
    )
    truth = true_a[[*keys, "n_patients"]].merge(
        true_b[[*keys, "n_patients"]], on=keys, how="outer", suffixes=("_a", "_b")
    )
    truth = table[keys].merge(truth, on=keys, how="left")
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
            stats.fisher_exact(np.asarray([[ai, n_a - ai], [bi, n_b - bi]])).pvalue
            for ai, bi in zip(a, b, strict=True)
        ]
    )
    p = np.clip(p, 0.0, 1.0)
    out["p"] = p
    out["q"] = stats.false_discovery_control(p, method="bh") if len(p) else p
    ta = truth["n_patients_a"].fillna(0).to_numpy()
    tb = truth["n_patients_b"].fillna(0).to_numpy()
    shown = (ta >= min_patients) & (tb >= min_patients)
    out = out.loc[shown].sort_values(["p", "muscle"], kind="stable").reset_index(drop=True)
    both = np.intersect1d(cohort_a["patient_id"].to_numpy(), cohort_b["patient_id"].to_numpy())
    out.attrs.update(
        n_a=n_a,
        n_b=n_b,
        n_tests=len(p),
        n_suppressed=int((~shown).sum()),
        min_patients=min_patients,
        n_in_both=len(both),
        family=BH_FAMILY,
        perturbed=perturbation is not None,
    )
    return out
