"""The clinician page on a tablet: every widget on screen in every state, and tabs for keyboards.

Each state of the page is reached through its widgets as a clinician would, then every
Bokeh element's bounding box is measured: nothing may stick out to the right of the window
and the page may never scroll sideways (on the landscape screens it fits without any
scrolling at all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tpmap.store import Store

from bokeh_page import screen_xy, tap, wait_for_bokeh
from conftest import sign_in
from diagram_points import inside, mark_fields

pytestmark = pytest.mark.browser

LONG_CODE = "P-" + "7" * 30  # the longest code the page accepts

_BOXES = """() => {
  const out = [];
  for (const v of Bokeh.index.all_views()) {
    if (!(v.el instanceof Element)) continue;  // renderers draw on a canvas
    const r = v.el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;  // not shown (hidden tab or form)
    out.push([v.model.name || v.model.type, r.left, r.top, r.right, r.bottom]);
  }
  return out;
}"""


@pytest.fixture
def clinic(tmp_path: Path) -> str:
    """A database with one patient (a long code), an episode and a session with a mark."""
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    with Store(url) as store:
        patient = store.create_patient({"code": LONG_CODE, "sex": "female"}, "seed")
        episode = store.create_episode(
            patient.id,
            {
                "condition": "lateral_knee_pain",
                "affected_side": "both",
                "start_date": "2026-01-05",
            },
            "seed",
        )
        session = store.create_session(
            episode.id, {"date": "2026-01-12", "clinician": "AB"}, "seed"
        )
        store.add_mark(session.id, mark_fields("anterior", "vastus_lateralis", "right"), "seed")
    return url


def offscreen(page, width: int, height: int, *, vertical: bool) -> list:
    """Elements that stick out of the window (to the right, or below when ``vertical``)."""
    bad = []
    for name, left, top, right, bottom in page.evaluate(_BOXES):
        if left < -0.5 or right > width + 0.5 or (vertical and bottom > height + 0.5):
            bad.append((name, round(left), round(top), round(right), round(bottom)))
    return bad


def check(page, width: int, height: int, state: str) -> None:
    # The page lays itself out for the window the browser reports: wait for that layout.
    page.wait_for_function(
        "t => Bokeh.documents[0].get_model_by_name('annotate-page').tags.includes(t)",
        arg=f"layout:{width}x{height}",
    )
    page.wait_for_timeout(150)  # let Bokeh finish laying out the change
    scroll_width = page.evaluate("() => document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{state}: the page scrolls sideways ({scroll_width} px)"
    landscape = width > height
    bad = offscreen(page, width, height, vertical=landscape and "form" not in state)
    assert not bad, f"{state} at {width}x{height}: outside the window: {bad}"


def model_value(page, name: str, value: str) -> None:
    page.evaluate(
        "([n, v]) => { Bokeh.documents[0].get_model_by_name(n).value = v }", [name, value]
    )


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (1280, 800), (768, 1024)])
def test_every_widget_is_on_screen_in_every_state(serve, browser, clinic, width, height):
    server = serve(clinic)
    context = browser.new_context(viewport={"width": width, "height": height}, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        sign_in(page, server, next_path="/annotate")
        wait_for_bokeh(page)
        check(page, width, height, "opened")

        page.get_by_role("button", name="+ Patient").click()
        check(page, width, height, "patient form")
        page.get_by_role("button", name="+ Patient").click()
        page.get_by_role("button", name="+ Episode").click()
        check(page, width, height, "episode form")
        page.get_by_role("button", name="+ Episode").click()

        page.get_by_placeholder("Search code").fill("P-77")
        page.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('patient').options.length > 1"
        )
        options = page.evaluate(
            "() => Bokeh.documents[0].get_model_by_name('patient').options.map(o => o[0])"
        )
        model_value(page, "patient", options[1])
        page.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('status').text.startsWith('Session')"
        )
        check(page, width, height, "session open")

        # Select the mark, make it electrical: every field of the form is shown.
        sx, sy = screen_xy(page, "atlas-anterior", *inside("anterior", "vastus_lateralis", "right"))
        page.mouse.click(sx, sy)
        page.get_by_label("Technique").select_option(label="Electrical")
        page.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('status').text.startsWith('Saved')"
        )
        check(page, width, height, "mark selected")

        # A rejected value: its message under the field, and a long status message.
        depth = page.get_by_label("Depth (mm)")
        depth.fill("9999999999999999999999")
        depth.press("Enter")
        page.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('status').text.startsWith('Not saved')"
        )
        check(page, width, height, "rejected value")

        for tab in ("Session", "Marks", "Outcomes", "Progress", "Mark"):
            page.get_by_role("tab", name=tab, exact=True).click()
            check(page, width, height, f"{tab} tab")

        # Sides, and a tap off the body (an error message).
        page.get_by_role("button", name="Sides").click()
        tap(page, "atlas-lateral_right", 30.0, 60.0)
        check(page, width, height, "sides")
        page.screenshot(path=str(Path(server.log).with_suffix(".png")))
    finally:
        context.close()


def test_tabs_are_announced_as_tabs_and_work_from_the_keyboard(serve, page, clinic):
    server = serve(clinic)
    sign_in(page, server, next_path="/annotate")
    wait_for_bokeh(page)
    tablist = page.get_by_role("tablist", name="Session details")
    tablist.wait_for()
    tabs = page.get_by_role("tab")
    assert [t.inner_text() for t in tabs.all()] == [
        "Mark",
        "Session",
        "Marks",
        "Outcomes",
        "Progress",
    ]
    mark_tab = page.get_by_role("tab", name="Mark", exact=True)
    assert mark_tab.get_attribute("aria-selected") == "true"
    mark_tab.focus()
    page.keyboard.press("ArrowRight")  # focus and open the next tab
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('panel').active === 1")
    session_tab = page.get_by_role("tab", name="Session")
    assert session_tab.get_attribute("aria-selected") == "true"
    assert mark_tab.get_attribute("aria-selected") == "false"
    page.get_by_role("tab", name="Marks").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('panel').active === 2")
    assert page.get_by_role("tabpanel", name="Marks").is_visible()
