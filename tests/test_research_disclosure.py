"""Disclosure control: the floor, differencing attacks, consistent noise, exports.

The attacks are played against :func:`permitted`, which answers a query the way the explore
page does (the policy's coarsening, :func:`check_query`, small-cell suppression). Each
attack class is also played with the checks off, on the same data, to show that the data
would give the secret away: so each test can fail.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re

import numpy as np
import pandas as pd
import pytest

from tpmap import research
from tpmap.research import (
    CellKey,
    DisclosureError,
    DisclosurePolicy,
    Filters,
    check_query,
    compact_marks,
    export_marks,
    muscle_table,
    to_days,
)

K = 5
MUSCLES = ("vmo", "vastus_lateralis", "gluteus_medius", "soleus", "adductors", "piriformis")


def synthetic_cohort(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """90 patients, some with two episodes, with small groups an attacker would target.

    Conditions: patellofemoral pain (most), knee OA, lateral knee pain (7 patients), other
    (3: fewer than k). Sexes: female, male, other (2). Clinicians Dr A, Dr B and Dr C (who
    saw 3 patients). Sessions over 2024; muscles with a few patients of each small group.
    """
    rng = np.random.default_rng(seed)
    rows, sessions, marks = [], [], []
    conditions = ["patellofemoral_pain"] * 50 + ["knee_osteoarthritis"] * 30
    conditions += ["lateral_knee_pain"] * 7 + ["other"] * 3
    sexes = ["female"] * 55 + ["male"] * 33 + ["other"] * 2
    rng.shuffle(sexes)
    episode_id = 0
    session_id = 0
    for p in range(1, 91):
        n_episodes = 2 if p % 9 == 0 else 1
        for e in range(n_episodes):
            episode_id += 1
            condition = conditions[p - 1] if e == 0 else "knee_osteoarthritis"
            start = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 300)))
            rows.append(
                {
                    "patient_id": p,
                    "episode_id": episode_id,
                    "sex": sexes[p - 1],
                    "birth_year": float(1940 + (p * 7) % 70),
                    "condition": condition,
                    "affected_side": ["left", "right", "both"][p % 3],
                    "start_date": pd.Timestamp(start),
                }
            )
            clinician = "Dr C" if p in (4, 40, 80) else ("Dr A" if p % 2 else "Dr B")
            for s in range(int(rng.integers(1, 4))):
                session_id += 1
                day = start + dt.timedelta(days=7 * s)
                sessions.append(
                    {
                        "session_id": session_id,
                        "episode_id": episode_id,
                        "patient_id": p,
                        "session_date": to_days(day),
                        "clinician": clinician,
                    }
                )
                for m in rng.choice(len(MUSCLES), size=int(rng.integers(1, 4)), replace=False):
                    marks.append(
                        {
                            "patient_id": p,
                            "episode_id": episode_id,
                            "session_id": session_id,
                            "view": "anterior",
                            "layer": "superficial",
                            "x": float(rng.normal(-8 + 3 * m, 0.5)),
                            "y": float(rng.normal(40 + 8 * m, 0.5)),
                            "muscle": MUSCLES[m],
                            "side": ["left", "right"][int(rng.integers(2))],
                            "technique": ["static", "electrical"][int(rng.integers(2))],
                            "ltr_grade": "none",
                            "tp_status": "active",
                            "session_date": day,
                            "clinician": clinician,
                        }
                    )
            if p % 10 == 0:  # a mark far from everyone else's: a spot the map hides
                marks.append({**marks[-1], "muscle": "vmo", "x": 18.0, "y": 10.0 + 1.3 * p})
    cohort = pd.DataFrame(rows)
    cohort["responder"] = np.where(cohort["episode_id"] % 4 == 0, "unknown", "responder")
    session_frame = pd.DataFrame(sessions)
    session_frame["clinician"] = pd.Categorical(session_frame["clinician"])
    return cohort, compact_marks(pd.DataFrame(marks)), session_frame


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return synthetic_cohort()


def permitted(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    filters: Filters,
    policy: DisclosurePolicy,
    *,
    checks: bool = True,
) -> tuple[int, dict[tuple[str, str], int]] | None:
    """What a researcher sees for ``filters``: cohort size and patients per muscle, or None
    when refused. True counts (no noise): the deterministic defence is under test."""
    cohort, marks, sessions = data
    f = policy.coarsen(filters)
    hidden: frozenset[tuple[str, str]] = frozenset()
    if checks:
        check = check_query(f, cohort, marks, sessions=sessions, k=K, date_step=policy.date_step)
        if check.refused:
            return None
        hidden = check.hidden_cells
    c, m = f.apply(cohort, marks, sessions=sessions)
    n = int(c["patient_id"].nunique())
    if n < K:
        return None
    table = muscle_table(m, c, min_patients=K)
    cells = {
        (mu, s): int(v)
        for mu, s, v in zip(table["muscle"], table["side"], table["n_patients"], strict=True)
        if (mu, s) not in hidden
    }
    return n, cells


def revealed(a, b) -> list[int]:
    """Small counts (1 .. k-1) an attacker gets by subtracting two permitted outputs."""
    if a is None or b is None:
        return []
    out = []
    if 0 < abs(a[0] - b[0]) < K:
        out.append(abs(a[0] - b[0]))
    for cell in set(a[1]) & set(b[1]):
        d = abs(a[1][cell] - b[1][cell])
        if 0 < d < K:
            out.append(d)
    return out


def attack(data, pairs, policy) -> tuple[list[int], list[int]]:
    """Small counts revealed with the checks on, and with them off."""
    on, off = [], []
    for q1, q2 in pairs:
        on += revealed(permitted(data, q1, policy), permitted(data, q2, policy))
        off += revealed(
            permitted(data, q1, policy, checks=False), permitted(data, q2, policy, checks=False)
        )
    return on, off


RESEARCHER = DisclosurePolicy.for_role("researcher", min_patients=K)
CLINICIAN = DisclosurePolicy.for_role("clinician", min_patients=K)
ALL = Filters()


def all_but(name: str, values: tuple[str, ...], left_out: str) -> Filters:
    return Filters(**{name: [v for v in values if v != left_out]})


def test_attack_complementary_filters(data):
    conditions = ("patellofemoral_pain", "knee_osteoarthritis", "lateral_knee_pain", "other")
    pairs = [(ALL, all_but("conditions", conditions, c)) for c in conditions]
    # Also one condition against all the others, the classic complementary pair.
    pairs += [(Filters(conditions=[c]), all_but("conditions", conditions, c)) for c in conditions]
    on, off = attack(data, pairs, RESEARCHER)
    assert off, "the data should let the attack through without the checks"
    assert on == []


def test_attack_date_range_moved_by_one_day(data):
    starts = [dt.date(2024, 2, 1), dt.date(2024, 4, 10)]
    ends = [dt.date(2024, 6, d) for d in range(1, 30)] + [dt.date(2024, 9, 30)]
    pairs = [
        (Filters(date_from=a, date_to=b), Filters(date_from=a, date_to=b + dt.timedelta(days=1)))
        for a in starts
        for b in ends
    ]
    pairs += [
        (Filters(date_from=a, date_to=b), Filters(date_from=a - dt.timedelta(days=1), date_to=b))
        for a in [dt.date(2024, 3, d) for d in range(1, 31)]
        for b in ends[-1:]
    ]
    # The clinician role filters by day: the parent checks must catch every one-day move.
    on, off = attack(data, pairs, CLINICIAN)
    assert off and on == []
    # The researcher role filters by month: a one-day move inside a month changes nothing.
    on, off = attack(data, pairs, RESEARCHER)
    assert on == []
    same_month = Filters(date_from="2024-02-01", date_to="2024-06-10")
    moved = Filters(date_from="2024-02-01", date_to="2024-06-11")
    assert permitted(data, same_month, RESEARCHER) == permitted(data, moved, RESEARCHER)


def test_attack_leaving_out_one_clinician(data):
    clinicians = ("Dr A", "Dr B", "Dr C")
    pairs = [(ALL, all_but("clinicians", clinicians, c)) for c in clinicians]
    pairs += [
        (Filters(conditions=["patellofemoral_pain"]),
         Filters(conditions=["patellofemoral_pain"], clinicians=["Dr A", "Dr B"]))
    ]  # fmt: skip
    on, off = attack(data, pairs, RESEARCHER)
    assert off and on == []


def test_attack_leaving_out_one_sex(data):
    sexes = ("female", "male", "other")
    pairs = [(ALL, all_but("sexes", sexes, s)) for s in sexes]
    pairs += [(Filters(sexes=["female", "other"]), Filters(sexes=["female"]))]
    on, off = attack(data, pairs, RESEARCHER)
    assert off and on == []


def test_attack_leaving_out_one_age_band(data):
    bands = tuple(b for b, _, _ in research.AGE_BANDS)
    pairs = [(ALL, all_but("age_bands", bands, b)) for b in bands]
    pairs += [
        (Filters(age_bands=list(pair)), Filters(age_bands=[pair[0]]))
        for pair in itertools.permutations(bands, 2)
    ]
    on, off = attack(data, pairs, RESEARCHER)
    assert off and on == []


def test_refusals_name_the_problem_in_plain_words(data):
    cohort, marks, sessions = data
    conditions = ["patellofemoral_pain", "knee_osteoarthritis", "lateral_knee_pain"]
    check = check_query(Filters(conditions=conditions), cohort, marks, sessions=sessions, k=K)
    assert check.refused is not None and "leave out fewer than 5 patients" in check.refused
    with pytest.raises(DisclosureError):
        check.raise_if_refused()
    check = check_query(Filters(conditions=["other"]), cohort, marks, sessions=sessions, k=K)
    assert check.refused.startswith("Fewer than 5 patients match")
    check = check_query(Filters(sexes=["female"]), cohort, marks, sessions=sessions, k=K)
    assert "Adding other to the sex filter" in check.refused
    assert check_query(ALL, cohort, marks, sessions=sessions, k=K).refused is None


def test_folding_is_checked_like_an_affected_side_filter(data):
    cohort, marks, sessions = data
    plain = check_query(ALL, cohort, marks, sessions=sessions, k=K)
    folded = check_query(ALL, cohort, marks, sessions=sessions, k=K, fold=True)
    # Folding leaves bilateral episodes out: a third of the data, so it may be shown...
    assert plain.refused is None and folded.refused is None
    # ...but a muscle where the bilateral patients are 1 to 4 is hidden when folded.
    _c, m = research.fold_to_affected_side(cohort, marks)
    both = cohort.loc[cohort["affected_side"] == "both", "episode_id"]
    bilateral = marks.loc[marks["episode_id"].isin(both)]
    small = {
        (mu, s)
        for (mu, s), n in bilateral.groupby(["muscle", "side"], observed=True)["patient_id"]
        .nunique()
        .items()
        if 0 < n < K
    }
    folded_cells = set(zip(m["muscle"].astype(str), m["side"].astype(str), strict=True))
    assert small & folded_cells <= folded.hidden_cells | small


# ---------------------------------------------------------------------------- the policy


def test_policy_floor_and_roles():
    policy = DisclosurePolicy(min_patients=8)
    assert [policy.k(v) for v in (None, "", "abc", float("nan"), 0, 3, 8, 12, "20")] == [
        8, 8, 8, 8, 8, 8, 8, 12, 20,
    ]  # fmt: skip
    assert DisclosurePolicy.for_role("researcher").date_granularity == "month"
    assert DisclosurePolicy.for_role("clinician").date_granularity == "day"
    assert DisclosurePolicy.for_role("someone else").role == "researcher"
    with pytest.raises(ValueError):
        DisclosurePolicy(min_patients=0)


def test_researcher_dates_are_whole_months():
    f = RESEARCHER.coarsen(Filters(date_from="2024-02-17", date_to="2024-03-03"))
    assert (f.date_from, f.date_to) == (dt.date(2024, 2, 1), dt.date(2024, 3, 31))
    same = CLINICIAN.coarsen(Filters(date_from="2024-02-17"))
    assert same.date_from == dt.date(2024, 2, 17)


# ---------------------------------------------------------------------------- perturbation


def test_noise_is_consistent_and_bounded():
    key = CellKey(b"k" * 32)
    ids = np.arange(1, 40)
    a = key.count(ids, floor=K)
    assert key.count(ids[::-1], floor=K) == a  # same patients, same number
    assert CellKey(b"k" * 32).count(ids, floor=K) == a  # same key, same number
    assert abs(a - len(ids)) <= 2
    rng = np.random.default_rng(0)
    counts = rng.integers(K, 60, 2000)
    noisy = key.perturb(counts, rng.random(2000), floor=K)
    assert (np.abs(noisy - counts) <= 2).all() and (noisy >= K).all()
    assert abs(float((noisy - counts).mean())) < 0.15  # unbiased
    assert "k" not in repr(key)


def test_noise_blurs_a_difference_of_two_counts():
    # Pairs of patient sets differing by h patients: the attacker's estimate of h is the
    # difference of the two published counts. Without noise it is always right.
    key = CellKey(b"s" * 32)
    rng = np.random.default_rng(1)
    right, tried = 0, 0
    for _ in range(600):
        base = rng.choice(10_000, size=int(rng.integers(20, 80)), replace=False)
        h = int(rng.integers(1, K))
        extra = rng.choice(np.arange(10_000, 20_000), size=h, replace=False)
        estimate = key.count(np.concatenate([base, extra]), floor=K) - key.count(base, floor=K)
        right += estimate == h
        tried += 1
    # Two independent draws from the noise table agree about a quarter of the time.
    assert right / tried < 0.35


def test_perturbed_table_is_consistent_and_keeps_suppression(data):
    cohort, marks, _ = data
    key = CellKey(b"t" * 32)
    exact = muscle_table(marks, cohort, min_patients=K)
    noisy = muscle_table(marks, cohort, min_patients=K, perturbation=key)
    again = muscle_table(marks, cohort, min_patients=K, perturbation=key)
    pd.testing.assert_frame_equal(noisy, again)
    assert noisy.attrs["perturbed"] and not exact.attrs["perturbed"]
    merged = exact.merge(noisy, on=["muscle", "side"], suffixes=("", "_noisy"))
    assert len(merged) == len(exact)  # the same rows: suppression uses the true counts
    assert (np.abs(merged["n_patients"] - merged["n_patients_noisy"]) <= 2).all()
    assert (merged["n_patients_noisy"] >= K).all()
    # Percentages and intervals follow the published counts.
    n = noisy["n_cohort"].iloc[0]
    assert noisy["pct"].to_numpy() == pytest.approx(100 * noisy["n_patients"] / n)


def test_perturbed_grid_is_consistent_and_stays_above_the_floor(data):
    _, marks, _ = data
    key = CellKey(b"g" * 32)
    kwargs = {"bounds": (-25.0, 0.0, 25.0, 120.0), "min_patients": K}
    exact = research.density_grid(marks, "anterior", **kwargs)
    noisy = research.density_grid(marks, "anterior", perturbation=key, **kwargs)
    again = research.density_grid(marks, "anterior", perturbation=key, **kwargs)
    np.testing.assert_array_equal(noisy.values, again.values)
    shown = np.isfinite(exact.values)
    np.testing.assert_array_equal(np.isfinite(noisy.values), shown)
    assert (np.abs(noisy.values[shown] - exact.values[shown]) <= 2).all()
    assert (noisy.values[shown] >= K).all() and noisy.perturbed


# ---------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def export(data):
    cohort, marks, sessions = data
    f = Filters(conditions=["patellofemoral_pain", "knee_osteoarthritis"])
    check = check_query(f, cohort, marks, sessions=sessions, k=K)
    c, m = f.apply(cohort, marks, sessions=sessions)
    out = export_marks(
        c, m, filters=f, k=K, hidden_cells=check.hidden_cells, responder=c["responder"]
    )
    return out, c, m, check


def test_export_is_an_allow_list_without_names_or_exact_dates(export, data):
    out, _, m, _ = export
    frame = out.frame
    assert set(frame.columns) <= set(research.EXPORT_COLUMNS)
    assert not {"note", "code", "patient_code", "session_date", "name"} & set(frame.columns)
    # No calendar dates anywhere: no datetime column, no value that reads as a date.
    assert not any(pd.api.types.is_datetime64_any_dtype(frame[c]) for c in frame.columns)
    text = frame.astype(str).to_csv(index=False)
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)
    assert frame["days_since_episode_start"].between(0, 400).all()
    # Clinicians are pseudonyms, patients too.
    for name in ("Dr A", "Dr B", "Dr C"):
        assert name not in text
    assert frame["patient_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert not set(frame["patient_id"]) & {str(p) for p in m["patient_id"]}


def test_export_never_carries_a_hidden_spots_coordinates(export):
    out, _c, m, check = export
    frame = out.frame
    shown = frame.dropna(subset=["x"])
    assert len(shown) and len(shown) < len(frame)  # some positions withheld, most kept
    # Every exported position lies in a spot of the map with at least k patients.
    spots = research.withheld_positions(m, K)
    hidden_xy = set(zip(m["x"].to_numpy()[spots].round(4), m["y"].to_numpy()[spots].round(4),
                        strict=True))  # fmt: skip
    exported_xy = set(zip(shown["x"].round(4), shown["y"].round(4), strict=True))
    assert not hidden_xy & exported_xy
    # Muscles hidden on the page (fewer than k patients, or a parent query's difference)
    # are not exported at all.
    per_cell = m.groupby(["muscle", "side"], observed=True)["patient_id"].nunique()
    small = {cell for cell, n in per_cell.items() if n < K} | set(check.hidden_cells)
    exported_cells = set(zip(frame["muscle"], frame["side"], strict=True))
    assert not small & exported_cells


def test_export_record_for_the_audit_trail(export):
    out, *_ = export
    record = out.record
    assert record["kind"] == "marks" and record["k"] == K
    assert record["rows"] == len(out.frame)
    assert record["filters"] == {"conditions": ["patellofemoral_pain", "knee_osteoarthritis"]}
    assert record["columns"] == list(out.frame.columns)
    assert record["withheld_positions"] > 0


def test_export_by_month_and_without_clinicians(data):
    cohort, marks, _ = data
    out = export_marks(cohort, marks, filters=ALL, k=K, dates="month", clinicians="drop")
    assert "clinician" not in out.frame.columns
    assert out.frame["month"].str.fullmatch(r"\d{4}-\d{2}").all()
    assert "days_since_episode_start" not in out.frame.columns


def test_pseudonyms_differ_between_exports(data):
    cohort, marks, _ = data
    a = export_marks(cohort, marks, filters=ALL, k=K).frame
    b = export_marks(cohort, marks, filters=ALL, k=K).frame
    assert not set(a["patient_id"]) & set(b["patient_id"])
    salt = b"0123456789abcdef"
    same = export_marks(cohort, marks, filters=ALL, k=K, salt=salt).frame
    assert same.equals(export_marks(cohort, marks, filters=ALL, k=K, salt=salt).frame)


def test_deidentify_is_an_allow_list():
    frame = pd.DataFrame(
        {
            "patient_id": [1, 1, 2],
            "session_id": [1, 2, 3],
            "patient_code": ["PX-1", "PX-1", "PX-2"],
            "note": ["told me about her divorce", "", ""],
            "surname": ["Smith", "Smith", "Jones"],
            "muscle": ["vmo", "vmo", "soleus"],
        }
    )
    out = research.deidentify(frame)
    assert list(out.columns) == ["patient_id", "session_id", "muscle"]
    ids = out["patient_id"].tolist()
    assert ids[0] == ids[1] != ids[2]
    assert out["session_id"].iloc[0] != out["patient_id"].iloc[0]
    assert frame["patient_id"].tolist() == [1, 1, 2]  # the input is untouched
