"""The clinician page at document level: Bokeh events against a real store, part by part."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from bokeh.document import Document
from bokeh.events import DoubleTap, Tap
from sqlalchemy import text

from tpmap import model
from tpmap.apps.annotate import AnnotatePage, make_document
from tpmap.apps.annotate._layout import PAGE_MARGIN, PANEL_MIN, plan_layout
from tpmap.apps.annotate._pickers import parse_id

from diagram_points import ATLAS, inside, mark_fields

XSS = '<img src=x onerror="window.__x=1">'


@pytest.fixture
def page(store, clinician):
    """A page with a patient, episode and session chosen (and one earlier session)."""
    patient = store.create_patient({"code": "P-0001", "sex": "female", "birth_year": 1990}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "patellofemoral_pain", "affected_side": "right", "start_date": "2026-01-05"},
        "t",
    )
    earlier = store.create_session(episode.id, {"date": "2026-01-05", "clinician": "AB"}, "t")
    store.add_mark(earlier.id, mark_fields("posterior", "gluteus_medius", "right"), "t")
    session = store.create_session(episode.id, {"date": "2026-01-12", "clinician": "AB"}, "t")
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user=clinician)
    pg.pickers.patient_select.value = str(patient.id)
    assert pg.pickers.episode_select.value == str(episode.id)
    assert pg.pickers.session_select.value == str(session.id)
    pg.session = session
    pg.patient = patient
    pg.episode = episode
    return pg


def fig(pg: AnnotatePage, view: str):
    return pg.doc.select_one({"name": f"atlas-{view}"})


def tap(pg: AnnotatePage, view: str, muscle: str, side: str, layer: str = "superficial"):
    x, y = inside(view, muscle, side, layer)
    pg.doc.callbacks.trigger_event(Tap(fig(pg, view), x=x, y=y))


def stored(store, pg):
    return store.session_marks(pg.session.id)


# -- the diagram: taps ----------------------------------------------------------------------------


def test_a_tap_on_a_muscle_is_stored_with_its_muscle_and_side(page, store):
    tap(page, "anterior", "vmo", "right")
    assert [(m.muscle, m.side, m.view, m.layer) for m in stored(store, page)] == [
        ("vmo", "right", "anterior", "superficial")
    ]
    assert page.status.text == "Saved: Vastus medialis obliquus (right)"
    (m,) = stored(store, page)
    assert page.selected == m.id
    data = page.diagram.sources["anterior"].data
    assert list(data["state"]) == ["selected"] and list(data["id"]) == [m.id]


def test_quick_taps_tap_then_doubletap_are_all_kept(page, store):
    f = fig(page, "anterior")
    x1, y1 = inside("anterior", "vmo", "right")
    x2, y2 = inside("anterior", "rectus_femoris", "left")
    page.doc.callbacks.trigger_event(Tap(f, x=x1, y=y1))
    page.doc.callbacks.trigger_event(DoubleTap(f, x=x2, y=y2))
    assert sorted(m.muscle for m in stored(store, page)) == ["rectus_femoris", "vmo"]


def test_a_tap_off_the_body_stores_nothing(page, store):
    page.doc.callbacks.trigger_event(Tap(fig(page, "anterior"), x=0.0, y=60.0))
    assert stored(store, page) == []
    assert page.status.text == "Not on a muscle: nothing was saved." and page.status.is_error


@pytest.mark.parametrize(
    ("x", "y"), [(math.nan, 60.0), (math.inf, 60.0), (1e300, -1e300), (None, 3.0)]
)
def test_taps_with_impossible_coordinates_change_nothing(page, store, x, y):
    before = page.status.text
    page.diagram.tap("anterior", x, y)
    page.diagram.tap("no_such_view", 1.0, 60.0)
    assert stored(store, page) == []
    assert page.status.text in (before, "Not on a muscle: nothing was saved.")


def test_deep_layer_taps_store_the_deep_muscle(page, store):
    page.diagram.layer_switch.active = 1
    tap(page, "posterior", "piriformis", "right", "deep")
    (m,) = stored(store, page)
    assert (m.muscle, m.layer) == ("piriformis", "deep")


def test_tapping_a_mark_selects_it_instead_of_adding(page, store):
    x, y = inside("anterior", "vmo", "left")
    f = fig(page, "anterior")
    page.doc.callbacks.trigger_event(Tap(f, x=x, y=y))
    page.select(None)
    page.doc.callbacks.trigger_event(Tap(f, x=x + 0.3, y=y))
    assert len(stored(store, page)) == 1
    assert page.selected == stored(store, page)[0].id


def test_no_session_no_mark(store, clinician):
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user=clinician)
    x, y = inside("anterior", "vmo", "left")
    doc.callbacks.trigger_event(Tap(doc.select_one({"name": "atlas-anterior"}), x=x, y=y))
    assert "session" in pg.status.text.lower() and pg.status.is_error
    assert store.counts()["marks"] == 0


def test_earlier_sessions_are_shown_faded_with_dates(page):
    earlier = page.diagram.earlier_sources["posterior"].data
    assert earlier["date"] == ["2026-01-05"]
    assert earlier["label"] == ["Gluteus medius (right)"]


# -- the diagram: drags ---------------------------------------------------------------------------


def drag_to(page, view: str, moves: dict[int, tuple[float, float]]):
    """Send the data change Bokeh's drag tool sends: the whole source with points moved."""
    src = page.diagram.sources[view]
    data = {k: list(v) for k, v in src.data.items()}
    for i, mark_id in enumerate(data["id"]):
        if mark_id in moves:
            data["x"][i], data["y"][i] = moves[mark_id]
    src.data = data


def test_a_drag_moves_the_mark_and_finds_its_muscle_again(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    nx, ny = inside("anterior", "rectus_femoris", "right")
    drag_to(page, "anterior", {m.id: (nx, ny)})
    moved = store.get_mark(m.id)
    assert (moved.muscle, moved.x, moved.y) == ("rectus_femoris", nx, ny)
    assert page.status.text == "Moved to Rectus femoris (right)."


def test_a_drag_released_off_the_body_puts_the_mark_back_and_says_so_once(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    drag_to(page, "anterior", {m.id: (0.0, 60.0)})
    assert store.get_mark(m.id).muscle == "vmo"
    assert list(page.diagram.sources["anterior"].data["x"]) == [m.x]
    assert page.status.text == "Not on a muscle: Vastus medialis obliquus (right) was put back."


def test_a_change_that_moves_two_marks_moves_neither(page, store):
    """Bokeh's drag tool moves every selected point: the server refuses such a change."""
    tap(page, "anterior", "vmo", "right")
    tap(page, "anterior", "vastus_lateralis", "right")
    vmo, vl = stored(store, page)
    nx, ny = inside("anterior", "rectus_femoris", "right")
    drag_to(page, "anterior", {vmo.id: (nx, ny), vl.id: (vl.x, vl.y + 3.0)})
    assert [(m.x, m.y, m.muscle) for m in stored(store, page)] == [
        (vmo.x, vmo.y, "vmo"),
        (vl.x, vl.y, "vastus_lateralis"),
    ]
    assert page.status.text == "Drag one mark at a time: nothing was moved."
    # The browser's copy is drawn back from the database.
    assert sorted(page.diagram.sources["anterior"].data["y"]) == sorted([vmo.y, vl.y])


def test_dragging_one_mark_leaves_the_selected_one_where_it_is(page, store):
    tap(page, "anterior", "vastus_lateralis", "right")
    tap(page, "anterior", "vmo", "left")
    vl, vmo = stored(store, page)
    page.select(vl.id)  # the selected mark is not the one dragged
    nx, ny = inside("anterior", "rectus_femoris", "left")
    drag_to(page, "anterior", {vmo.id: (nx, ny)})
    after = {m.id: m for m in stored(store, page)}
    assert (after[vl.id].x, after[vl.id].y) == (vl.x, vl.y)
    assert after[vmo.id].muscle == "rectus_femoris"
    # The browser never keeps a selection on the draggable source.
    assert list(page.diagram.sources["anterior"].selected.indices) == []


def test_a_drag_with_forged_rows_changes_nothing(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    src = page.diagram.sources["anterior"]
    forged = {k: list(v) for k, v in src.data.items()}
    forged["id"] = [m.id + 1000]
    forged["x"] = [1.0]
    src.data = forged
    nan = {k: list(v) for k, v in page.diagram.sources["anterior"].data.items()}
    nan["x"] = [math.nan]
    page.diagram.sources["anterior"].data = nan
    assert (store.get_mark(m.id).x, store.get_mark(m.id).y) == (m.x, m.y)
    assert list(page.diagram.sources["anterior"].data["id"]) == [m.id]


# -- delete and undo ------------------------------------------------------------------------------


def test_delete_then_undo_brings_the_mark_back_selected(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    page.diagram.delete()
    assert stored(store, page) == [] and page.selected is None
    assert page.diagram.sources["anterior"].data["id"] == []
    assert page.status.text == "Deleted Vastus medialis obliquus (right). Undo brings it back."
    page.diagram.undo()
    assert [k.id for k in stored(store, page)] == [m.id]
    assert page.selected == m.id
    assert page.mark_form.body.visible
    assert page.status.text.startswith("Undid deleting")


def test_undo_of_a_move_puts_it_back_and_selects_it(page, store):
    tap(page, "anterior", "vmo", "right")
    tap(page, "anterior", "vastus_lateralis", "left")
    vmo, vl = stored(store, page)
    drag_to(page, "anterior", {vmo.id: inside("anterior", "rectus_femoris", "right")})
    page.select(vl.id)
    page.diagram.undo()
    assert store.get_mark(vmo.id).muscle == "vmo"
    assert page.selected == vmo.id


def test_delete_without_a_selection_says_what_to_do(page, store):
    page.diagram.delete()
    assert page.status.is_error and "Tap a mark first" in page.status.text


# -- the mark form --------------------------------------------------------------------------------


def test_fields_show_as_they_apply_and_save_as_typed(page, store):
    tap(page, "anterior", "vastus_lateralis", "right")
    (m,) = stored(store, page)
    f = page.mark_form.fields
    assert page.mark_form.body.visible
    assert not f["estim_frequency_hz"].layout.visible
    f["technique"].widget.value = "electrical"
    assert f["estim_frequency_hz"].layout.visible
    f["estim_frequency_hz"].widget.value = "2"
    f["depth_mm"].widget.value = "30"
    f["needle_gauge_mm"].widget.value = "0,25"  # a decimal comma is a decimal
    f["referral_reproduced"].widget.value = "yes"
    s = store.get_mark(m.id)
    assert (s.technique, s.estim_frequency_hz, s.depth_mm, s.needle_gauge_mm) == (
        "electrical",
        2,
        30,
        0.25,
    )
    assert s.referral_reproduced is True
    assert page.status.text == "Saved referral reproduced of Vastus lateralis (right): Yes"
    # Back to a non-electrical technique: the stimulation settings go with it.
    f["technique"].widget.value = "pistoning"
    s = store.get_mark(m.id)
    assert (s.technique, s.estim_frequency_hz) == ("pistoning", None)
    assert not f["estim_frequency_hz"].layout.visible


NUMERIC_MARK_FIELDS = [name for name in model.MARK_DETAIL_FIELDS if model.MARK_FIELDS[name].numeric]


@pytest.mark.parametrize("name", NUMERIC_MARK_FIELDS)
def test_a_bad_number_gets_its_message_keeps_what_was_typed_and_stores_nothing(page, store, name):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    f = page.mark_form.fields
    f["technique"].widget.value = "electrical"  # every field applies
    f["needle_length_mm"].widget.value = "40"
    f["depth_mm"].widget.value = "25"
    spec = model.MARK_FIELDS[name]
    for typed in ("999", "-5", "deep", "1e400", "nan"):
        before = store.get_mark(m.id)
        f[name].widget.value = typed
        after = store.get_mark(m.id)
        assert getattr(after, name) == getattr(before, name), typed
        assert f[name].invalid and f[name].message.text == spec.message
        assert f[name].widget.value == typed  # what was typed stays until corrected
        assert page.status.is_error and spec.message in page.status.text
    # An empty field typed out of range stays empty: never stored as 0.
    f[name].widget.value = ""
    f[name].widget.value = "100000"
    assert getattr(store.get_mark(m.id), name) is None


def test_a_rejected_value_stays_while_other_fields_are_saved(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    f = page.mark_form.fields
    f["retention_min"].widget.value = "999"
    f["insertions"].widget.value = "3"  # another field saves meanwhile
    assert store.get_mark(m.id).insertions == 3
    assert store.get_mark(m.id).retention_min is None
    assert f["retention_min"].widget.value == "999" and f["retention_min"].invalid
    f["retention_min"].widget.value = "10"  # corrected: saved, message gone
    assert store.get_mark(m.id).retention_min == 10
    assert not f["retention_min"].invalid


def test_a_cross_field_rule_shows_on_the_field_it_names(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    f = page.mark_form.fields
    f["needle_length_mm"].widget.value = "30"
    f["depth_mm"].widget.value = "45"
    assert store.get_mark(m.id).depth_mm is None
    assert f["depth_mm"].message.text == "Depth cannot exceed the needle length"


def test_choosing_another_mark_shows_its_values_and_clears_messages(page, store):
    tap(page, "anterior", "vmo", "right")
    tap(page, "anterior", "vastus_lateralis", "left")
    vmo, vl = stored(store, page)
    f = page.mark_form.fields
    f["depth_mm"].widget.value = "12"
    page.select(vmo.id)
    f["depth_mm"].widget.value = "abc"
    page.select(vl.id)
    assert f["depth_mm"].widget.value == "12" and not f["depth_mm"].invalid
    page.select(vmo.id)
    assert f["depth_mm"].widget.value == ""


def test_a_forged_choice_is_refused_with_a_message(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    f = page.mark_form.fields
    f["technique"].widget.value = "acupuncture"
    f["muscle"].widget.value = "Robert'); DROP TABLE marks;--"
    assert store.get_mark(m.id).technique is None
    assert store.get_mark(m.id).muscle == "vmo"
    assert f["muscle"].invalid


def test_the_mark_title_and_note_are_text(page, store):
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    page.mark_form.fields["note"].widget.value = XSS
    assert store.get_mark(m.id).note == XSS
    assert "<img" not in page.mark_form.title.text
    assert page.mark_form.fields["note"].widget.value == XSS  # an input's value, not markup


# -- the session panel ----------------------------------------------------------------------------


def test_nprs_ppt_and_adverse_events(page, store):
    sp = page.session_panel
    sp.nprs["nprs_before"].widget.value = "7"
    sp.nprs["nprs_after"].widget.value = "4"
    s = store.get_session(page.session.id)
    assert (s.nprs_before, s.nprs_after) == (7, 4)
    sp.ppts.fields["site"].widget.value = "VMO"
    sp.ppts.fields["side"].widget.value = "right"
    sp.ppts.fields["kg_cm2"].widget.value = "3,5"
    sp.ppts.add()
    ((ppt),) = store.list_pressure_pain_thresholds(page.session.id)
    assert (ppt.site, ppt.side, ppt.kg_cm2) == ("VMO", "right", 3.5)
    assert sp.ppts.fields["kg_cm2"].value == ""  # ready for the next reading
    sp.aes.fields["type"].widget.value = "bruising"
    sp.aes.fields["severity"].widget.value = "mild"
    sp.aes.add()
    assert [a.type for a in store.list_adverse_events(page.session.id)] == ["bruising"]
    sp.aes.add()  # nothing chosen: messages next to the fields, nothing stored
    assert len(store.list_adverse_events(page.session.id)) == 1
    assert sp.aes.fields["type"].message.text == "Adverse event is required"
    assert page.status.is_error
    sp.aes.fields["type"].widget.value = "other"
    sp.aes.fields["severity"].widget.value = "mild"
    sp.aes.add()  # "other" needs a note: said next to the note
    assert sp.aes.fields["note"].message.text == "Describe the adverse event in the note"
    # Entered by mistake: taken out again.
    sp.ppts.remove()  # nothing chosen: a message, nothing removed
    assert "Choose the pressure pain threshold" in page.status.text
    sp.ppts.pick.value = sp.ppts.pick.options[1][0]
    sp.ppts.remove()
    assert store.list_pressure_pain_thresholds(page.session.id) == []
    sp.aes.pick.value = sp.aes.pick.options[1][0]
    sp.aes.remove()
    assert store.list_adverse_events(page.session.id) == []
    assert "No adverse events recorded" in sp.aes.listing.text


@pytest.mark.parametrize("typed", ["21", "-1", "strong", "inf"])
def test_a_bad_pressure_pain_threshold_is_refused_next_to_the_field(page, store, typed):
    sp = page.session_panel
    sp.ppts.fields["site"].widget.value = "VMO"
    sp.ppts.fields["kg_cm2"].widget.value = typed
    sp.ppts.add()
    assert store.list_pressure_pain_thresholds(page.session.id) == []
    field = sp.ppts.fields["kg_cm2"]
    assert field.message.text == "Pressure pain threshold is between 0 and 20 kg/cm2"
    assert field.value == typed


@pytest.mark.parametrize("typed", ["11", "-1", "3.5", "seven"])
def test_a_forged_nprs_is_refused(page, store, typed):
    field = page.session_panel.nprs["nprs_before"]
    field.widget.value = typed  # a Select sends whatever the browser (or an attacker) sends
    assert store.get_session(page.session.id).nprs_before is None
    assert field.message.text == "NPRS is a whole number from 0 to 10"


def test_typed_text_in_the_session_panel_is_shown_as_text(page, store):
    sp = page.session_panel
    sp.ppts.fields["site"].widget.value = XSS
    sp.ppts.fields["kg_cm2"].widget.value = "2"
    sp.ppts.add()
    sp.aes.fields["type"].widget.value = "other"
    sp.aes.fields["severity"].widget.value = "mild"
    sp.aes.fields["note"].widget.value = XSS
    sp.aes.add()
    assert store.list_pressure_pain_thresholds(page.session.id)[0].site == XSS[:64]
    for listing in (sp.ppts.listing.text, sp.aes.listing.text):
        assert "<img" not in listing and "&lt;img" in listing


# -- pickers and forms ----------------------------------------------------------------------------


def test_create_patient_episode_and_session_from_the_page(store, clinician):
    doc = Document()
    pg = make_document(doc, store=store, atlas=ATLAS, user=clinician)
    pk = pg.pickers
    pk.patient_fields["code"].set("Jane Smith")  # looks like a name: refused
    pk.create_patient()
    assert store.find_patients("") == []
    assert "pseudonymous" in pk.patient_fields["code"].message.text
    pk.patient_fields["code"].set("P-0100")
    pk.patient_fields["sex"].set("male")
    pk.patient_fields["birth_year"].set("3000")  # out of range: refused next to the field
    pk.create_patient()
    assert store.find_patients("") == []
    assert pk.patient_fields["birth_year"].message.text == (
        "Birth year must be between 1900 and this year"
    )
    pk.patient_fields["birth_year"].set("1980")
    pk.create_patient()
    (patient,) = store.find_patients("P-0100")
    assert patient.birth_year == 1980
    pk.episode_fields["condition"].set("knee_osteoarthritis")
    pk.episode_fields["affected_side"].set("left")
    pk.episode_fields["start_date"].set(dt.date(2026, 3, 1))
    pk.episode_fields["symptom_duration_weeks"].set("99999")
    pk.create_episode()
    assert store.list_episodes(patient.id) == []
    assert "Symptom duration" in pk.episode_fields["symptom_duration_weeks"].message.text
    pk.episode_fields["symptom_duration_weeks"].set("12")
    pk.create_episode()
    (episode,) = store.list_episodes(patient.id)
    assert episode.symptom_duration_weeks == 12
    pk.session_fields["date"].set(dt.date.today() + dt.timedelta(days=3))
    pk.create_session()
    assert store.list_sessions(episode.id) == []
    assert pk.session_fields["date"].message.text == "Session date cannot be in the future"
    pk.session_fields["date"].set(dt.date(2026, 3, 2))
    pk.create_session()
    (session,) = store.list_sessions(episode.id)
    assert pg.state.session_id == session.id and session.clinician == "tester"
    x, y = inside("anterior", "adductors", "left")
    doc.callbacks.trigger_event(Tap(doc.select_one({"name": "atlas-anterior"}), x=x, y=y))
    assert [m.muscle for m in store.session_marks(session.id)] == ["adductors"]


@pytest.mark.parametrize("value", ["abc", "-3", "0", "1e3", "99999", "٣", " 1"])
def test_a_forged_patient_id_opens_nothing(page, store, value):
    before = page.state.session_id
    page.pickers.patient_select.value = value
    assert page.status.is_error and page.status.text.startswith("Not found")
    assert page.state.session_id in (before, None)
    assert parse_id(value) is None or store.counts()["patients"] < parse_id(value)


def test_a_session_of_another_episode_is_not_opened(page, store):
    other = store.create_patient({"code": "P-0002"}, "t")
    ep = store.create_episode(
        other.id,
        {"condition": "knee_osteoarthritis", "affected_side": "left", "start_date": "2026-01-01"},
        "t",
    )
    foreign = store.create_session(ep.id, {"date": "2026-01-02", "clinician": "CD"}, "t")
    page.pickers.session_select.value = str(foreign.id)
    assert page.state.session_id != foreign.id
    assert page.status.text.startswith("Not found")
    page.pickers.episode_select.value = str(ep.id)
    assert page.state.episode_id == page.episode.id


def test_a_failure_shows_a_reference_never_the_database_error(page, store, caplog):
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE mark_changes"))
    tap(page, "anterior", "vmo", "right")
    assert page.status.is_error and "reference" in page.status.text
    assert "mark_changes" not in page.status.text and "SQL" not in page.status.text
    ref = page.status.text.split("reference ")[1][:6]
    assert any(ref in r.getMessage() for r in caplog.records)


# -- the marks table ------------------------------------------------------------------------------


def test_the_table_lists_marks_and_choosing_a_row_selects(page, store):
    tap(page, "anterior", "vmo", "right")
    tap(page, "posterior", "gluteus_medius", "left")
    vmo, _gm = stored(store, page)
    page.tabs.active = page.MARKS_TAB  # the table is drawn when its tab is opened
    table = page.marks_table.source
    assert list(table.data["muscle"]) == [
        "Vastus medialis obliquus (right)",
        "Gluteus medius (left)",
    ]
    assert list(table.selected.indices) == [1]
    table.selected.indices = [0]
    assert page.selected == vmo.id
    table.selected.indices = [7]  # no such row: nothing happens
    assert page.selected == vmo.id


# -- layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (1280, 800), (768, 1024)])
def test_the_plan_fits_the_window_and_gives_the_diagrams_the_height(page, width, height):
    plan = plan_layout(width, height, page.diagram.pair_width)
    used = page.diagram.pair_width(plan.figure_height) + plan.panel_width + 2 * PAGE_MARGIN + 12
    assert used <= width
    assert plan.panel_width >= PANEL_MIN
    # One step taller would no longer fit: a taller window gives taller figures, unless the
    # pair of views already fills the width beside the narrowest panel.
    taller = page.diagram.pair_width(plan.figure_height + 4) + PANEL_MIN + 2 * PAGE_MARGIN + 12
    grown = plan_layout(width, height + 40, page.diagram.pair_width)
    assert taller > width or grown.figure_height > plan.figure_height


def test_the_window_size_from_the_browser_resizes_the_page(page):
    page.viewport.data = {"width": [768], "height": [1024]}
    portrait = page.diagram.figures["anterior"].height
    page.viewport.data = {"width": [1280], "height": [800]}
    assert page.diagram.figures["anterior"].height > portrait
    assert page.tabs.width == page.plan.panel_width
    page.viewport.data = {"width": ["wide"], "height": [None]}  # not a size: ignored
    assert page.plan.width == 1280


def test_the_selected_mark_opens_the_mark_tab(page):
    page.tabs.active = 2
    tap(page, "anterior", "vmo", "right")
    assert page.tabs.active == 0


def test_the_form_reads_its_titles_and_choices_from_the_field_specifications(page):
    for name, field in page.mark_form.fields.items():
        spec = model.MARK_FIELDS[name]
        assert field.widget.title == spec.title
        if spec.kind == "choice":
            assert [v for v, _ in field.widget.options][1:] == list(spec.choices)
    assert (
        page.session_panel.ppts.fields["kg_cm2"].widget.title == "Pressure pain threshold (kg/cm2)"
    )


# -- the structures layer (ligaments, tendons, periosteum) ----------------------------------------


def structures_layer(page) -> None:
    page.diagram.layer_switch.active = list(model.LAYERS).index("structures")


def test_a_tap_on_each_structure_stores_that_structure(page, store):
    structures_layer(page)
    assert page.diagram.layer_switch.labels[-1] == "Ligaments, tendons, bone"
    regions = [r for v in ATLAS.views for r in ATLAS.regions_in(v, "structures")]
    assert {ATLAS.kind(r.muscle) for r in regions} == {"ligament", "tendon", "periosteum"}
    expected = []
    for r in regions:
        page.select(None)
        page.diagram.show_view_of(r.view)
        p = r.polygon.representative_point()
        page.diagram.tap(r.view, p.x, p.y)
        expected.append((r.view, r.muscle, r.side))
        if page.status.text.startswith("Selected"):
            expected.pop()  # a mark of a neighbour within reach: selecting it is right
    marks = stored(store, page)
    assert [(m.view, m.muscle, m.side) for m in marks] == expected
    assert {m.layer for m in marks} == {"structures"}
    assert len(expected) > len(regions) // 2
    assert {"mpfl", "medial_joint_line", "pes_anserinus"} <= {m.muscle for m in marks}


def test_the_structures_layer_shows_the_affected_knee_close_up(page):
    fig_a = fig(page, "anterior")
    full = (fig_a.x_range.start, fig_a.x_range.end, fig_a.y_range.start, fig_a.y_range.end)
    structures_layer(page)
    x0, x1, y0, y1 = fig_a.x_range.start, fig_a.x_range.end, fig_a.y_range.start, fig_a.y_range.end
    assert (y1 - y0) < (full[3] - full[2]) / 2  # zoomed at least twice
    assert y0 < 48.5 < y1  # the knee joint line is in the frame
    mpfl = ATLAS.region("anterior", "mpfl", "right", "structures").polygon
    assert x0 < mpfl.centroid.x < x1  # the affected (right) knee
    # Proportions kept: the figure's frame is not stretched.
    assert (x1 - x0) / (y1 - y0) == pytest.approx((full[1] - full[0]) / (full[3] - full[2]))
    page.diagram.layer_switch.active = 0
    assert (fig_a.x_range.start, fig_a.x_range.end, fig_a.y_range.start, fig_a.y_range.end) == full


def test_a_structure_mark_offers_structures_to_override(page, store):
    structures_layer(page)
    p = ATLAS.region("anterior", "mpfl", "right", "structures").polygon.representative_point()
    page.diagram.tap("anterior", p.x, p.y)
    (m,) = stored(store, page)
    assert m.muscle == "mpfl" and m.layer == "structures"
    muscle = page.mark_form.fields["muscle"].widget
    assert muscle.title == "Structure"
    ids = [v for v, _ in muscle.options][1:]
    assert "mpfl" in ids and "vmo" not in ids


# -- clinics: a clinician sees their own clinic's patients only ------------------------------------


def test_another_clinics_patient_cannot_be_opened_by_a_crafted_id(page, store):
    other = store.add_clinic("North clinic", user="tests")
    theirs = store.create_patient({"code": "P-NORTH"}, "t", clinic_id=other.id)
    episode = store.create_episode(
        theirs.id,
        {"condition": "knee_osteoarthritis", "affected_side": "left", "start_date": "2026-01-01"},
        "t",
    )
    session = store.create_session(episode.id, {"date": "2026-01-02", "clinician": "CD"}, "t")
    mark = store.add_mark(session.id, mark_fields("anterior", "vmo", "left"), "t")
    # Not offered by the search ...
    page.pickers.find("P-NORTH")
    assert "P-NORTH" not in [o[1] for o in page.pickers.patient_select.options]
    # ... and not opened when its id is sent anyway, as a patient, an episode or a session.
    opened = page.state.session_id
    for select, ident in (
        (page.pickers.patient_select, theirs.id),
        (page.pickers.episode_select, episode.id),
        (page.pickers.session_select, session.id),
    ):
        select.value = str(ident)
        assert page.status.text.startswith("Not found"), select.name
        assert page.state.session_id == opened
    # A drag naming their mark changes nothing either.
    page.diagram.drag("anterior", {"id": [mark.id], "x": [0.0], "y": [50.0]})
    assert store.get_mark(mark.id).x == mark.x
    assert store.session_marks(page.session.id) == []


def test_a_disabled_account_can_no_longer_record(page, store):
    store.set_user_active("tester", False, user="tests")
    tap(page, "anterior", "vmo", "right")
    assert store.session_marks(page.session.id) == []
    assert page.status.is_error and "Sign in again" in page.status.text


# -- hostile document events ----------------------------------------------------------------------


def test_a_patch_naming_a_model_or_attribute_that_does_not_exist_changes_nothing(page, store):
    """What a forged websocket message would carry: it is refused before any callback runs."""
    tap(page, "anterior", "vmo", "right")
    (m,) = stored(store, page)
    depth = page.mark_form.fields["depth_mm"].widget
    forged = [
        {"kind": "ModelChanged", "model": {"id": "p_not_here"}, "attr": "value", "new": "999"},
        {"kind": "ModelChanged", "model": {"id": depth.id}, "attr": "no_such_attr", "new": 1},
        {"kind": "ModelChanged", "model": {"id": depth.id}, "attr": "value", "new": {"x": 1}},
    ]
    refused = 0
    for event in forged:
        # Bokeh refuses an unknown model or a value of the wrong type, and ignores (with a
        # warning in the log) an attribute the model does not have.
        try:
            page.doc.apply_json_patch({"events": [event]})
        except Exception:
            refused += 1
    assert refused == 2
    assert store.get_mark(m.id) == m
    assert not page.mark_form.fields["depth_mm"].invalid
