"""The synthetic demo cohort (tpmap.demo): reproducible, anatomically placed, plausible."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import math

import pytest
from sqlalchemy import select

from tpmap import load_atlas, model
from tpmap.demo import (
    FOLLOW_UP_DAYS,
    PLANS,
    SITES,
    STRUCTURE_SITES,
    DemoSummary,
    generate_demo,
    site_centres,
)
from tpmap.store import open_store
from tpmap.store.schema import (
    AdverseEventRow,
    EpisodeRow,
    MarkRow,
    OutcomeMeasureRow,
    PatientRow,
    PressurePainThresholdRow,
    SessionRow,
)

MARK_FIELDS = [f.name for f in dataclasses.fields(model.MarkInput)]
GROUP_MUSCLES = {
    "quadriceps": {"vmo", "vastus_medialis", "vastus_lateralis", "rectus_femoris"},
    "hamstrings": {"biceps_femoris", "semitendinosus_semimembranosus"},
    "gastrocnemius": {"gastrocnemius_medial", "gastrocnemius_lateral"},
}


def _rows(store, table, order=None):
    stmt = select(table.__table__).order_by(order if order is not None else table.id)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def _digest(store) -> str:
    """A digest of the cohort's content (not of ids or creation timestamps)."""
    h = hashlib.sha256()
    for p in _rows(store, PatientRow):
        h.update(repr((p["code"], p["sex"], p["birth_year"])).encode())
    for s in _rows(store, SessionRow):
        h.update(repr((s["date"], s["clinician"], s["nprs_before"], s["nprs_after"])).encode())
    for m in _rows(store, MarkRow):
        h.update(repr([m[f] for f in MARK_FIELDS]).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The default demo cohort (seed 1, 200 patients), built once for the module."""
    path = tmp_path_factory.mktemp("demo") / "t.db"
    store = open_store(f"sqlite:///{path}")
    summary = generate_demo(store, seed=1)
    data = {
        "patients": _rows(store, PatientRow),
        "episodes": _rows(store, EpisodeRow),
        "sessions": _rows(store, SessionRow),
        "marks": _rows(store, MarkRow),
        "ppts": _rows(store, PressurePainThresholdRow),
        "adverse": _rows(store, AdverseEventRow),
        "outcomes": _rows(store, OutcomeMeasureRow),
    }
    yield store, summary, data
    store.close()


def _episode_of_session(data):
    return {s["id"]: s["episode_id"] for s in data["sessions"]}


# ---------------------------------------------------------------------------------- counts


def test_counts_are_as_asked(cohort):
    store, summary, data = cohort
    counts = store.counts()
    assert summary.patients == counts["patients"] == 200
    assert summary.episodes == counts["episodes"] == 200
    assert summary.sessions == counts["sessions"]
    assert summary.marks == counts["marks"]
    assert summary.pressure_pain_thresholds == counts["pressure_pain_thresholds"]
    assert summary.adverse_events == counts["adverse_events"]
    assert summary.outcomes == counts["outcome_measures"]
    per_episode: dict[int, int] = {}
    for s in data["sessions"]:
        per_episode[s["episode_id"]] = per_episode.get(s["episode_id"], 0) + 1
    assert len(per_episode) == 200
    assert set(per_episode.values()) <= {3, 4, 5, 6}
    assert 4 <= summary.marks / summary.sessions <= 9


def test_summary_reads_like_a_sentence():
    summary = DemoSummary(1, 200, 200, 901, 5412, 0, 0, 0)
    assert str(summary) == "200 patients, 901 sessions, 5 412 marks"


def test_patients_are_pseudonymous_and_plausible(cohort):
    _, _, data = cohort
    codes = [p["code"] for p in data["patients"]]
    assert codes[0] == "DEMO-0001" and len(set(codes)) == len(codes)
    patient = {p["id"]: p for p in data["patients"]}
    ages = {c: [] for c in model.CONDITIONS}
    women = {c: [] for c in model.CONDITIONS}
    for e in data["episodes"]:
        p = patient[e["patient_id"]]
        ages[e["condition"]].append(e["start_date"].year - p["birth_year"])
        women[e["condition"]].append(p["sex"] == "female")
        model.validate_episode_fields({k: e[k] for k in ("condition", "affected_side",
                                                          "start_date", "symptom_duration_weeks",
                                                          "note")})  # fmt: skip
    assert min(ages["patellofemoral_pain"]) >= 15 and max(ages["patellofemoral_pain"]) <= 40
    assert min(ages["knee_osteoarthritis"]) >= 50 and max(ages["knee_osteoarthritis"]) <= 80
    assert min(ages["lateral_knee_pain"]) >= 20 and max(ages["lateral_knee_pain"]) <= 45
    assert min(ages["total_knee_arthroplasty"]) >= 60
    assert sum(women["patellofemoral_pain"]) / len(women["patellofemoral_pain"]) > 0.55
    mix = {c: len(a) / 200 for c, a in ages.items()}
    assert 0.25 <= mix["patellofemoral_pain"] <= 0.45
    assert 0.20 <= mix["knee_osteoarthritis"] <= 0.40
    sides = {e["affected_side"] for e in data["episodes"]}
    assert sides == {"left", "right", "both"}


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_cohort_other_seed_another(tmp_path):
    digests = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        store = open_store(f"sqlite:///{tmp_path}/{name}.db")
        generate_demo(store, seed=seed, patients=40)
        digests.append(_digest(store))
        store.close()
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


# ----------------------------------------------------------------------------------- marks


def test_every_mark_lies_in_its_muscle(cohort):
    _, _, data = cohort
    atlas = load_atlas()
    for m in data["marks"]:
        region = atlas.region_at(m["view"], m["x"], m["y"], m["layer"])
        assert region is not None, m
        assert (region.muscle, region.side, region.layer) == (m["muscle"], m["side"], m["layer"])
        assert m["atlas_version"] == atlas.version
        if m["layer"] == "superficial":  # what a plain tap on the page would give
            assert atlas.region_at(m["view"], m["x"], m["y"]) == region


def test_marks_cluster_at_the_trigger_point_sites(cohort):
    _, _, data = cohort
    centres: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    muscle_of = {s.name: s.muscle for s in (*SITES, *STRUCTURE_SITES)}
    for (site, view, side), xy in site_centres().items():
        centres.setdefault((muscle_of[site], view, side), []).append(xy)
    near = 0
    for m in data["marks"]:
        sites = centres[(m["muscle"], m["view"], m["side"])]
        d = min(math.dist((m["x"], m["y"]), c) for c in sites)
        near += d <= 2.5
    assert near / len(data["marks"]) > 0.9
    views = {(m["muscle"], m["view"]) for m in data["marks"]}
    assert ("iliotibial_band", "anterior") not in views
    assert ("quadratus_lumborum", "posterior") in views
    assert {m["layer"] for m in data["marks"] if m["muscle"] == "popliteus"} == {"deep"}


def test_every_mark_passes_model_validation(cohort):
    _, _, data = cohort
    techniques = set()
    for m in data["marks"]:
        cleaned = model.validate_mark_fields({f: m[f] for f in MARK_FIELDS})
        assert cleaned["depth_mm"] <= cleaned["needle_length_mm"]
        assert cleaned["needle_gauge_mm"] in (0.25, 0.30)
        electrical = model.is_electrical(cleaned["technique"])
        assert (cleaned["estim_frequency_hz"] is not None) == electrical
        techniques.add(cleaned["technique"])
    assert techniques == set(model.TECHNIQUES)
    share = sum(model.is_electrical(m["technique"]) for m in data["marks"]) / len(data["marks"])
    assert 0.10 <= share <= 0.35
    ql = [m["depth_mm"] for m in data["marks"] if m["muscle"] == "quadratus_lumborum"]
    assert ql and min(ql) >= 40 and max(ql) <= 60


def test_periosteal_electrical_only_in_knee_osteoarthritis(cohort):
    _, _, data = cohort
    episode = {e["id"]: e for e in data["episodes"]}
    session_episode = _episode_of_session(data)
    conditions = {
        episode[session_episode[m["session_id"]]]["condition"]
        for m in data["marks"]
        if m["technique"] == "periosteal_electrical"
    }
    assert conditions == {"knee_osteoarthritis"}


def _prevalence(data):
    """Per condition: share of patients with each plan group treated at least once."""
    episode = {e["id"]: e for e in data["episodes"]}
    session_episode = _episode_of_session(data)
    treated: dict[int, set[str]] = {e: set() for e in episode}
    for m in data["marks"]:
        treated[session_episode[m["session_id"]]].add(m["muscle"])
    result = {}
    for condition, plan in PLANS.items():
        eps = [e for e in episode.values() if e["condition"] == condition]
        for group in plan:
            muscles = GROUP_MUSCLES.get(group.name, {group.name})
            has = sum(bool(treated[e["id"]] & muscles) for e in eps)
            result[(condition, group.name)] = (has / len(eps), len(eps))
    return result


def test_prevalence_per_condition_roughly_as_specified(cohort):
    _, _, data = cohort
    observed = _prevalence(data)
    for condition, plan in PLANS.items():
        for group in plan:
            share, n = observed[(condition, group.name)]
            if n >= 20:  # "other" is 5 % of the cohort: too few for a share
                p = group.prevalence
                tolerance = 0.05 + 3 * math.sqrt(p * (1 - p) / n)  # loose: ~3 binomial SDs
                assert abs(share - p) <= tolerance, (condition, group.name, share, n)
    # Sanchez-Romero 2020 (knee OA): TFL and gastrocnemius common, popliteus least.
    oa = {
        g: observed[("knee_osteoarthritis", g)][0]
        for g in ("tensor_fasciae_latae", "gastrocnemius", "popliteus")
    }
    assert oa["popliteus"] < oa["tensor_fasciae_latae"]
    assert oa["popliteus"] < oa["gastrocnemius"]


def test_marks_mostly_on_the_affected_side(cohort):
    _, _, data = cohort
    episode = {e["id"]: e for e in data["episodes"]}
    session_episode = _episode_of_session(data)
    same = {"gluteus_medius": [], "quadratus_lumborum": [], "all": []}
    for m in data["marks"]:
        e = episode[session_episode[m["session_id"]]]
        if e["affected_side"] == "both":
            continue
        hit = m["side"] == e["affected_side"]
        same["all"].append(hit)
        if e["condition"] == "patellofemoral_pain" and m["muscle"] in same:
            same[m["muscle"]].append(hit)
    share = {k: sum(v) / len(v) for k, v in same.items()}
    assert share["all"] > 0.75
    assert share["gluteus_medius"] > 0.75  # Zarei 2020: GM on the affected side ...
    assert share["quadratus_lumborum"] < 0.4  # ... QL on the other side


def test_treated_muscles_recur_across_a_patients_sessions(cohort):
    _, _, data = cohort
    by_session: dict[int, set[tuple[str, str]]] = {}
    for m in data["marks"]:
        by_session.setdefault(m["session_id"], set()).add((m["muscle"], m["side"]))
    by_episode: dict[int, list[set]] = {}
    for s in data["sessions"]:
        by_episode.setdefault(s["episode_id"], []).append(by_session.get(s["id"], set()))
    overlaps = []
    for sets in by_episode.values():
        for a, b in itertools.pairwise(sets):
            if a | b:
                overlaps.append(len(a & b) / len(a | b))
    assert sum(overlaps) / len(overlaps) > 0.6


# --------------------------------------------------------------------------- session data


def test_nprs_and_responders(cohort):
    _, _, data = cohort
    for s in data["sessions"]:
        for key in ("nprs_before", "nprs_after"):
            assert isinstance(s[key], int) and 0 <= s[key] <= 10
        model.validate_session_fields({k: s[k] for k in ("date", "clinician", "nprs_before",
                                                         "nprs_after", "note")})  # fmt: skip
    scores: dict[tuple[int, str], list[float]] = {}
    for o in sorted(data["outcomes"], key=lambda o: (o["date"], o["id"])):
        model.validate_outcome_fields({k: o[k] for k in ("instrument", "score", "date")})
        scores.setdefault((o["episode_id"], o["instrument"]), []).append(o["score"])
    nprs = model.OUTCOME_INSTRUMENTS["nprs"]
    responder = {}
    for (episode, instrument), values in scores.items():
        assert len(values) in (1, 2, 1 + len(FOLLOW_UP_DAYS)), (episode, instrument)
        if instrument == "nprs" and len(values) > 2:  # baseline to the 12-week follow-up
            responder[episode] = nprs.is_responder(values[0], values[-1])
    share = sum(responder.values()) / len(responder)
    assert 0.4 <= share <= 0.7, share
    # The condition's own instrument agrees with the NPRS.
    for (episode, instrument), values in scores.items():
        if episode in responder:
            spec = model.OUTCOME_INSTRUMENTS[instrument]
            assert spec.is_responder(values[0], values[-1]) == responder[episode], episode


def test_outcome_instruments_per_condition(cohort):
    _, _, data = cohort
    condition = {e["id"]: e["condition"] for e in data["episodes"]}
    used: dict[str, set[str]] = {}
    for o in data["outcomes"]:
        used.setdefault(condition[o["episode_id"]], set()).add(o["instrument"])
    assert used["patellofemoral_pain"] == {"nprs", "kujala"}
    assert used["knee_osteoarthritis"] == {"nprs", "womac_function"}
    assert used["total_knee_arthroplasty"] == {"nprs", "womac_function"}
    assert used["lateral_knee_pain"] == {"nprs", "lefs"}


def test_outcomes_followed_up_over_weeks_and_some_patients_lost(cohort):
    _, _, data = cohort
    start = {e["id"]: e["start_date"] for e in data["episodes"]}
    days: dict[tuple[int, str], list[int]] = {}
    for o in data["outcomes"]:
        days.setdefault((o["episode_id"], o["instrument"]), []).append(
            (o["date"] - start[o["episode_id"]]).days
        )
    lost = set()
    for (episode, _), ds in days.items():
        ds.sort()
        assert ds[0] == 0  # the baseline, on the day of the first session
        # Follow-ups at about 2, 6 and 12 weeks; the last inside the 4-12 week window.
        for d, (due, early) in zip(ds[1:], FOLLOW_UP_DAYS, strict=False):
            assert due - early <= d <= due
        if len(ds) < 1 + len(FOLLOW_UP_DAYS):
            lost.add(episode)
    assert 0.06 <= len(lost) / len(data["episodes"]) <= 0.20  # about 12 % lost to follow-up
    assert max(o["date"] for o in data["outcomes"]) < dt.date.today()


def test_structure_marks_where_clinicians_needle_them(cohort):
    _, _, data = cohort
    atlas = load_atlas()
    episode = {e["id"]: e for e in data["episodes"]}
    session_episode = _episode_of_session(data)
    with_structures: dict[str, set[int]] = {}
    kinds = set()
    for m in data["marks"]:
        if m["layer"] != "structures":
            assert atlas.kind(m["muscle"]) in ("muscle", "fascia")
            continue
        # Assigned by geometry: the structures layer's region at the point is the mark's.
        region = atlas.region_at(m["view"], m["x"], m["y"], layer="structures")
        assert region is not None and (region.muscle, region.side) == (m["muscle"], m["side"])
        e = episode[session_episode[m["session_id"]]]
        with_structures.setdefault(e["condition"], set()).add(e["id"])
        kinds.add(atlas.kind(m["muscle"]))
        assert m["ltr_grade"] == "none" and m["ltr_count"] == 0 and m["tp_status"] is None
        if e["affected_side"] != "both":
            assert m["side"] == e["affected_side"]
        if m["muscle"] == "mpfl":
            assert e["condition"] == "patellofemoral_pain"
            assert m["technique"] in ("static", "pistoning", "electrical")
        else:  # periosteal electrical dry needling (Dunning 2018)
            assert e["condition"] == "knee_osteoarthritis"
            assert m["technique"] == "periosteal_electrical"
            assert m["estim_frequency_hz"] == 2.0 and 1.0 <= m["estim_intensity_ma"] <= 5.0
            assert m["needle_gauge_mm"] == 0.30 and m["depth_mm"] <= 15
    assert set(with_structures) == {"patellofemoral_pain", "knee_osteoarthritis"}
    assert kinds == {"ligament", "tendon", "periosteum"}  # pes anserinus is a tendon
    for condition, low, high in (
        ("patellofemoral_pain", 0.1, 0.4),
        ("knee_osteoarthritis", 0.3, 0.6),
    ):
        n = sum(e["condition"] == condition for e in data["episodes"])
        assert low <= len(with_structures[condition]) / n <= high, condition
    muscles = {m["muscle"] for m in data["marks"] if m["layer"] == "structures"}
    assert {"mpfl", "medial_joint_line", "adductor_tubercle", "patellar_borders"} <= muscles


def test_sessions_about_a_week_apart_and_in_the_past(cohort):
    _, _, data = cohort
    dates: dict[int, list[dt.date]] = {}
    for s in data["sessions"]:
        dates.setdefault(s["episode_id"], []).append(s["date"])
    starts = {e["id"]: e["start_date"] for e in data["episodes"]}
    for episode, ds in dates.items():
        ds.sort()
        assert ds[0] == starts[episode]
        assert all(4 <= (b - a).days <= 14 for a, b in itertools.pairwise(ds))
    assert max(max(ds) for ds in dates.values()) < dt.date.today()
    spread = max(starts.values()) - min(starts.values())
    assert spread.days > 365


def test_adverse_events_at_published_rates(cohort):
    _, summary, data = cohort
    for a in data["adverse"]:
        model.validate_adverse_event_fields({k: a[k] for k in ("type", "severity", "note")})
    rate = len(data["adverse"]) / summary.sessions
    assert 0.12 <= rate <= 0.27  # Brady 2014: about 19 % of treatments
    types = [a["type"] for a in data["adverse"]]
    assert types.count("bruising") > types.count("bleeding") > 0
    severities = [a["severity"] for a in data["adverse"]]
    assert severities.count("mild") >= 0.97 * len(severities)
    assert "serious" not in severities


def test_pressure_pain_thresholds(cohort):
    _, summary, data = cohort
    assert len(data["ppts"]) >= 2 * summary.sessions
    for r in data["ppts"]:
        model.validate_ppt_fields({k: r[k] for k in ("site", "side", "kg_cm2")})


# --------------------------------------------------------------------------------- options


def test_marks_per_session_and_sessions_range(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    summary = generate_demo(store, seed=3, patients=20, sessions=(2, 2), marks_per_session=25)
    assert summary.sessions == 40
    assert 20 <= summary.marks / summary.sessions <= 30
    store.close()


def test_codes_continue_after_an_existing_demo_cohort(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    generate_demo(store, seed=1, patients=3)
    generate_demo(store, seed=1, patients=2)
    codes = [p["code"] for p in _rows(store, PatientRow)]
    assert codes == [f"DEMO-{i:04d}" for i in range(1, 6)]
    store.close()


def test_empty_cohort_and_bad_arguments(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    summary = generate_demo(store, patients=0)
    assert (summary.patients, summary.sessions, summary.marks) == (0, 0, 0)
    with pytest.raises(ValueError):
        generate_demo(store, sessions=(4, 2))
    with pytest.raises(ValueError):
        generate_demo(store, marks_per_session=-1)
    with pytest.raises(ValueError, match="after today"):
        generate_demo(store, patients=5, start=dt.date.today())
    assert store.counts()["patients"] == 0
    store.close()
