"""The clinician page at document level: Bokeh events against a real store."""

from __future__ import annotations

import datetime as dt

import pytest
from bokeh.document import Document
from bokeh.events import DoubleTap, Tap

from tpmap import load_atlas
from tpmap.apps.annotate import make_document

ATLAS = load_atlas()


def inside(view: str, muscle: str, side: str, layer: str = "superficial"):
    p = ATLAS.region(view, muscle, side, layer).polygon.representative_point()
    return p.x, p.y


@pytest.fixture
def page(store):
    """A page with a patient, episode and session chosen."""
    patient = store.create_patient({"code": "P-0001", "sex": "female", "birth_year": 1990}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "patellofemoral_pain", "affected_side": "right", "start_date": "2026-01-05"},
        "t",
    )
    earlier = store.create_session(episode.id, {"date": "2026-01-05", "clinician": "AB"}, "t")
    x, y = inside("posterior", "gluteus_medius", "right")
    store.add_mark(
        earlier.id,
        {"view": "posterior", "x": x, "y": y, "muscle": "gluteus_medius", "side": "right",
         "layer": "superficial", "atlas_version": ATLAS.version},
        "t",
    )  # fmt: skip
    session = store.create_session(episode.id, {"date": "2026-01-12", "clinician": "AB"}, "t")
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user="tester")
    pg.patient_select.value = str(patient.id)
    assert pg.episode_select.value == str(episode.id)
    assert pg.session_select.value == str(session.id)
    pg.doc_ = doc
    pg.session = session
    return pg


def fig(pg, view):
    return pg.doc_.select_one({"name": f"atlas-{view}"})


def test_a_tap_on_a_muscle_is_stored_with_its_muscle_and_side(page, store):
    x, y = inside("anterior", "vmo", "right")
    page.doc_.callbacks.trigger_event(Tap(fig(page, "anterior"), x=x, y=y))
    marks = store.session_marks(page.session.id)
    assert [(m.muscle, m.side, m.view, m.layer) for m in marks] == [
        ("vmo", "right", "anterior", "superficial")
    ]
    assert marks[0].atlas_version == ATLAS.version and marks[0].created_by == "tester"
    assert "Saved: Vastus medialis obliquus (right)" in page.status.text
    src = page.sources["anterior"].data
    assert src["state"] == ["saved"] and src["id"] == [marks[0].id]
    assert page.table_source.data["muscle"] == ["Vastus medialis obliquus (right)"]


def test_quick_taps_tap_then_doubletap_are_all_kept(page, store):
    f = fig(page, "posterior")
    for muscle, event in (("gluteus_medius", Tap), ("quadratus_lumborum", DoubleTap)):
        x, y = inside("posterior", muscle, "left")
        page.doc_.callbacks.trigger_event(event(f, x=x, y=y))
    assert [m.muscle for m in store.session_marks(page.session.id)] == [
        "gluteus_medius",
        "quadratus_lumborum",
    ]


def test_a_tap_off_the_body_stores_nothing(page, store):
    page.doc_.callbacks.trigger_event(Tap(fig(page, "anterior"), x=0.0, y=60.0))
    page.doc_.callbacks.trigger_event(Tap(fig(page, "anterior"), x=40.0, y=200.0))
    assert store.session_marks(page.session.id) == []
    assert page.status.text.startswith("Not on a muscle")


def test_deep_layer_taps_store_the_deep_muscle(page, store):
    page.layer_switch.active = 1
    x, y = inside("posterior", "piriformis", "left", "deep")
    page.doc_.callbacks.trigger_event(Tap(fig(page, "posterior"), x=x, y=y))
    (m,) = store.session_marks(page.session.id)
    assert (m.muscle, m.layer) == ("piriformis", "deep")


def test_edit_details_shows_fields_as_they_apply_and_rejects_bad_values(page, store):
    x, y = inside("anterior", "vastus_lateralis", "right")
    page.doc_.callbacks.trigger_event(Tap(fig(page, "anterior"), x=x, y=y))
    (m,) = store.session_marks(page.session.id)
    w = page.mark_widgets
    assert page.selected == m.id
    assert not w["estim_frequency_hz"].visible
    w["technique"].value = "electrical"
    assert w["estim_frequency_hz"].visible
    w["estim_frequency_hz"].value = 2
    w["depth_mm"].value = 30
    stored = store.get_mark(m.id)
    assert (stored.technique, stored.estim_frequency_hz, stored.depth_mm) == ("electrical", 2, 30)
    w["depth_mm"].value = 400  # out of range: refused, nothing changes
    assert "Depth" in page.status.text and "150" in page.status.text
    assert store.get_mark(m.id).depth_mm == 30
    assert w["depth_mm"].value == 30
    w["referral_reproduced"].value = "yes"
    assert store.get_mark(m.id).referral_reproduced is True
    # Back to a non-electrical technique: the stimulation settings go with it.
    w["technique"].value = "pistoning"
    stored = store.get_mark(m.id)
    assert (stored.technique, stored.estim_frequency_hz) == ("pistoning", None)
    assert not w["estim_frequency_hz"].visible


def test_move_reclassifies_and_undo_and_delete(page, store):
    x, y = inside("anterior", "vmo", "right")
    page.doc_.callbacks.trigger_event(Tap(fig(page, "anterior"), x=x, y=y))
    (m,) = store.session_marks(page.session.id)
    # Drag (as PointDrawTool does it): the browser sends new coordinates for the mark.
    nx, ny = inside("anterior", "rectus_femoris", "right")
    src = page.sources["anterior"]
    src.data = {**src.data, "x": [nx], "y": [ny]}
    moved = store.get_mark(m.id)
    assert (moved.muscle, moved.x, moved.y) == ("rectus_femoris", nx, ny)
    # Dragging off the body is refused and the mark stays.
    src.data = {**src.data, "x": [0.0], "y": [60.0]}
    assert store.get_mark(m.id).muscle == "rectus_femoris"
    assert page.sources["anterior"].data["x"] == [nx]
    # Undo the move, then delete, then undo the delete.
    page._undo()
    assert store.get_mark(m.id).muscle == "vmo"
    page.select(m.id)
    page._delete()
    assert store.session_marks(page.session.id) == []
    assert page.sources["anterior"].data["id"] == []
    page._undo()
    assert [k.id for k in store.session_marks(page.session.id)] == [m.id]


def test_tapping_a_mark_selects_it_instead_of_adding(page, store):
    x, y = inside("anterior", "vmo", "left")
    f = fig(page, "anterior")
    page.doc_.callbacks.trigger_event(Tap(f, x=x, y=y))
    page.select(None)
    page.doc_.callbacks.trigger_event(Tap(f, x=x + 0.3, y=y))
    assert len(store.session_marks(page.session.id)) == 1
    assert page.selected is not None


def test_earlier_sessions_are_shown_faded_with_dates(page):
    earlier = page.earlier_sources["posterior"].data
    assert earlier["date"] == ["2026-01-05"]
    assert earlier["label"] == ["Gluteus medius (right)"]


def test_session_panel_nprs_ppt_and_adverse_events(page, store):
    page.nprs_before.value = "7"
    page.nprs_after.value = "4"
    s = store.get_session(page.session.id)
    assert (s.nprs_before, s.nprs_after) == (7, 4)
    page.ppt_site.value = "VMO right"
    page.ppt_value.value = 3.5
    page._add_ppt()
    assert [p.kg_cm2 for p in store.list_pressure_pain_thresholds(page.session.id)] == [3.5]
    page.ae_type.value = "bruising"
    page.ae_severity.value = "mild"
    page._add_ae()
    assert [a.type for a in store.list_adverse_events(page.session.id)] == ["bruising"]
    page.ae_type.value = ""
    page._add_ae()  # missing type: message, nothing stored
    assert len(store.list_adverse_events(page.session.id)) == 1
    assert page.status.styles["color"] == "#b00020"
    # Entered by mistake: taken out again.
    page._remove_ppt()  # nothing chosen: a message, nothing removed
    assert "Choose the reading" in page.status.text
    page.ppt_pick.value = page.ppt_pick.options[1][0]
    page._remove_ppt()
    assert store.list_pressure_pain_thresholds(page.session.id) == []
    page.ae_pick.value = page.ae_pick.options[1][0]
    page._remove_ae()
    assert store.list_adverse_events(page.session.id) == []
    assert "No adverse events recorded" in page.ae_list.text


def test_create_patient_episode_and_session_from_the_page(store):
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user="tester")
    pg.new_code.value = "Jane Smith"  # looks like a name: refused
    pg._create_patient()
    assert store.find_patients("") == []
    assert "pseudonymous" in pg.status.text.lower() or "code" in pg.status.text.lower()
    pg.new_code.value = "P-0100"
    pg.new_sex.value = "male"
    pg._create_patient()
    (patient,) = store.find_patients("P-0100")
    pg.new_condition.value = "knee_osteoarthritis"
    pg.new_affected.value = "left"
    pg.new_start.value = dt.date(2026, 3, 1)
    pg._create_episode()
    (episode,) = store.list_episodes(patient.id)
    pg.new_date.value = dt.date(2026, 3, 2)
    pg._create_session()
    (session,) = store.list_sessions(episode.id)
    assert pg.session_id == session.id
    x, y = inside("anterior", "adductors", "left")
    doc.callbacks.trigger_event(Tap(doc.select_one({"name": "atlas-anterior"}), x=x, y=y))
    assert [m.muscle for m in store.session_marks(session.id)] == ["adductors"]


def test_no_session_no_mark(store):
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user="tester")
    x, y = inside("anterior", "vmo", "left")
    doc.callbacks.trigger_event(Tap(doc.select_one({"name": "atlas-anterior"}), x=x, y=y))
    assert "session" in pg.status.text.lower()
    assert store.counts()["marks"] == 0
