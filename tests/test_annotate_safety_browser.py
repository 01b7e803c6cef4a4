"""End to end, as a clinician: the page stores exactly what was typed, moves only the mark
dragged, and shows typed text as text (Playwright, Debian's Chromium, a real `tpmap serve`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tpmap import model
from tpmap.store import Store

from bokeh_page import model_attr, screen_xy, wait_for_bokeh
from conftest import sign_in
from diagram_points import inside, mark_fields

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__x=1">'


@pytest.fixture
def clinic(tmp_path: Path):
    """A patient, an episode and a session with two marks; yields (url, session id, marks)."""
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    with Store(url) as store:
        patient = store.create_patient({"code": "P-SAFE"}, "seed")
        episode = store.create_episode(
            patient.id,
            {
                "condition": "patellofemoral_pain",
                "affected_side": "right",
                "start_date": "2026-01-05",
            },
            "seed",
        )
        session = store.create_session(
            episode.id, {"date": "2026-01-12", "clinician": "AB"}, "seed"
        )
        vl = store.add_mark(
            session.id, mark_fields("anterior", "vastus_lateralis", "right"), "seed"
        )
        vmo = store.add_mark(session.id, mark_fields("anterior", "vmo", "right"), "seed")
    yield url, session.id, (vl, vmo)


def shown_text(page, name: str) -> str:
    """The text a Div named ``name`` shows (inside Bokeh's shadow DOM)."""
    return page.locator(f".tp-{name} .bk-clearfix").inner_text()


def status(page) -> str:
    return model_attr(page, "status", "text") or ""


def wait_status(page, prefix: str) -> None:
    page.wait_for_function(
        "p => (Bokeh.documents[0].get_model_by_name('status').text || '').startsWith(p)",
        arg=prefix,
    )


def open_session(page, server) -> None:
    sign_in(page, server, next_path="/annotate")
    wait_for_bokeh(page)
    page.locator(".tp-patient select").select_option(label="P-SAFE")
    wait_status(page, "Session of")


def select_mark(page, muscle: str) -> None:
    page.mouse.click(*screen_xy(page, "atlas-anterior", *inside("anterior", muscle, "right")))
    wait_status(page, "Selected")


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_out_of_range_numbers_get_their_message_and_change_nothing(serve, page, clinic):
    url, session_id, (vl, _vmo) = clinic
    server = serve(url)
    open_session(page, server)
    select_mark(page, "vastus_lateralis")
    page.get_by_label("Technique").select_option(label="Electrical")  # every field shows
    wait_status(page, "Saved technique")
    depth = page.get_by_label("Depth (mm)")
    depth.fill("25")
    depth.press("Enter")
    wait_status(page, "Saved depth")
    store = Store(url)
    try:
        numeric = [n for n in model.MARK_DETAIL_FIELDS if model.MARK_FIELDS[n].numeric]
        for name in numeric:
            spec = model.MARK_FIELDS[name]
            for typed in ("999", "-5", "lots"):
                before = store.get_mark(vl.id)
                box = page.get_by_label(spec.title, exact=True)
                box.fill(typed)
                box.press("Tab")
                wait_status(page, f"Not saved: {spec.message}")
                page.locator(f".tp-mark-{name}-message .bk-clearfix").filter(
                    has_text=spec.message
                ).wait_for()
                assert shown_text(page, f"mark-{name}-message") == spec.message
                assert box.input_value() == typed  # what was typed stays
                assert getattr(store.get_mark(vl.id), name) == getattr(before, name)
            # Retention time was never stored: 999 must not become 0 (a Spinner would).
        assert store.get_mark(vl.id).retention_min is None
        assert store.get_mark(vl.id).depth_mm == 25
        # Corrected: saved, the message is gone.
        box = page.get_by_label("Retention time (min)")
        box.fill("10")
        box.press("Tab")
        wait_status(page, "Saved retention time")
        assert not page.locator(".tp-mark-retention_min-message").is_visible()
        assert eventually(lambda: store.get_mark(vl.id).retention_min == 10)

        # The session panel and the patient form keep the same rule.
        page.get_by_role("tab", name="Session", exact=True).click()
        page.get_by_label("Site").fill("VMO")
        page.get_by_label("Pressure pain threshold (kg/cm2)").fill("25")
        page.locator(".tp-add-ppt button").click()
        wait_status(page, "Not saved")
        assert shown_text(page, "ppt-value-message") == (
            "Pressure pain threshold is between 0 and 20 kg/cm2"
        )
        assert store.list_pressure_pain_thresholds(session_id) == []
        page.get_by_role("button", name="+ Patient").click()
        page.get_by_label("Patient code").fill("P-NEW")
        page.get_by_label("Birth year").fill("1850")
        page.get_by_role("button", name="Create patient").click()
        wait_status(page, "Not saved: Birth year must be between 1900 and this year")
        page.locator(".tp-new-birth-year-message .bk-clearfix").filter(
            has_text="Birth year must be between 1900 and this year"
        ).wait_for()
        assert store.patient_by_code("P-NEW") is None
    finally:
        store.close()


def test_a_drag_moves_only_the_mark_under_the_finger(serve, page, clinic):
    url, _session_id, (vl, vmo) = clinic
    server = serve(url)
    open_session(page, server)
    select_mark(page, "vastus_lateralis")  # a selected mark that must stay put
    start = screen_xy(page, "atlas-anterior", vmo.x, vmo.y)
    end = screen_xy(page, "atlas-anterior", *inside("anterior", "rectus_femoris", "right"))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=12)
    page.mouse.up()
    wait_status(page, "Moved to Rectus femoris (right)")
    store = Store(url)
    try:
        moved = eventually(lambda: store.get_mark(vmo.id).muscle == "rectus_femoris")
        assert moved
        still = store.get_mark(vl.id)
        assert (still.x, still.y, still.muscle) == (vl.x, vl.y, vl.muscle)

        # Released off the body: put back, said once.
        now = store.get_mark(vmo.id)
        page.mouse.move(*screen_xy(page, "atlas-anterior", now.x, now.y))
        page.mouse.down()
        page.mouse.move(*screen_xy(page, "atlas-anterior", 0.0, 62.0), steps=12)
        page.mouse.up()
        wait_status(page, "Not on a muscle")
        assert status(page) == "Not on a muscle: Rectus femoris (right) was put back."
        after = store.get_mark(vmo.id)
        assert (after.x, after.y) == (now.x, now.y)
        assert (store.get_mark(vl.id).x, store.get_mark(vl.id).y) == (vl.x, vl.y)

        # A drag that starts off every mark moves nothing (not the selected one).
        page.mouse.move(*screen_xy(page, "atlas-anterior", 0.0, 30.0))
        page.mouse.down()
        page.mouse.move(*screen_xy(page, "atlas-anterior", 3.0, 33.0), steps=8)
        page.mouse.up()
        page.wait_for_timeout(500)
        assert [(m.x, m.y) for m in store.session_marks(vl.session_id)] == [
            (vl.x, vl.y),
            (now.x, now.y),
        ]
    finally:
        store.close()


def test_typed_text_is_shown_as_text_everywhere(serve, page, clinic):
    url, _session_id, _marks = clinic
    server = serve(url)
    open_session(page, server)
    select_mark(page, "vastus_lateralis")
    note = page.get_by_label("Note", exact=True)
    note.fill(XSS)
    note.press("Tab")
    wait_status(page, "Saved note")
    page.get_by_role("tab", name="Session", exact=True).click()
    page.get_by_label("Site").fill(XSS)
    page.get_by_label("Pressure pain threshold (kg/cm2)").fill("3")
    page.locator(".tp-add-ppt button").click()
    wait_status(page, "Pressure pain threshold saved")
    page.locator(".tp-ae-type select").select_option(label="Other")
    page.locator(".tp-ae-severity select").select_option(label="Mild")
    page.locator(".tp-ae-note input").fill(XSS)
    page.locator(".tp-add-ae button").click()
    wait_status(page, "Adverse event saved")
    page.get_by_role("button", name="+ Session").click()
    page.get_by_label("Clinician").fill(XSS)
    page.get_by_role("button", name="Start session").click()
    wait_status(page, "Session of")
    page.get_by_placeholder("Search code").fill(XSS)
    page.wait_for_timeout(300)

    page.reload()
    wait_for_bokeh(page)
    page.locator(".tp-patient select").select_option(label="P-SAFE")
    wait_status(page, "Session of")
    page.locator(".tp-session select").select_option(label="12 Jan 2026 (AB)")
    wait_status(page, "Session of 12 Jan 2026")
    page.get_by_role("tab", name="Session", exact=True).click()
    assert shown_text(page, "ppt-list") == f"{XSS[:64]}: 3 kg/cm²"
    assert shown_text(page, "ae-list") == f"Other (mild): {XSS}"
    assert page.locator(".tp-ppt-list img, .tp-ae-list img").count() == 0
    page.get_by_role("tab", name="Mark", exact=True).click()
    select_mark(page, "vastus_lateralis")
    assert page.get_by_label("Note", exact=True).input_value() == XSS
    sessions = page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('session').options.map(o => o[1])"
    )
    assert any(XSS in label for label in sessions)
    assert page.evaluate("() => window.__x") is None
