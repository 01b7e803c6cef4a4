"""Tests of tpmap.research: the numbers a researcher would check by hand.

Every statistic is checked against an independent computation: scipy and statsmodels for
the intervals and tests, plain pandas on the raw rows for the tables, brute force for the
density maps.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, stats

from tpmap import research
from tpmap.research import (
    Filters,
    GridSpec,
    ResponderRule,
    attach_responders,
    bin_counts,
    compact_marks,
    compare_groups,
    days_to_dates,
    density_grid,
    difference_grid,
    fold_to_affected_side,
    muscle_table,
    responders,
    to_days,
    wilson_interval,
)

BOUNDS = (-25.0, 0.0, 25.0, 120.0)

# Tests below the disclosure floor on purpose (k = 1 ...) are analyses with direct access.
pytestmark = pytest.mark.filterwarnings("ignore::tpmap.research.DisclosureWarning")


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
    for row in rows:
        row["session_id"] = row["patient_id"]  # one session each
    return make_marks(rows), make_cohort(10)


@pytest.fixture
def two_episodes() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Patients with episodes of different conditions and knees, as :func:`load_dataset`
    builds them (a row per episode; marks carry their own session's episode).

    - patient 1: episode 11 knee OA, left knee (sessions 111 in Jan 2023, by Dr A): a mark in
      soleus (left side); episode 12 patellofemoral pain, right knee (session 121, Mar 2024,
      by Dr B): a mark in VMO (right side).
    - patient 2: episode 21 patellofemoral pain, left knee (session 211, Mar 2024, Dr A):
      VMO left side.
    - patient 3: episode 31 patellofemoral pain, right knee; one session (311, Dr B) without
      marks.
    - patient 4: episode 41 knee OA, both knees (session 411, Dr A): VMO right.
    """
    cohort = pd.DataFrame(
        {
            "patient_id": [1, 1, 2, 3, 4],
            "episode_id": [11, 12, 21, 31, 41],
            "sex": ["female", "female", "male", "female", "male"],
            "birth_year": [1960.0, 1960.0, 1990.0, 1985.0, 1950.0],
            "condition": [
                "knee_osteoarthritis",
                "patellofemoral_pain",
                "patellofemoral_pain",
                "patellofemoral_pain",
                "knee_osteoarthritis",
            ],
            "affected_side": ["left", "right", "left", "right", "both"],
            "start_date": pd.to_datetime(
                ["2023-01-01", "2024-03-01", "2024-03-01", "2024-03-05", "2024-01-01"]
            ),
        }
    )
    marks = make_marks(
        [
            {"patient_id": 1, "episode_id": 11, "session_id": 111, "muscle": "soleus",
             "view": "posterior", "x": -6.0, "y": 30.0, "side": "left",
             "session_date": "2023-01-02", "clinician": "Dr A"},
            {"patient_id": 1, "episode_id": 12, "session_id": 121, "x": -8.0, "side": "right",
             "session_date": "2024-03-02", "clinician": "Dr B"},
            {"patient_id": 2, "episode_id": 21, "session_id": 211, "x": 8.0, "side": "left",
             "session_date": "2024-03-02", "clinician": "Dr A"},
            {"patient_id": 4, "episode_id": 41, "session_id": 411, "x": -8.0, "side": "right",
             "session_date": "2024-01-03", "clinician": "Dr A"},
        ]
    )  # fmt: skip
    sessions = pd.DataFrame(
        {
            "session_id": [111, 121, 211, 311, 411],
            "episode_id": [11, 12, 21, 31, 41],
            "patient_id": [1, 1, 2, 3, 4],
            "session_date": [to_days(d) for d in
                             ("2023-01-02", "2024-03-02", "2024-03-02", "2024-03-06",
                              "2024-01-03")],
            "clinician": pd.Categorical(["Dr A", "Dr B", "Dr A", "Dr B", "Dr A"]),
        }
    )  # fmt: skip
    return cohort, marks, sessions


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

    def per_mark(frame: pd.DataFrame) -> float:
        # The per-frame constants (category labels, the index) do not grow with the marks.
        fixed = frame.iloc[:0].memory_usage(deep=True).sum()
        return (frame.memory_usage(deep=True).sum() - fixed) / len(frame)

    assert per_mark(marks) <= 32
    assert per_mark(marks.drop(columns=["clinician", "episode_id"])) <= 27
    assert "note" not in marks and marks["episode_id"].dtype == np.int32
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


@given(st.lists(st.integers(0, 2**40), max_size=300))
def test_stable_order_sorts_like_numpy(keys):
    from tpmap.research._frames import stable_order

    keys = np.array(keys, dtype=np.int64)
    np.testing.assert_array_equal(stable_order(keys), np.argsort(keys, kind="stable"))


# ---------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (5, 10), (1, 7), (3, 250), (1, 1)])
def test_wilson_matches_scipy_and_statsmodels(k, n):
    from statsmodels.stats.proportion import proportion_confint

    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(ci.low, abs=1e-12)
    assert high == pytest.approx(ci.high, abs=1e-12)
    sm_low, sm_high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (low, high) == pytest.approx((sm_low, sm_high), abs=1e-12)


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


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 12),  # patient
            st.integers(0, 2),  # episode number of the patient
            st.sampled_from(["vmo", "soleus", "adductors"]),
            st.sampled_from(["left", "right"]),
        ),
        max_size=60,
    ),
    conditions=st.lists(
        st.sampled_from(["patellofemoral_pain", "knee_osteoarthritis"]), min_size=36, max_size=36
    ),
    wanted=st.sampled_from(["patellofemoral_pain", "knee_osteoarthritis"]),
)
def test_muscle_table_matches_plain_pandas_on_the_raw_rows(rows, conditions, wanted):
    # Episodes 10*p + e; each has its own condition; percentages count distinct patients.
    cohort = pd.DataFrame(
        {
            "patient_id": [p for p in range(1, 13) for _ in range(3)],
            "episode_id": [10 * p + e for p in range(1, 13) for e in range(3)],
            "condition": conditions,
            "sex": "female",
            "birth_year": 1980.0,
            "affected_side": "right",
        }
    )
    marks = make_marks(
        [
            {"patient_id": p, "episode_id": 10 * p + e, "session_id": 10 * p + e, "muscle": m,
             "side": s}
            for p, e, m, s in rows
        ]
    ) if rows else make_marks([{"patient_id": 1, "episode_id": 10}]).iloc[:0]  # fmt: skip
    c, m = Filters(conditions=[wanted]).apply(cohort, marks)
    table = muscle_table(m, c, min_patients=1)
    # By hand: episodes of the wanted condition, their marks, distinct patients.
    episodes = set(cohort.loc[cohort["condition"] == wanted, "episode_id"])
    n = cohort.loc[cohort["episode_id"].isin(episodes), "patient_id"].nunique()
    raw = pd.DataFrame(rows, columns=["p", "e", "muscle", "side"])
    raw = raw[(10 * raw["p"] + raw["e"]).isin(episodes)]
    expected = raw.groupby(["muscle", "side"])["p"].nunique()
    got = table.set_index(["muscle", "side"])["n_patients"]
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()
    assert (table["n_cohort"] == n).all()
    if len(table):
        assert table["pct"].to_numpy() == pytest.approx(100 * table["n_patients"] / n)


# ---------------------------------------------------------------------------- the unit of analysis


def test_every_mark_counts_with_its_own_episode(two_episodes):
    cohort, marks, sessions = two_episodes
    c, m = Filters(conditions=["knee_osteoarthritis"]).apply(cohort, marks, sessions=sessions)
    # Patient 1's soleus mark belongs to her OA episode; her VMO mark to her PFP episode.
    assert set(m["muscle"].astype(str)) == {"soleus", "vmo"}
    assert set(m.loc[m["patient_id"] == 1, "muscle"].astype(str)) == {"soleus"}
    c, m = Filters(conditions=["patellofemoral_pain"]).apply(cohort, marks, sessions=sessions)
    assert set(m.loc[m["patient_id"] == 1, "muscle"].astype(str)) == {"vmo"}
    assert sorted(c["patient_id"]) == [1, 2, 3]  # patient 3 without marks still counts
    table = muscle_table(m, c, min_patients=1).set_index(["muscle", "side"])
    assert table.loc[("vmo", "right"), "n_cohort"] == 3
    assert "soleus" not in table.index.get_level_values(0)


def test_a_patient_with_two_episodes_counts_once(two_episodes):
    cohort, marks, _sessions = two_episodes
    cohort = cohort.assign(condition="patellofemoral_pain")  # both of patient 1's episodes
    marks = pd.concat([marks, marks.iloc[[1]].assign(episode_id=11)], ignore_index=True)
    table = muscle_table(marks, cohort, min_patients=1).set_index(["muscle", "side"])
    assert table.loc[("vmo", "right"), "n_cohort"] == 4  # 5 episodes, 4 patients
    assert table.loc[("vmo", "right"), "n_patients"] == 2  # patient 1 once, patient 4


def test_session_filters_restrict_the_cohort_to_patients_treated_then(two_episodes):
    cohort, marks, sessions = two_episodes
    c, m = Filters(clinicians=["Dr B"]).apply(cohort, marks, sessions=sessions)
    # Dr B treated patient 1 (PFP episode) and patient 3 (a session without marks).
    assert sorted(c["episode_id"]) == [12, 31]
    assert m["session_id"].tolist() == [121]
    table = muscle_table(m, c, min_patients=1)
    assert table["n_cohort"].tolist() == [2]
    c, m = Filters(date_from="2024-03-01", date_to="2024-03-31").apply(
        cohort, marks, sessions=sessions
    )
    assert sorted(c["episode_id"]) == [12, 21, 31]
    assert sorted(m["session_id"]) == [121, 211]
    # Mark filters keep the denominator.
    c2, m2 = Filters(techniques=["electrical"]).apply(cohort, marks, sessions=sessions)
    assert len(c2) == len(cohort) and m2.empty


def test_session_filters_without_a_sessions_frame_use_the_marks(ten):
    marks, cohort = ten
    c, m = Filters(date_from="2024-03-02").apply(cohort, marks)
    assert c.empty and m.empty  # every session was on 2024-03-01
    c, m = Filters(date_from="2024-03-01", date_to="2024-03-01").apply(cohort, marks)
    assert len(m) == len(marks) and len(c) == 8  # the window is inclusive


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


def test_filters_describe_themselves():
    f = Filters(conditions=["patellofemoral_pain"], date_from="2024-01-05", clinicians=["Dr A"])
    assert f.active() == ("conditions", "dates", "clinicians")
    assert f.describe() == {
        "conditions": ["patellofemoral_pain"],
        "date_from": "2024-01-05",
        "clinicians": ["Dr A"],
    }
    assert f.without("dates").date_from is None


# ---------------------------------------------------------------------------- folding


def test_fold_uses_each_marks_own_episode_and_keeps_bilateral_apart(two_episodes):
    cohort, marks, _ = two_episodes
    folded_cohort, folded = fold_to_affected_side(cohort, marks)
    # Patient 1's OA episode is left-affected: her soleus mark is mirrored; her PFP episode
    # is right-affected: her VMO mark stays. Patient 2 (left) is mirrored.
    by_session = folded.set_index("session_id")
    assert by_session.loc[111, ["x", "side"]].tolist() == [6.0, "right"]
    assert by_session.loc[121, ["x", "side"]].tolist() == [-8.0, "right"]
    assert by_session.loc[211, ["x", "side"]].tolist() == [-8.0, "right"]
    # Patient 4's episode affects both knees: left out of cohort and marks, and counted.
    assert 411 not in by_session.index and 4 not in set(folded_cohort["patient_id"])
    assert folded_cohort.attrs["n_bilateral"] == 1
    with pytest.raises(TypeError, match="cohort, marks"):
        fold_to_affected_side(marks, cohort)


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
    _, folded = fold_to_affected_side(cohort, marks)
    assert folded.loc[0, ["x", "side", "muscle", "view"]].tolist() == [
        -8.0,
        "right",
        "vmo",
        "anterior",
    ]
    assert folded.loc[1, ["x", "side", "view"]].tolist() == [-3.0, "right", "lateral_right"]
    # Right-affected patients stay where they were; "both" is left out.
    pd.testing.assert_frame_equal(folded.loc[[2]], marks.loc[[2]])
    assert 3 not in folded.index
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
def test_fold_twice_is_identity_for_unilateral_patients(rows):
    cohort = make_cohort(4, affected_side=["left", "right", "both", "left"])
    marks = make_marks([{"patient_id": p, "view": v, "x": x, "side": s} for p, v, x, s in rows])
    c1, once = fold_to_affected_side(cohort, marks)
    _, again = fold_to_affected_side(c1, once)
    expected = marks.loc[marks["patient_id"] != 3]
    pd.testing.assert_frame_equal(again, expected)


# ---------------------------------------------------------------------------- density maps


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


def brute_within(marks: pd.DataFrame, spec: GridSpec, radius_cells: float) -> np.ndarray:
    """Distinct patients with a mark in a cell whose centre is within the radius."""
    ix = ((marks["x"].to_numpy(dtype=float) - spec.x0) // spec.cell).astype(int)
    iy = ((marks["y"].to_numpy(dtype=float) - spec.y0) // spec.cell).astype(int)
    yy, xx = np.mgrid[0 : spec.ny, 0 : spec.nx]
    out = np.zeros(spec.shape, dtype=int)
    for pid in np.unique(marks["patient_id"]):
        sel = marks["patient_id"].to_numpy() == pid
        hit = np.zeros(spec.shape, dtype=bool)
        for i, j in zip(iy[sel], ix[sel], strict=True):
            hit |= (yy - i) ** 2 + (xx - j) ** 2 <= radius_cells**2 + 1e-9
        out += hit
    return out


def test_patient_map_counts_each_patient_once_within_the_radius():
    marks = make_marks(
        [{"patient_id": 1, "x": -10.0, "y": 40.0}] * 100
        + [{"patient_id": p, "x": -10.0 + 0.2 * p, "y": 40.0} for p in range(2, 7)]
    )
    grid = density_grid(marks, "anterior", bounds=BOUNDS, min_patients=5)
    assert grid.weighting == "patients"
    centre = grid.values[80, 30]  # the cell of (-10, 40)
    assert centre == 6  # 100 marks of patient 1 count once
    values, label = grid.display(n_cohort=12)
    assert values[80, 30] == pytest.approx(50.0)
    assert label == "% of 12 patients with a mark within 1.5 cm"
    assert np.nanmax(values) <= 100


@settings(max_examples=30, deadline=None)
@given(
    points=st.lists(
        st.tuples(
            # Patients 60-200 land in other 64-patient words of the bitmap.
            st.one_of(st.integers(1, 12), st.integers(60, 1500)),
            st.floats(0.01, 9.99, allow_nan=False),
            st.floats(0.01, 5.99, allow_nan=False),
        ),
        min_size=1,
        max_size=80,
    ),
    k=st.integers(1, 4),
    radius=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
    shuffle=st.booleans(),
)
def test_patient_map_matches_brute_force(points, k, radius, shuffle):
    marks = make_marks([{"patient_id": p, "x": x, "y": y} for p, x, y in points])
    if shuffle:  # unsorted input takes the sorting path
        marks = marks.sample(frac=1, random_state=1).reset_index(drop=True)
    bounds = (0.0, 0.0, 10.0, 6.0)
    grid = density_grid(
        marks, "anterior", bounds=bounds, cell=1.0, radius=radius, min_patients=k, dominance=1
    )
    expected = brute_within(marks, grid.spec, radius)
    shown = expected >= k
    np.testing.assert_array_equal(np.isfinite(grid.values), shown)
    np.testing.assert_array_equal(grid.values[shown], expected[shown])


def test_smoothed_support_matches_brute_force():
    rng = np.random.default_rng(4)
    marks = make_marks(
        [
            {"patient_id": int(p), "x": float(x), "y": float(y)}
            for p, x, y in zip(
                rng.integers(1, 300, 400), rng.uniform(0, 20, 400), rng.uniform(0, 20, 400),
                strict=True,
            )
        ]
    )  # fmt: skip
    bounds = (0.0, 0.0, 20.0, 20.0)
    grid = density_grid(
        marks, "anterior", bounds=bounds, weighting="marks", sigma=1.0, min_patients=3,
        dominance=1,
    )  # fmt: skip
    support = brute_within(marks, grid.spec, 2.0 / 0.5)
    np.testing.assert_array_equal(np.isfinite(grid.values), support >= 3)


@pytest.mark.parametrize("weighting", ["marks", "patient_normalised"])
def test_smoothed_maps_conserve_mass_without_an_outline(weighting):
    marks = random_marks(400, 30)
    grid = density_grid(
        marks, "anterior", bounds=BOUNDS, weighting=weighting, min_patients=0, dominance=1
    )
    want = {"marks": 400, "patient_normalised": 30}[weighting]
    assert grid.total_weight == pytest.approx(want)
    assert np.nansum(grid.values) == pytest.approx(want)
    values, label = grid.display(n_cohort=30)
    if weighting == "patient_normalised":
        # "% of patients per cm²" integrates to 100 % of the patients.
        assert np.nansum(values) * grid.spec.cell**2 == pytest.approx(100)
        assert label == "% of 30 patients per cm² (smoothed)"
    else:
        assert label == "marks per cm² (smoothed)"


def test_edge_correction_does_not_dilute_spots_at_the_outline():
    spec = GridSpec.from_bounds((0, 0, 20, 20), 0.5)
    body = shapely.box(5, 5, 15, 15)
    xs, ys = spec.centres()
    inside = shapely.contains_xy(body, xs, ys)
    # A uniform layer of marks over the body: the map must be flat, edge included.
    rows = [
        {"patient_id": i % 50 + 1, "x": float(x), "y": float(y)}
        for i, (x, y) in enumerate(zip(xs[inside], ys[inside], strict=True))
    ]
    grid = density_grid(
        make_marks(rows), "anterior", bounds=(0, 0, 20, 20), weighting="marks", mask=body,
        min_patients=0, dominance=1,
    )  # fmt: skip
    values = grid.values[inside]
    np.testing.assert_allclose(values, 1.0, rtol=1e-9)
    # Without the correction (plain smoothing, then masking) the edge would lose about half.
    plain = ndimage.gaussian_filter(inside.astype(float), 3, mode="constant")[inside]
    assert plain.min() < 0.5
    # A mark whose cell centre is just outside the outline is not lost.
    edge = make_marks([{"patient_id": 1, "x": 4.9, "y": 10.0}])
    g = density_grid(
        edge, "anterior", bounds=(0, 0, 20, 20), weighting="marks", mask=body, min_patients=0,
        dominance=1,
    )  # fmt: skip
    assert np.nansum(g.values) > 0.5


def test_patient_weighting_stops_one_patient_dominating():
    marks = make_marks(
        [{"patient_id": 1, "x": -10.0, "y": 40.0}] * 100 + [{"patient_id": 2, "x": 10.0, "y": 80.0}]
    )
    peak = {}
    for weighting in ("marks", "patients", "patient_normalised"):
        grid = density_grid(
            marks, "anterior", bounds=BOUNDS, weighting=weighting, min_patients=0, dominance=1
        )
        a = grid.values[int(40 / 0.5), int(15 / 0.5)]  # centre of (-10, 40)
        b = grid.values[int(80 / 0.5), int(35 / 0.5)]  # centre of (10, 80)
        peak[weighting] = a / b
    assert peak["marks"] == pytest.approx(100)
    assert peak["patients"] == pytest.approx(1)
    assert peak["patient_normalised"] == pytest.approx(1)


def test_dominance_hides_a_spot_one_patient_makes():
    # Six patients near (-10, 40); patient 1 alone has 60 marks there.
    rows = [{"patient_id": p, "x": -10.0 + 0.3 * p, "y": 40.0} for p in range(1, 7)]
    rows += [{"patient_id": 1, "x": -10.0, "y": 40.0}] * 60
    # Elsewhere, six patients with two marks each: nobody dominates.
    rows += [{"patient_id": p, "x": 10.0, "y": 90.0 - 0.3 * p} for p in range(1, 7)] * 2
    marks = make_marks(rows)
    grid = density_grid(marks, "anterior", bounds=BOUNDS, weighting="marks", min_patients=5)
    assert np.isnan(grid.values[80, 30])
    assert np.isfinite(grid.values[178, 70])
    assert grid.n_dominated > 0
    open_grid = density_grid(
        marks, "anterior", bounds=BOUNDS, weighting="marks", min_patients=5, dominance=1
    )
    assert np.isfinite(open_grid.values[80, 30])
    # Each patient counts once on the patient map: nobody dominates a shown spot.
    patients = density_grid(marks, "anterior", bounds=BOUNDS, min_patients=5)
    assert patients.n_dominated == 0 and np.isfinite(patients.values[80, 30])


def test_density_masked_outside_the_outline():
    marks = random_marks(300, 20)
    outline = shapely.box(-10, 20, 10, 100)
    grid = density_grid(
        marks, "anterior", bounds=BOUNDS, weighting="marks", mask=outline, min_patients=0,
        dominance=1,
    )  # fmt: skip
    xs, ys = grid.spec.centres()
    inside = shapely.contains_xy(outline, xs, ys)
    assert np.isnan(grid.values[~inside]).all()
    assert np.isfinite(grid.values[inside]).all()
    same = density_grid(
        marks, "anterior", bounds=BOUNDS, weighting="marks", mask=inside, min_patients=0,
        dominance=1,
    )  # fmt: skip
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
    for weighting in ("patients", "marks"):
        grid = density_grid(marks, "anterior", bounds=BOUNDS, weighting=weighting, dominance=1)
        assert np.isnan(grid.values[80, 30])  # (-10, 40): 4 patients only
        assert np.isfinite(grid.values[176, 70]) and grid.values[176, 70] > 0  # (10, 88)
        assert grid.n_suppressed > 0
        assert np.isnan(grid.values[5, 5])  # empty and suppressed look alike
    open_grid = density_grid(marks, "anterior", bounds=BOUNDS, min_patients=4)
    assert np.isfinite(open_grid.values[80, 30])


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


def test_binning_in_two_threads_agrees_with_one(monkeypatch):
    from tpmap.research import _density

    rng = np.random.default_rng(3)
    x = rng.uniform(-25, 25, 20_000).astype(np.float32)
    y = rng.uniform(0, 120, 20_000).astype(np.float32)
    spec = GridSpec.from_bounds(BOUNDS, 0.5)
    single = bin_counts(x, y, spec)
    monkeypatch.setattr(_density, "_PARALLEL", 1000)
    np.testing.assert_array_equal(bin_counts(x, y, spec), single)


@pytest.mark.parametrize("threads", [False, True])
def test_counting_precomputed_cells_agrees_with_bincount_across_chunks(monkeypatch, threads):
    # Many chunks (split between two threads, or not), a few marks off the grid (index
    # n_cells and above): counted as a plain bincount of the cells on the grid would count
    # them, whatever the selection.
    from tpmap.research import _density

    monkeypatch.setattr(_density, "_COUNT_CHUNK", 4096)
    monkeypatch.setattr(_density, "_PARALLEL", 1000 if threads else 10**9)
    rng = np.random.default_rng(5)
    n_cells = 24_000
    cells = rng.integers(0, n_cells + 50, 200_003).astype(np.uint16)
    positions = np.sort(rng.choice(len(cells), 90_000, replace=False))
    mask = rng.random(len(cells)) < 0.3

    def reference(picked: np.ndarray) -> np.ndarray:
        return np.bincount(picked[picked < n_cells], minlength=n_cells)

    np.testing.assert_array_equal(research.count_cells(cells, n_cells), reference(cells))
    np.testing.assert_array_equal(
        research.count_cells(cells, n_cells, positions), reference(cells[positions])
    )
    np.testing.assert_array_equal(
        research.count_cells(cells, n_cells, mask), reference(cells[mask])
    )
    assert research.count_cells(cells[:0], n_cells).sum() == 0


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
    spot = {"x": 0.0, "y": 60.0}
    marks_a = make_marks([{"patient_id": p, **spot} for p in range(1, 6)])
    marks_b = make_marks([{"patient_id": p, **spot} for p in range(1, 11)])
    cohort_a, cohort_b = make_cohort(10), make_cohort(20)
    diff = difference_grid(marks_a, cohort_a, marks_b, cohort_b, "anterior", bounds=BOUNDS)
    assert diff.n_cohort_a == 10 and diff.n_cohort_b == 20
    assert np.nanmax(np.abs(diff.values)) == pytest.approx(0, abs=1e-12)
    assert diff.label == "% points of patients with a mark within 1.5 cm"
    # With only 10 patients in B's cohort, B has 100 % marked and A half as much.
    diff = difference_grid(marks_a, cohort_a, marks_b, make_cohort(10), "anterior", bounds=BOUNDS)
    assert diff.values[120, 50] == pytest.approx(50 - 100)
    # Cells suppressed in either group are hidden in the difference.
    small_b = make_marks([{"patient_id": p, **spot} for p in range(1, 4)])
    diff = difference_grid(marks_a, cohort_a, small_b, cohort_b, "anterior", bounds=BOUNDS)
    assert np.isnan(diff.values).all()


# ---------------------------------------------------------------------------- responders


def outcome_rows(rows: list[tuple], source: str = "outcome_measures") -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["patient_id", "episode_id", "instrument", "score", "date"]
    ).assign(date=lambda d: pd.to_datetime(d["date"]), source=source)


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


def test_follow_up_comes_from_the_window_after_the_first_session():
    episodes = pd.DataFrame(
        {
            "patient_id": [1, 2, 3, 4, 5],
            "episode_id": [1, 2, 3, 4, 5],
            "first_session": pd.to_datetime(
                ["2024-01-10", "2024-01-10", "2024-01-10", "2024-01-10", None]
            ),
        }
    )
    outcomes = pd.concat(
        [
            outcome_rows(
                [
                    (1, 1, "nprs", 8, "2024-01-08"),  # baseline before the first session
                    (1, 1, "nprs", 5, "2024-02-01"),  # day 22: too early to be follow-up
                    (1, 1, "nprs", 6, "2024-03-01"),  # day 51: the follow-up, 8 -> 6
                    (2, 2, "nprs", 8, "2024-01-10"),
                    (2, 2, "nprs", 2, "2024-06-01"),  # day 143: after the window
                    (3, 3, "nprs", 5, "2024-02-20"),  # no baseline
                    (5, 5, "nprs", 5, "2024-01-01"),
                ]
            ),
            # A session's NPRS before needling counts; outcome measures win when both exist.
            outcome_rows([(1, 1, "nprs", 1, "2024-03-05"), (4, 4, "nprs", 7, "2024-01-10"),
                          (4, 4, "nprs", 4, "2024-02-20")], source="session_before"),
        ]
    )  # fmt: skip
    result = responders(outcomes, episodes, rule=ResponderRule("nprs")).set_index("patient_id")
    assert result.loc[1, ["baseline", "follow_up", "improvement"]].tolist() == [8, 6, 2]
    assert result.loc[1, "status"] == "responder"
    assert result.loc[4, ["baseline", "follow_up", "status"]].tolist() == [7, 4, "responder"]
    reasons = result["reason"].astype(str).to_dict()
    assert (reasons[2], reasons[3], reasons[5]) == ("no_follow_up", "no_baseline", "no_sessions")
    assert (result.loc[[2, 3, 5], "status"] == "unknown").all()
    wide = responders(outcomes, episodes, rule=ResponderRule("nprs", window=(28, 200)))
    assert wide.set_index("patient_id").loc[2, "status"] == "responder"


def test_relative_threshold():
    episodes = pd.DataFrame(
        {"patient_id": [1, 2, 3], "episode_id": [1, 2, 3],
         "first_session": pd.to_datetime(["2024-01-01"] * 3)}
    )  # fmt: skip
    outcomes = outcome_rows(
        [
            (1, 1, "nprs", 3, "2024-01-01"),
            (1, 1, "nprs", 2, "2024-02-15"),  # -1 of 3: 33 %, responder; the MCID says no
            (2, 2, "nprs", 8, "2024-01-01"),
            (2, 2, "nprs", 6, "2024-02-15"),  # -2 of 8: 25 %; the MCID says yes
            (3, 3, "nprs", 0, "2024-01-01"),
            (3, 3, "nprs", 0, "2024-02-15"),
        ]
    )
    relative = responders(outcomes, episodes, rule=ResponderRule("nprs", threshold="relative"))
    absolute = responders(outcomes, episodes, rule=ResponderRule("nprs"))
    assert relative["status"].astype(str).tolist() == ["responder", "non_responder", "unknown"]
    assert relative["reason"].astype(str).tolist()[2] == "zero_baseline"
    assert absolute["status"].astype(str).tolist()[:2] == ["non_responder", "responder"]
    assert "30 % of the baseline" in ResponderRule("nprs", threshold="relative").describe()


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


def test_attach_responders_per_episode_and_per_patient():
    outcomes = outcome_rows(
        [
            (1, 1, "lefs", 30, "2022-01-01"),
            (1, 1, "lefs", 50, "2022-03-01"),  # responder in 2022
            (1, 2, "lefs", 40, "2024-01-01"),
            (1, 2, "lefs", 42, "2024-03-01"),  # non-responder in 2024
            (1, 3, "lefs", 40, "2025-01-01"),  # unknown
            (2, 4, "lefs", 30, "2024-01-01"),
            (2, 4, "lefs", 39, "2024-03-01"),  # +9 = responder
        ]
    )
    statuses = responders(outcomes, instrument="lefs")
    # A cohort of one row per patient takes the latest known episode.
    cohort = attach_responders(make_cohort(3), statuses)
    assert cohort["responder"].astype(str).tolist() == ["non_responder", "responder", "unknown"]
    # An episode cohort keeps each episode's own status.
    episodes = pd.DataFrame({"patient_id": [1, 1, 1, 2], "episode_id": [1, 2, 3, 4]})
    per_episode = attach_responders(episodes, statuses)
    assert per_episode["responder"].astype(str).tolist() == [
        "responder",
        "non_responder",
        "unknown",
        "responder",
    ]


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
    lower = {k for k, v in research.INSTRUMENTS.items() if v.direction == "lower_is_better"}
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
    assert table.attrs["family"] == research.BH_FAMILY and table.attrs["n_in_both"] == 0


def test_bh_q_values_match_statsmodels(groups):
    from statsmodels.stats.multitest import multipletests

    table = compare_groups(*groups, min_patients=1).sort_values("p")
    assert (table["q"] >= table["p"] - 1e-15).all()
    assert table["q"].is_monotonic_increasing
    _, q, _, _ = multipletests(table["p"], method="fdr_bh")
    np.testing.assert_allclose(table["q"], q, rtol=1e-14)


def test_newcombe_interval_matches_statsmodels_and_the_published_example():
    from statsmodels.stats.proportion import confint_proportions_2indep

    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 vs 48/80, method 10.
    marks_a = make_marks([{"patient_id": p} for p in range(1, 57)])
    marks_b = make_marks([{"patient_id": 1000 + p} for p in range(1, 49)])
    cohort_a = make_cohort(70)
    cohort_b = make_cohort(80).assign(patient_id=lambda d: d["patient_id"] + 1000)
    row = compare_groups(marks_a, cohort_a, marks_b, cohort_b).iloc[0]
    assert row["diff"] == pytest.approx(20)
    assert row["diff_low"] == pytest.approx(5.24, abs=0.01)
    assert row["diff_high"] == pytest.approx(33.39, abs=0.01)
    low, high = confint_proportions_2indep(56, 70, 48, 80, method="newcomb", compare="diff")
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((100 * low, 100 * high), 1e-12)


def test_compare_groups_pooled_over_sides(groups):
    marks_a, cohort_a, marks_b, cohort_b = groups
    table = compare_groups(marks_a, cohort_a, marks_b, cohort_b, by_side=False)
    assert "side" not in table.columns and set(table["muscle"]) == {"vmo", "tensor_fasciae_latae"}


def test_compare_groups_counts_patients_in_both_groups(two_episodes):
    cohort, marks, _ = two_episodes
    a = cohort[cohort["condition"] == "knee_osteoarthritis"]
    b = cohort[cohort["condition"] == "patellofemoral_pain"]
    table = compare_groups(marks, a, marks, b, min_patients=1)
    assert table.attrs["n_in_both"] == 1  # patient 1 has an episode in each
    vmo = table.set_index(["muscle", "side"]).loc[("vmo", "right")]
    # Her right VMO mark belongs to her PFP episode: group A's one is patient 4's.
    assert (vmo["a"], vmo["b"]) == (1, 1)
    assert "soleus" not in set(table["muscle"])  # group B has none: not compared


def test_below_the_floor_warns_and_below_zero_fails(ten):
    marks, cohort = ten
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        muscle_table(marks, cohort, min_patients=1)
    assert any(issubclass(w.category, research.DisclosureWarning) for w in caught)
    assert "direct database access" in str(caught[0].message)
    with pytest.raises(ValueError):
        muscle_table(marks, cohort, min_patients=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        muscle_table(marks, cohort, min_patients=5)  # at the floor: silent
    assert math.isfinite(muscle_table(marks, cohort, min_patients=5)["pct"].iloc[0])


@pytest.mark.parametrize("weighting", research.WEIGHTINGS)
def test_precomputed_cells_give_the_same_maps(weighting):
    marks = random_marks(600, 40, seed=5)
    views = np.where(np.arange(len(marks)) % 3 == 0, "posterior", "anterior")
    marks["view"] = pd.Categorical(views, categories=list(research.VIEWS))
    marks.loc[5, "x"] = 99.0  # off the grid
    grids = research.view_grids(
        type("A", (), {"views": ("anterior", "posterior"), "bounds": lambda self, v: BOUNDS})()
    )
    cells = research.view_cells(marks, grids)
    assert cells.dtype == np.uint16 and cells[5] == np.iinfo(np.uint16).max
    plain = density_grid(marks, "anterior", bounds=BOUNDS, weighting=weighting)
    fast = density_grid(marks, "anterior", bounds=BOUNDS, weighting=weighting, cells=cells)
    np.testing.assert_array_equal(plain.values, fast.values)
    assert (fast.n_marks, fast.n_out_of_bounds) == (plain.n_marks, plain.n_out_of_bounds)
    with pytest.raises(ValueError, match="one entry per row"):
        density_grid(marks, "anterior", bounds=BOUNDS, cells=cells[1:])
