"""End to end: the clinician page in a real Chromium against a real `tpmap serve`."""

from __future__ import annotations

import time
from pathlib import Path

from tpmap import load_atlas
from tpmap.store import Store

from bokeh_page import column, model_attr, screen_xy, tap, wait_for_bokeh
from conftest import sign_in

ATLAS = load_atlas()


def inside(view, muscle, side):
    p = ATLAS.region(view, muscle, side).polygon.representative_point()
    return p.x, p.y


def status(page) -> str:
    return model_attr(page, "status", "text") or ""


def wait_status(page, text: str) -> None:
    page.wait_for_function(
        "t => [...Bokeh.index.all_views()].find(v => v.model.name === 'status')"
        ".model.text.includes(t)",
        arg=text,
    )


def wait_marks(store: Store, session_id: int, n: int, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = store.session_marks(session_id)
        if len(marks) >= n:
            return marks
        time.sleep(0.1)
    return store.session_marks(session_id)


def open_new_session(
    serve, page, db: Path, code: str, condition: str, side: str, **session: object
) -> tuple[Store, object, object]:
    """A database with one patient, episode and (empty) session, served and opened on the
    page by a signed-in clinician; returns the store, the episode and the session."""
    url = f"sqlite:///{db}"
    store = Store(url)
    patient = store.create_patient({"code": code}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": condition, "affected_side": side, "start_date": "2026-01-05"},
        "t",
    )
    fields = {"date": "2026-01-06", "clinician": "AB", **session}
    opened = store.create_session(episode.id, fields, "t")
    server = serve(url)
    sign_in(page, server, next_path="/annotate")
    wait_for_bokeh(page)
    page.locator(".tp-patient select").select_option(label=code)
    wait_status(page, "0 marks")
    return store, episode, opened


def test_create_patient_and_session_tap_two_muscles_reload(serve, page, tmp_path):
    server = serve()
    sign_in(page, server, next_path="/annotate")
    wait_for_bokeh(page)
    page.locator(".tp-new-patient button").click()
    page.locator(".tp-new-code input").fill("P-E2E-1")
    page.locator(".tp-new-code input").press("Enter")
    page.locator(".tp-new-sex select").select_option(label="Female")
    page.locator(".tp-create-patient button").click()
    wait_status(page, "No episode yet")
    page.locator(".tp-new-condition select").select_option(label="Patellofemoral pain")
    page.locator(".tp-new-affected select").select_option(label="Right")
    page.locator(".tp-create-episode button").click()
    wait_status(page, "No session yet")
    page.locator(".tp-create-session button").click()
    wait_status(page, "Session of")

    tap(page, "atlas-anterior", *inside("anterior", "vmo", "right"))
    wait_status(page, "Saved: Vastus medialis obliquus (right)")
    tap(page, "atlas-posterior", *inside("posterior", "gluteus_medius", "right"))
    wait_status(page, "Saved: Gluteus medius (right)")
    page.screenshot(path=str(tmp_path / "annotate.png"))

    store = Store(server.db_url)
    (patient,) = store.find_patients("P-E2E-1")
    (episode,) = store.list_episodes(patient.id)
    (session,) = store.list_sessions(episode.id)
    marks = store.session_marks(session.id)
    assert sorted((m.muscle, m.side) for m in marks) == [
        ("gluteus_medius", "right"),
        ("vmo", "right"),
    ]

    page.reload()
    wait_for_bokeh(page)
    page.locator(".tp-patient select").select_option(label="P-E2E-1")
    wait_status(page, "2 marks")
    assert len(column(page, "marks-anterior", "id")) == 1
    assert len(column(page, "marks-posterior", "id")) == 1

    # Two taps 100 ms apart (a DoubleTap for Bokeh) give two marks.
    b = screen_xy(page, "atlas-posterior", *inside("posterior", "biceps_femoris", "left"))
    a = screen_xy(page, "atlas-posterior", *inside("posterior", "quadratus_lumborum", "left"))
    page.mouse.click(*a)
    page.wait_for_timeout(100)
    page.mouse.click(*b)
    marks = wait_marks(store, session.id, 4)
    assert sorted(m.muscle for m in marks) == [
        "biceps_femoris",
        "gluteus_medius",
        "quadratus_lumborum",
        "vmo",
    ]
    store.close()


def test_a_tap_off_the_body_says_so(serve, page):
    server = serve()
    sign_in(page, server, next_path="/annotate")
    wait_for_bokeh(page)
    before = status(page)
    tap(page, "atlas-anterior", 0.0, 60.0)
    page.wait_for_function(
        "t => Bokeh.documents[0].get_model_by_name('status').text !== t", arg=before
    )
    assert "nothing was saved" in status(page).lower()


def test_a_finger_tap_on_a_tablet_is_kept(serve, page, tmp_path):
    store, _episode, session = open_new_session(
        serve, page, tmp_path / "touch.db", "P-TOUCH", "lateral_knee_pain", "left"
    )
    page.touchscreen.tap(*screen_xy(page, "atlas-anterior", *inside("anterior", "vmo", "left")))
    wait_status(page, "Saved: Vastus medialis obliquus (left)")
    assert [m.muscle for m in wait_marks(store, session.id, 1)] == ["vmo"]
    store.close()


def test_the_structures_layer_records_the_ligament_tapped(serve, page, tmp_path):
    store, _episode, session = open_new_session(
        serve, page, tmp_path / "structures.db", "P-PERI", "knee_osteoarthritis", "left"
    )
    page.get_by_role("button", name="Ligaments, tendons, bone").click()
    # The left knee (the affected one) close up: the MPFL and the joint line are tappable.
    for structure in ("mpfl", "medial_joint_line"):
        region = ATLAS.region("anterior", structure, "left", "structures")
        p = region.polygon.representative_point()
        page.wait_for_timeout(300)  # the close-up is drawn
        tap(page, "atlas-anterior", p.x, p.y)
        wait_status(page, f"Saved: {ATLAS.muscle_name(structure)} (left)")
    marks = wait_marks(store, session.id, 2)
    assert [(m.muscle, m.layer) for m in marks] == [
        ("mpfl", "structures"),
        ("medial_joint_line", "structures"),
    ]
    store.close()


def test_outcome_scores_entered_on_the_page_show_in_the_progress_view(serve, page, tmp_path):
    store, episode, _session = open_new_session(
        serve,
        page,
        tmp_path / "outcomes.db",
        "P-SCORE",
        "knee_osteoarthritis",
        "left",
        nprs_before=7,
    )
    page.get_by_role("tab", name="Outcomes").click()
    for instrument, score in (("WOMAC physical function", "31"), ("Kujala", "64")):
        page.locator(".tp-outcome-instrument select").select_option(label=instrument)
        page.locator(".tp-outcome-score input").fill(score)
        page.get_by_role("button", name="Add score").click()
        wait_status(page, f"Saved {instrument} {score}")
    assert [(o.instrument, o.score) for o in store.list_outcomes(episode.id)] == [
        ("womac_function", 31.0),
        ("kujala", 64.0),
    ]
    page.get_by_role("tab", name="Progress").click()
    page.wait_for_function(
        "() => (Bokeh.documents[0].get_model_by_name('progress-summary').text || '')"
        ".includes('Kujala: 64')"
    )
    summary = model_attr(page, "progress-summary", "text")
    assert "WOMAC physical function: 31" in summary and "NPRS: 7" in summary
    shown = page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('progress-instruments')"
        ".children.map(f => f.name)"
    )
    assert shown == ["progress-womac_function", "progress-kujala"]
    store.close()


def test_a_kujala_score_from_its_item_answers_is_saved(serve, page, tmp_path):
    store, episode, _session = open_new_session(
        serve, page, tmp_path / "items.db", "P-ITEMS", "patellofemoral_pain", "right"
    )
    page.get_by_role("tab", name="Outcomes").click()
    page.get_by_label("Instrument").select_option(label="Kujala")
    page.get_by_role("button", name="Enter item answers").click()
    answers = {
        "1. Limp": "Slight or periodical (3)",
        "2. Support": "Full support without pain (5)",
        "3. Walking": "More than 2 km (3)",
        "4. Stairs": "Slight pain when descending (8)",
        "5. Squatting": "Painful each time (3)",
        "6. Running": "Slight pain from start (6)",
        "7. Jumping": "Slight difficulty (7)",
        "8. Prolonged sitting with the knees flexed": "Pain after exercise (8)",
        "9. Pain": "Slight and occasional (8)",
        "10. Swelling": "After severe exertion (8)",
        "11. Abnormal painful kneecap (patellar) movements": "None (10)",
        "12. Atrophy of thigh": "Slight (3)",
        "13. Flexion deficiency": "None (5)",
    }
    for item, label in answers.items():
        page.get_by_label(item, exact=True).select_option(label=label)
    score = page.locator(".tp-outcome-score input")
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('outcome-score').value === '77'"
    )
    assert score.input_value() == "77"  # the total is where the clinician sees it
    page.get_by_role("button", name="Add score").click()
    wait_status(page, "Saved Kujala 77")
    assert [(o.instrument, o.score) for o in store.list_outcomes(episode.id)] == [("kujala", 77)]
    store.close()
