"""The patient's progress: pain by session, outcome scores with their MCID bands, sites."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace as S

import pytest
from bokeh.document import Document

from tpmap.apps.annotate import make_document
from tpmap.progress import episode_progress

from diagram_points import ATLAS, mark_fields


def session(i: int, date: str, before: int | None, after: int | None = None) -> S:
    return S(id=i, date=dt.date.fromisoformat(date), nprs_before=before, nprs_after=after)


def outcome(instrument: str, score: float, date: str, deleted: bool = False) -> S:
    return S(
        instrument=instrument,
        score=score,
        date=dt.date.fromisoformat(date),
        deleted_at=dt.datetime.now(dt.UTC) if deleted else None,
    )


def test_nprs_comes_from_the_pain_before_each_session():
    p = episode_progress(
        [session(2, "2026-01-12", 5, 3), session(1, "2026-01-05", 7, 6)],
        [],
    )
    assert p.session_ids == (1, 2)
    assert p.nprs_before == (7, 5) and p.nprs_after == (6, 3)
    (nprs,) = p.instruments
    assert nprs.instrument.id == "nprs" and nprs.scores == (7.0, 5.0)
    assert nprs.band == (5.0, 7.0) and nprs.improved  # 2 points: one MCID


def test_each_instrument_has_its_baseline_band_and_direction():
    p = episode_progress(
        [session(1, "2026-01-05", None)],
        [
            outcome("kujala", 60, "2026-01-05"),
            outcome("kujala", 69, "2026-02-05"),
            outcome("womac_function", 30, "2026-01-05"),
            outcome("womac_function", 10, "2026-03-01"),
            outcome("womac_function", 2, "2026-03-02", deleted=True),
            outcome("koos_sport", 95, "2026-01-05"),
        ],
    )
    series = {s.instrument.id: s for s in p.instruments}
    assert list(series) == ["womac_function", "kujala", "koos_sport"]  # the model's order
    kujala, womac, koos = series["kujala"], series["womac_function"], series["koos_sport"]
    assert kujala.band == (60, 70) and not kujala.improved  # 9 of an MCID of 10
    assert womac.band == (17.5, 30) and womac.improved and womac.latest == 10  # deleted left out
    assert koos.band == (95, 100)  # clipped to the scale
    assert not koos.improved  # a single score is no change


@pytest.fixture
def page(store, clinician):
    patient = store.create_patient({"code": "P-PROG"}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "knee_osteoarthritis", "affected_side": "right", "start_date": "2026-01-01"},
        "t",
    )
    first = store.create_session(
        episode.id, {"date": "2026-01-05", "clinician": "AB", "nprs_before": 7}, "t"
    )
    second = store.create_session(
        episode.id, {"date": "2026-01-19", "clinician": "AB", "nprs_before": 4}, "t"
    )
    store.add_mark(first.id, mark_fields("anterior", "vmo", "right"), "t")
    store.add_mark(second.id, mark_fields("posterior", "gluteus_medius", "right"), "t")
    store.add_mark(second.id, mark_fields("lateral_right", "iliotibial_band", "right"), "t")
    store.add_outcome(
        episode.id, {"instrument": "womac_function", "score": 40, "date": "2026-01-05"}, "t"
    )
    store.add_outcome(
        episode.id, {"instrument": "womac_function", "score": 25, "date": "2026-02-02"}, "t"
    )
    pg = make_document(Document(), store=store, atlas=ATLAS, user=clinician)
    pg.pickers.patient_select.value = str(patient.id)
    return pg


def test_the_progress_tab_shows_pain_scores_and_sites(page):
    page.tabs.active = page.PROGRESS_TAB
    view = page.progress
    assert view.nprs_source.data["before"] == [7, 4]
    assert "NPRS: 7 → 4 (-3; MCID 2): at least one MCID better" in view.summary.text
    assert "WOMAC physical function: 40 → 25" in view.summary.text
    assert [f.name for f in view.instruments.children] == ["progress-womac_function"]
    # Small multiples: newest session first, each with its marks.
    assert view.title_source.data["text"] == ["19 Jan · 2", "05 Jan · 1"]
    assert sorted(view.marks_source.data["label"]) == [
        "Gluteus medius (right)",
        "Iliotibial band (right)",
        "Vastus medialis obliquus (right)",
    ]
    assert view.marks_source.data["date"].count("19 Jan 2026") == 2


def test_progress_follows_the_episode(page, store):
    page.tabs.active = page.PROGRESS_TAB
    page.pickers.patient_select.value = ""
    other = store.create_patient({"code": "P-NONE"}, "t")
    page.pickers.patient_select.value = str(other.id)
    assert "Open an episode" in page.progress.summary.text
    assert page.progress.marks_source.data["x"] == []


def test_pain_and_scores_share_one_time_axis_covering_every_date(page):
    page.tabs.active = page.PROGRESS_TAB
    view = page.progress
    [womac] = view.instruments.children
    assert womac.x_range is view.nprs.x_range  # read down one date across the charts
    start, end = view.dates.start, view.dates.end
    assert start < dt.datetime(2026, 1, 5) and end > dt.datetime(2026, 2, 2)  # last WOMAC
    assert end - start < dt.timedelta(days=60)


def test_small_multiples_show_the_knee_close_up_when_only_the_knee_was_needled(store, clinician):
    patient = store.create_patient({"code": "P-KNEE"}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "knee_osteoarthritis", "affected_side": "left", "start_date": "2026-01-01"},
        "t",
    )
    session = store.create_session(episode.id, {"date": "2026-01-05", "clinician": "AB"}, "t")
    for structure in ("mpfl", "medial_joint_line", "pes_anserinus"):
        store.add_mark(session.id, mark_fields("anterior", structure, "left", "structures"), "t")
    page = make_document(Document(), store=store, atlas=ATLAS, user=clinician)
    page.pickers.patient_select.value = str(patient.id)
    page.tabs.active = page.PROGRESS_TAB
    view = page.progress
    ys = [y for ring in view.outline_source.data["ys"] for y in ring]
    body_height = ATLAS.bounds("anterior")[3] - ATLAS.bounds("anterior")[1]
    assert max(ys) - min(ys) < 0.4 * body_height  # the knee, not the whole body
    dots = view.marks_source.data["y"]
    assert len(dots) == 3 and min(ys) < min(dots) and max(dots) < max(ys)
