"""Tests of tpmap.research: the numbers a researcher would check by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tpmap import research
from tpmap.research import (
    Filters,
    GridSpec,
    attach_responders,
    bin_counts,
    compact_marks,
    compare_groups,
    days_to_dates,
    deidentify,
    density_grid,
    difference_grid,
    fold_to_affected_side,
    muscle_table,
    responders,
    to_days,
    wilson_interval,
)

BOUNDS = (-25.0, 0.0, 25.0, 120.0)


def make_marks(rows: list[dict]) -> pd.DataFrame:
    """Compact marks from short dicts; unspecified fields get harmless defaults."""
    defaults = {
        "session_id": 1,
        "view": "anterior",
        "layer": "superficial",
        "x": 0.0,
        "y": 60.0,
        "muscle": "vmo",
        "side": "right",
        "technique": "static",
        "ltr_grade": "none",
        "tp_status": "active",
        "session_date": "2024-03-01",
    }
    return compact_marks(pd.DataFrame([{**defaults, **row} for row in rows]))


def make_cohort(n: int = 10, **columns) -> pd.DataFrame:
    base = {
        "patient_id": np.arange(1, n + 1),
        "sex": ["female"] * n,
        "birth_year": [1990] * n,
        "condition": ["patellofemoral_pain"] * n,
        "affected_side": ["right"] * n,
    }
    base.update(columns)
    return pd.DataFrame(base)


@pytest.fixture
def ten() -> tuple[pd.DataFrame, pd.DataFrame]:
    """10 patients. Right VMO: patients 1-6 (patient 1 three times); left VMO: 7-8;
    right gluteus medius: 1-5; patients 9 and 10 have no marks at all."""
    rows = [{"patient_id": p, "x": -8.0, "y": 55.0} for p in range(1, 7)]
    rows += [{"patient_id": 1, "x": -8.2, "y": 55.3}] * 2
    rows += [{"patient_id": p, "x": 8.0, "y": 55.0, "side": "left"} for p in (7, 8)]
    rows += [
        {"patient_id": p, "view": "posterior", "x": 12.0, "y": 95.0, "muscle": "gluteus_medius"}
        for p in range(1, 6)
    ]
    return make_marks(rows), make_cohort(10)


# ---------------------------------------------------------------------------- compact layout


def test_compact_marks_is_at_most_32_bytes_per_mark():
    rng = np.random.default_rng(1)
    n = 100_000  # large enough that the per-frame category tables are amortised
    raw = pd.DataFrame(
        {
            "patient_id": rng.integers(1, 5000, n),
            "session_id": rng.integers(1, 50000, n),
            "episode_id": rng.integers(1, 8000, n),
            "view": rng.choice(research.VIEWS, n),
            "layer": rng.choice(["superficial", "deep"], n),
            "x": rng.normal(0, 10, n),
            "y": rng.uniform(0, 120, n),
            "muscle": rng.choice([f"muscle_{i}" for i in range(30)], n),
            "side": rng.choice(["left", "right"], n),
            "technique": rng.choice(["static", "pistoning", "electrical"], n),
            "ltr_grade": rng.choice(["none", "weak", "medium", "strong"], n),
            "tp_status": rng.choice(["active", "latent"], n),
            "clinician": rng.choice(["ann", "bob", "cat"], n),
            "session_date": pd.Timestamp("2023-01-01")
            + pd.to_timedelta(rng.integers(0, 700, n), "D"),
            "note": ["free text"] * n,
        }
    )
    marks = compact_marks(raw)
    assert marks.memory_usage(deep=True).sum() / n <= 32
    assert marks.drop(columns="clinician").memory_usage(deep=True).sum() / n < 27.1
    assert "note" not in marks and "episode_id" not in marks
    assert marks["x"].dtype == np.float32 and marks["patient_id"].dtype == np.int32
    assert list(marks["view"].cat.categories) == list(research.VIEWS)
    # session_date is int32 days since 1970 and converts back exactly.
    back = days_to_dates(marks["session_date"])
    assert (back == raw["session_date"]).all()


def test_compact_marks_refuses_unknown_view_and_missing_columns():
    with pytest.raises(ValueError, match="view"):
        make_marks([{"patient_id": 1, "view": "front"}])
    with pytest.raises(KeyError):
        compact_marks(pd.DataFrame({"patient_id": [1]}))


def test_to_days():
    assert to_days("1970-01-01") == 0
    assert to_days(pd.Timestamp("2024-01-01 15:00")) == 19723


# ---------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (5, 10), (1, 7), (3, 250), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(ci.low, abs=1e-12)
    assert high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_known_values_and_empty():
    low, high = wilson_interval(np.array([0, 10]), 10)
    assert low[0] == 0 and high[0] == pytest.approx(0.2775, abs=1e-4)
    assert high[1] == 1 and low[1] == pytest.approx(0.7225, abs=1e-4)
    assert np.isnan(wilson_interval(0, 0)[0])


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_property(kn):
    k, n = kn
    low, high = wilson_interval(k, n)
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    assert 0 <= low <= k / n <= high <= 1
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_muscle_table_denominator_includes_patients_without_marks(ten):
    marks, cohort = ten
    table = muscle_table(marks, cohort, min_patients=5)
    vmo = table.set_index(["muscle", "side"]).loc[("vmo", "right")]
    assert vmo["n_cohort"] == 10  # patients 9 and 10 have no marks and still count
    assert vmo["n_patients"] == 6 and vmo["n_marks"] == 8
    assert vmo["pct"] == pytest.approx(60.0)
    ci = stats.binomtest(6, 10).proportion_ci(method="wilson")
    assert vmo["ci_low"] == pytest.approx(100 * ci.low)
    assert vmo["ci_high"] == pytest.approx(100 * ci.high)
    assert table.attrs["n_cohort"] == 10


def test_muscle_table_suppresses_small_cells(ten):
    marks, cohort = ten
    table = muscle_table(marks, cohort, min_patients=5)
    # Left VMO has 2 patients: not displayed, not exportable.
    assert set(zip(table["muscle"], table["side"], strict=True)) == {
        ("vmo", "right"),
        ("gluteus_medius", "right"),
    }
    assert table.attrs["n_suppressed"] == 1
    assert len(muscle_table(marks, cohort, min_patients=7)) == 0
    assert len(muscle_table(marks, cohort, min_patients=1)) == 3


def test_muscle_table_pooled_over_sides(ten):
    marks, cohort = ten
    table = muscle_table(marks, cohort, by_side=False, min_patients=5).set_index("muscle")
    assert "side" not in table.columns
    assert table.loc["vmo", "n_patients"] == 8  # 1-6 right plus 7-8 left
    assert table.loc["vmo", "pct"] == pytest.approx(80.0)


def test_muscle_table_ignores_marks_outside_the_cohort(ten):
    marks, cohort = ten
    table = muscle_table(marks, cohort[cohort["patient_id"] > 3], min_patients=1)
    vmo = table.set_index(["muscle", "side"]).loc[("vmo", "right")]
    assert vmo["n_patients"] == 3 and vmo["n_cohort"] == 7


# ---------------------------------------------------------------------------- filters


def test_patient_filters_shrink_the_cohort_and_the_marks(ten):
    marks, cohort = ten
    cohort = cohort.assign(sex=["female"] * 5 + ["male"] * 5)
    c, m = Filters(sexes=["male"]).apply(cohort, marks)
    assert set(c["patient_id"]) == {6, 7, 8, 9, 10}
    assert set(m["patient_id"]) == {6, 7, 8}
    assert muscle_table(m, c, min_patients=1).attrs["n_cohort"] == 5


def test_mark_filters_keep_the_denominator(ten):
    marks, cohort = ten
    c, m = Filters(views=["posterior"]).apply(cohort, marks)
    assert len(c) == 10 and set(m["muscle"]) == {"gluteus_medius"}
    c, m = Filters(date_from="2024-03-02").apply(cohort, marks)
    assert len(c) == 10 and m.empty
    c, m = Filters(date_from="2024-03-01", date_to="2024-03-01").apply(cohort, marks)
    assert len(m) == len(marks)  # the window is inclusive


def test_age_bands_use_the_index_date():
    cohort = make_cohort(
        4,
        birth_year=[2000, 1990, 1960, 1940],
        index_date=pd.to_datetime(["2024-01-01", "2024-06-01", "2024-01-01", "2016-01-01"]),
    )
    marks = make_marks([{"patient_id": p} for p in range(1, 5)])
    # Ages 24, 34, 64, 76.
    c, m = Filters(age_bands=["18-29", "75+"]).apply(cohort, marks)
    assert list(c["patient_id"]) == [1, 4] and list(m["patient_id"]) == [1, 4]
    with pytest.raises(ValueError):
        Filters(age_bands=["20-30"])


def test_filter_on_missing_column_is_explicit(ten):
    marks, cohort = ten
    with pytest.raises(KeyError, match="clinician"):
        Filters(clinicians=["ann"]).apply(cohort, marks)


# ---------------------------------------------------------------------------- folding


def test_fold_moves_left_vmo_to_the_right_side():
    cohort = make_cohort(3, affected_side=["left", "right", "both"])
    marks = make_marks(
        [
            {"patient_id": 1, "x": 8.0, "side": "left"},  # anterior: patient's left is +x
            {"patient_id": 1, "view": "lateral_left", "x": 3.0, "side": "left"},
            {"patient_id": 2, "x": -8.0, "side": "right"},
            {"patient_id": 3, "x": 8.0, "side": "left"},
        ]
    )
    folded = fold_to_affected_side(marks, cohort)
    assert folded.loc[0, ["x", "side", "muscle", "view"]].tolist() == [
        -8.0,
        "right",
        "vmo",
        "anterior",
    ]
    assert folded.loc[1, ["x", "side", "view"]].tolist() == [-3.0, "right", "lateral_right"]
    # Right-affected and "both" patients stay where they were.
    pd.testing.assert_frame_equal(folded.iloc[2:], marks.iloc[2:])
    assert folded["side"].dtype == marks["side"].dtype
    assert folded["view"].dtype == marks["view"].dtype


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from(research.VIEWS),
            st.floats(-20, 20, allow_nan=False),
            st.sampled_from(["left", "right"]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_fold_twice_is_identity(rows):
    cohort = make_cohort(4, affected_side=["left", "right", "both", "left"])
    marks = make_marks([{"patient_id": p, "view": v, "x": x, "side": s} for p, v, x, s in rows])
    again = fold_to_affected_side(fold_to_affected_side(marks, cohort), cohort)
    pd.testing.assert_frame_equal(again, marks)


# ---------------------------------------------------------------------------- density grids


def random_marks(n: int, n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return make_marks(
        [
            {"patient_id": int(p), "x": float(x), "y": float(y)}
            for p, x, y in zip(
                rng.integers(1, n_patients + 1, n),
                rng.normal(0, 5, n),
                rng.normal(60, 15, n),
                strict=True,
            )
        ]
    )


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [("marks", "n_marks"), ("patient_cell", "pairs"), ("patient_normalised", "n_patients")],
)
def test_density_conserves_mass_before_masking(weighting, expected):
    marks = random_marks(400, 30)
    grid = density_grid(marks, "anterior", bounds=BOUNDS, weighting=weighting, min_patients=0)
    spec = grid.spec
    cells = ((marks["y"] - spec.y0) // spec.cell) * spec.nx + (marks["x"] - spec.x0) // spec.cell
    want = {
        "n_marks": len(marks),
        "pairs": len(set(zip(marks["patient_id"], cells, strict=True))),
        "n_patients": marks["patient_id"].nunique(),
    }[expected]
    assert grid.total_weight == pytest.approx(want)
    assert np.nansum(grid.values) == pytest.approx(want)
    assert grid.n_marks == 400 and grid.n_patients == 30


def test_patient_weighting_stops_one_patient_dominating():
    marks = make_marks(
        [{"patient_id": 1, "x": -10.0, "y": 40.0}] * 100 + [{"patient_id": 2, "x": 10.0, "y": 80.0}]
    )
    peak = {}
    for weighting in ("marks", "patient_cell", "patient_normalised"):
        grid = density_grid(marks, "anterior", bounds=BOUNDS, weighting=weighting, min_patients=0)
        a = grid.values[int(40 / 0.5), int(15 / 0.5)]  # centre of (-10, 40)
        b = grid.values[int(80 / 0.5), int(35 / 0.5)]  # centre of (10, 80)
        peak[weighting] = a / b
    assert peak["marks"] == pytest.approx(100)
    assert peak["patient_cell"] == pytest.approx(1)
    assert peak["patient_normalised"] == pytest.approx(1)


def test_density_masked_outside_the_outline():
    marks = random_marks(300, 20)
    outline = shapely.box(-10, 20, 10, 100)
    grid = density_grid(marks, "anterior", bounds=BOUNDS, mask=outline, min_patients=0)
    xs, ys = grid.spec.centres()
    inside = shapely.contains_xy(outline, xs, ys)
    assert np.isnan(grid.values[~inside]).all()
    assert np.isfinite(grid.values[inside]).all()
    same = density_grid(marks, "anterior", bounds=BOUNDS, mask=inside, min_patients=0)
    np.testing.assert_array_equal(same.values, grid.values)
    with pytest.raises(ValueError, match="shape"):
        density_grid(marks, "anterior", bounds=BOUNDS, mask=inside[1:], min_patients=0)


def test_density_only_uses_its_view_and_counts_out_of_bounds():
    marks = make_marks(
        [
            {"patient_id": 1, "x": 0.0, "y": 50.0},
            {"patient_id": 2, "x": 0.0, "y": 50.0, "view": "posterior"},
            {"patient_id": 3, "x": 40.0, "y": 50.0},
        ]
    )
    grid = density_grid(marks, "anterior", bounds=BOUNDS, weighting="marks", min_patients=0)
    assert grid.n_marks == 1 and grid.n_patients == 1 and grid.n_out_of_bounds == 1


def test_density_suppresses_areas_with_fewer_than_k_patients():
    # Four patients near (-10, 40), five near (10, 90), far apart compared with 2 sigma.
    rows = [{"patient_id": p, "x": -10.0 + 0.3 * p, "y": 40.0} for p in range(1, 5)]
    rows += [{"patient_id": p, "x": 10.0, "y": 90.0 - 0.3 * p} for p in range(5, 10)]
    rows += [{"patient_id": 1, "x": -10.0, "y": 40.0}] * 50  # many marks, still one patient
    marks = make_marks(rows)
    grid = density_grid(marks, "anterior", bounds=BOUNDS, min_patients=5)
    assert np.isnan(grid.values[80, 30])  # (-10, 40): 4 patients only
    assert np.isfinite(grid.values[178, 70]) and grid.values[178, 70] > 0  # (10, 89)
    assert grid.n_suppressed > 0
    open_grid = density_grid(marks, "anterior", bounds=BOUNDS, min_patients=4)
    assert np.isfinite(open_grid.values[80, 30])
    # Cells far from any mark are hidden too, so empty and suppressed look alike.
    assert np.isnan(grid.values[5, 5])


def brute_support(marks: pd.DataFrame, spec: GridSpec, half: int) -> np.ndarray:
    ix = ((marks["x"].to_numpy() - spec.x0) // spec.cell).astype(int)
    iy = ((marks["y"].to_numpy() - spec.y0) // spec.cell).astype(int)
    support = np.zeros(spec.shape, dtype=int)
    for pid in np.unique(marks["patient_id"]):
        hit = np.zeros(spec.shape, dtype=bool)
        sel = marks["patient_id"].to_numpy() == pid
        for i, j in zip(iy[sel], ix[sel], strict=True):
            hit[max(0, i - half) : i + half + 1, max(0, j - half) : j + half + 1] = True
        support += hit
    return support


@settings(max_examples=40, deadline=None)
@given(
    points=st.lists(
        st.tuples(
            # Patients 60-200 land in other 64-patient words of the bit-packed bitmap.
            st.one_of(st.integers(1, 12), st.integers(60, 200)),
            st.floats(0.01, 9.99, allow_nan=False),
            st.floats(0.01, 5.99, allow_nan=False),
        ),
        min_size=1,
        max_size=60,
    ),
    k=st.integers(1, 4),
    radius=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
    budget=st.sampled_from([1 << 25, 200]),  # 200 bytes: one word per chunk, several chunks
)
def test_suppression_matches_brute_force_support(points, k, radius, budget):
    marks = make_marks([{"patient_id": p, "x": x, "y": y} for p, x, y in points])
    bounds = (0.0, 0.0, 10.0, 6.0)
    original = research._BITMAP_BUDGET
    research._BITMAP_BUDGET = budget  # hypothesis and monkeypatch do not mix: restore by hand
    try:
        grid = density_grid(
            marks, "anterior", bounds=bounds, cell=1.0, min_patients=k, support_radius=radius
        )
    finally:
        research._BITMAP_BUDGET = original
    support = brute_support(marks, grid.spec, math.ceil(radius))  # whole cells, rounded up
    np.testing.assert_array_equal(np.isfinite(grid.values), support >= k)


@settings(max_examples=100, deadline=None)
@given(
    xy=st.lists(
        st.tuples(st.floats(-30, 30, allow_nan=False), st.floats(-5, 130, allow_nan=False)),
        max_size=200,
    ),
    cell=st.sampled_from([0.25, 0.5, 1.0, 2.5]),
    weighted=st.booleans(),
)
def test_binning_agrees_with_histogram2d(xy, cell, weighted):
    spec = GridSpec.from_bounds(BOUNDS, cell)
    x = np.array([p[0] for p in xy], dtype=np.float64)
    y = np.array([p[1] for p in xy], dtype=np.float64)
    keep = ~(near_edge(x, spec.x_edges) | near_edge(y, spec.y_edges))
    x, y = x[keep], y[keep]
    w = np.linspace(0.5, 2.0, len(x)) if weighted else None
    expected, _, _ = np.histogram2d(x, y, bins=[spec.x_edges, spec.y_edges], weights=w)
    np.testing.assert_allclose(bin_counts(x, y, spec, weights=w), expected.T)
    # float32 coordinates (the compact layout) bin the same, away from float32 edge ties.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    ok = ~(near_edge(x32.astype(float), spec.x_edges) | near_edge(y32.astype(float), spec.y_edges))
    expected32, _, _ = np.histogram2d(x32[ok], y32[ok], bins=[spec.x_edges, spec.y_edges])
    np.testing.assert_array_equal(bin_counts(x32[ok], y32[ok], spec), expected32.T)


def near_edge(v: np.ndarray, edges: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    return np.abs(v[:, None] - edges[None, :]).min(axis=1, initial=np.inf) < tol


def test_float32_points_just_below_an_edge_stay_in_their_cell():
    # In float32, 15.499999 + 25 rounds to 40.5: the arithmetic must be float64.
    spec = GridSpec.from_bounds(BOUNDS, 0.5)
    x, y = np.array([15.499999], dtype=np.float32), np.array([60.0], dtype=np.float32)
    counts = bin_counts(x, y, spec)
    assert counts[120, 80] == 1


def test_binning_puts_the_far_edge_in_the_last_cell_and_drops_nan():
    spec = GridSpec.from_bounds((0, 0, 2, 2), 1.0)
    counts = bin_counts(np.array([2.0, np.nan, -0.1]), np.array([2.0, 1.0, 1.0]), spec)
    assert counts[1, 1] == 1 and counts.sum() == 1


def test_grid_spec_rounds_up_to_whole_cells():
    spec = GridSpec.from_bounds((-25, 0, 25, 120), 0.5)
    assert spec.shape == (240, 100)
    assert GridSpec.from_bounds((0, 0, 1.2, 1), 0.5).nx == 3


def test_difference_grid_compares_groups_of_different_size():
    # A: 5 of 10 patients marked at one spot; B: 10 of 20 at the same spot -> no difference.
    spot = [{"x": 0.0, "y": 60.0}]
    marks_a = make_marks([{"patient_id": p, **spot[0]} for p in range(1, 6)])
    marks_b = make_marks([{"patient_id": p, **spot[0]} for p in range(1, 11)])
    cohort_a, cohort_b = make_cohort(10), make_cohort(20)
    diff = difference_grid(marks_a, cohort_a, marks_b, cohort_b, "anterior", bounds=BOUNDS)
    assert diff.n_cohort_a == 10 and diff.n_cohort_b == 20
    assert np.nanmax(np.abs(diff.values)) == pytest.approx(0, abs=1e-12)
    # With only 10 patients in B's cohort, B has 100 % marked and A half as much.
    diff = difference_grid(marks_a, cohort_a, marks_b, make_cohort(10), "anterior", bounds=BOUNDS)
    centre = diff.values[120, 50]
    a_peak = diff.a.values[120, 50]
    assert centre == pytest.approx(100 * a_peak / 10 - 100 * diff.b.values[120, 50] / 10)
    assert centre < 0
    # Cells suppressed in either group are hidden in the difference.
    small_b = make_marks([{"patient_id": p, **spot[0]} for p in range(1, 4)])
    diff = difference_grid(marks_a, cohort_a, small_b, cohort_b, "anterior", bounds=BOUNDS)
    assert np.isnan(diff.values).all()


# ---------------------------------------------------------------------------- responders


def outcome_rows(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["patient_id", "episode_id", "instrument", "score", "date"]
    ).assign(date=lambda d: pd.to_datetime(d["date"]))


def test_responders_use_the_instrument_direction():
    outcomes = outcome_rows(
        [
            (1, 1, "nprs", 7, "2024-01-01"),
            (1, 1, "nprs", 6, "2024-01-15"),
            (1, 1, "nprs", 5, "2024-02-01"),  # 7 -> 5: down 2 = responder (lower is better)
            (2, 2, "nprs", 3, "2024-01-01"),
            (2, 2, "nprs", 6, "2024-02-01"),  # got worse
            (3, 3, "kujala", 60, "2024-01-01"),
            (3, 3, "kujala", 70, "2024-03-01"),  # +10 = responder (higher is better)
            (4, 4, "kujala", 60, "2024-01-01"),
            (4, 4, "kujala", 69.5, "2024-03-01"),
            (5, 5, "kujala", 80, "2024-01-01"),
            (5, 5, "kujala", 60, "2024-03-01"),  # -20: a drop is not an improvement
        ]
    )
    nprs = responders(outcomes, instrument="nprs").set_index("patient_id")
    assert nprs.loc[1, "improvement"] == 2 and nprs.loc[1, "status"] == "responder"
    assert nprs.loc[2, "improvement"] == -3 and nprs.loc[2, "status"] == "non_responder"
    kujala = responders(outcomes, instrument="kujala").set_index("patient_id")
    assert kujala["status"].astype(str).to_dict() == {
        3: "responder",
        4: "non_responder",
        5: "non_responder",
    }
    lenient = responders(outcomes, instrument="kujala", mcid=9).set_index("patient_id")
    assert lenient.loc[4, "status"] == "responder"
    assert responders(outcomes, instrument="womac_function").empty


def test_missing_follow_up_is_unknown_not_non_response():
    outcomes = outcome_rows(
        [
            (1, 1, "vas", 8, "2024-01-01"),  # baseline only
            (2, 2, "vas", 8, "2024-01-01"),
            (2, 2, "vas", 8, "2024-01-01"),  # two scores, same day: no follow-up
            (3, 3, "vas", 8, "2024-01-01"),
            (3, 3, "vas", np.nan, "2024-02-01"),  # follow-up missing
        ]
    )
    result = responders(outcomes, instrument="vas")
    assert (result["status"] == "unknown").all()
    assert result["improvement"].isna().all()
    cohort = attach_responders(make_cohort(4), result)
    assert (cohort["responder"] == "unknown").all()  # patient 4 has no outcomes at all
    with pytest.raises(ValueError, match="instrument"):
        responders(outcomes, instrument="pain")


def test_attach_responders_takes_the_latest_known_episode():
    outcomes = outcome_rows(
        [
            (1, 1, "lefs", 30, "2022-01-01"),
            (1, 1, "lefs", 50, "2022-03-01"),  # responder in 2022
            (1, 2, "lefs", 40, "2024-01-01"),
            (1, 2, "lefs", 42, "2024-03-01"),  # non-responder in 2024: this one counts
            (1, 3, "lefs", 40, "2025-01-01"),  # unknown: ignored
            (2, 4, "lefs", 30, "2024-01-01"),
            (2, 4, "lefs", 39, "2024-03-01"),  # +9 = responder
        ]
    )
    cohort = attach_responders(make_cohort(3), responders(outcomes, instrument="lefs"))
    assert cohort["responder"].astype(str).tolist() == ["non_responder", "responder", "unknown"]
    c, _ = Filters(responder="responder").apply(cohort, make_marks([{"patient_id": 1}]))
    assert c["patient_id"].tolist() == [2]


def test_mcid_table_matches_the_anatomy_reference():
    expected = {
        "nprs": 2,
        "vas": 2,
        "kujala": 10,
        "akps": 10,
        "lefs": 9,
        "womac_function": 12.5,
        "koos_pain": 15,
        "koos_symptoms": 12.5,
        "koos_adl": 15.5,
        "koos_sport": 17.5,
        "koos_qol": 12.5,
    }
    assert {k: v.mcid for k, v in research.INSTRUMENTS.items()} == expected
    lower = {k for k, v in research.INSTRUMENTS.items() if v.lower_is_better}
    assert lower == {"nprs", "vas", "womac_function"}


# ---------------------------------------------------------------------------- comparisons


@pytest.fixture
def groups():
    """A: 20 patients, 12 marked in right VMO, 6 in TFL, 2 in soleus.
    B: 30 patients, 6 in right VMO, 7 in TFL, 9 in soleus."""

    def marks_for(counts: dict[str, int], offset: int) -> pd.DataFrame:
        rows = []
        for muscle, n in counts.items():
            rows += [{"patient_id": offset + p, "muscle": muscle} for p in range(1, n + 1)]
        return make_marks(rows)

    marks_a = marks_for({"vmo": 12, "tensor_fasciae_latae": 6, "soleus": 2}, 0)
    marks_b = marks_for({"vmo": 6, "tensor_fasciae_latae": 7, "soleus": 9}, 100)
    cohort_a = make_cohort(20)
    cohort_b = make_cohort(30).assign(patient_id=lambda d: d["patient_id"] + 100)
    return marks_a, cohort_a, marks_b, cohort_b


def test_compare_groups_fisher_and_denominators(groups):
    table = compare_groups(*groups, min_patients=5).set_index("muscle")
    vmo = table.loc["vmo"]
    assert (vmo["a"], vmo["n_a"], vmo["b"], vmo["n_b"]) == (12, 20, 6, 30)
    assert vmo["pct_a"] == pytest.approx(60) and vmo["pct_b"] == pytest.approx(20)
    assert vmo["diff"] == pytest.approx(40)
    assert vmo["p"] == pytest.approx(stats.fisher_exact([[12, 8], [6, 24]]).pvalue)
    assert vmo["diff_low"] < 40 < vmo["diff_high"]
    # Soleus (2 patients in A) is suppressed but stays in the multiple-testing family.
    assert "soleus" not in table.index
    assert table.attrs["n_tests"] == 3 and table.attrs["n_suppressed"] == 1


def test_bh_q_values_are_monotone_and_at_least_p(groups):
    table = compare_groups(*groups, min_patients=1).sort_values("p")
    assert (table["q"] >= table["p"] - 1e-15).all()
    assert table["q"].is_monotonic_increasing
    assert (table["q"] <= 1).all()
    p = table["p"].to_numpy()
    m = len(p)
    # By hand: q_(i) = min_{j >= i} p_(j) * m / j.
    by_hand = np.minimum.accumulate((p * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(table["q"], np.minimum(by_hand, 1))


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 vs 48/80, method 10.
    marks_a = make_marks([{"patient_id": p} for p in range(1, 57)])
    marks_b = make_marks([{"patient_id": 1000 + p} for p in range(1, 49)])
    cohort_a = make_cohort(70)
    cohort_b = make_cohort(80).assign(patient_id=lambda d: d["patient_id"] + 1000)
    row = compare_groups(marks_a, cohort_a, marks_b, cohort_b).iloc[0]
    assert row["diff"] == pytest.approx(20)
    assert row["diff_low"] == pytest.approx(5.24, abs=0.01)
    assert row["diff_high"] == pytest.approx(33.39, abs=0.01)


def test_compare_groups_pooled_over_sides(groups):
    marks_a, cohort_a, marks_b, cohort_b = groups
    table = compare_groups(marks_a, cohort_a, marks_b, cohort_b, by_side=False)
    assert "side" not in table.columns and set(table["muscle"]) == {"vmo", "tensor_fasciae_latae"}


# ---------------------------------------------------------------------------- de-identification


def test_deidentify_drops_identifiers_and_hashes_ids():
    frame = pd.DataFrame(
        {
            "patient_id": [1, 1, 2],
            "session_id": [1, 2, 3],
            "patient_code": ["PX-1", "PX-1", "PX-2"],
            "note": ["told me about her divorce", "", ""],
            "muscle": ["vmo", "vmo", "soleus"],
        }
    )
    out = deidentify(frame)
    assert "note" not in out and "patient_code" not in out
    assert out["muscle"].tolist() == ["vmo", "vmo", "soleus"]
    ids = out["patient_id"].tolist()
    assert ids[0] == ids[1] != ids[2]
    assert not {"1", "2"} & set(ids) and all(len(i) == 16 for i in ids)
    # Patient 1 and session 1 do not share a pseudonym.
    assert out["session_id"].iloc[0] != out["patient_id"].iloc[0]
    # A fresh salt each export: the pseudonyms differ; a shared salt keeps them.
    assert deidentify(frame)["patient_id"].iloc[0] != ids[0]
    salt = b"0123456789abcdef"
    assert deidentify(frame, salt=salt).equals(deidentify(frame, salt=salt))
    assert not deidentify(frame, salt=salt).equals(deidentify(frame, salt=b"another salt"))
    assert frame["patient_id"].tolist() == [1, 1, 2]  # the input is untouched
