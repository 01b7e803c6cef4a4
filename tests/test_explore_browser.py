"""End to end: the researcher page in Chromium against `tpmap serve` on a demo database."""

from __future__ import annotations

import re

import pytest

from tpmap import _snapshot
from tpmap.demo import generate_demo
from tpmap.store import Store

from bokeh_page import column, model_attr, wait_for_bokeh
from conftest import sign_in

pytestmark = pytest.mark.browser

LEGEND = "() => Bokeh.documents[0].get_model_by_name('legend').text"


@pytest.fixture
def explore(serve, page, tmp_path, monkeypatch):
    """A served demo database (80 patients) and the explore page open on it."""
    # The server's snapshot goes to the test's folder, never the user's cache.
    monkeypatch.setenv(_snapshot.SNAPSHOT_ENV, str(tmp_path / "snapshots"))
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    store = Store(url)
    generate_demo(store, seed=5, patients=80)
    store.close()
    server = serve(url)
    page.set_viewport_size({"width": 1280, "height": 1000})
    sign_in(page, server, next_path="/explore")
    wait_for_bokeh(page)
    page.wait_for_function(f"() => ({LEGEND})().includes('patients in the filtered cohort')")
    return page


def test_filter_redraws_and_downloads_work(explore, tmp_path):
    page = explore
    legend = model_attr(page, "legend", "text")
    # About 80 patients: the displayed count carries up to 2 patients of noise.
    n = int(re.search(r"(\d+) patients in the filtered cohort", legend).group(1))
    assert abs(n - 80) <= 2
    assert list((tmp_path / "snapshots").glob("marks-*/state.json"))

    with page.expect_download() as info:
        page.locator(".tp-download-table button").click()
    path = info.value.path()
    assert path is not None
    header = path.read_text().splitlines()[0]
    assert header.startswith("muscle,side,n_marks,n_patients")

    with page.expect_download() as info:
        page.locator(".tp-download-marks button").click()
    text = info.value.path().read_text()
    assert text.splitlines()[0].startswith("patient_id,episode_id,session_id")
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # no calendar dates

    with page.expect_download() as info:
        page.locator(".tp-download-png button").click()
    png = info.value.path().read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    before = model_attr(page, "legend", "text")
    page.locator(".tp-mode .bk-btn").nth(1).click()  # density
    page.wait_for_function(f"before => ({LEGEND})() !== before", arg=before)
    assert "with a mark within 1.5 cm" in model_attr(page, "legend", "text")
    page.screenshot(path=str(tmp_path / "explore.png"))


def test_a_crafted_k_below_the_floor_is_refused(explore):
    page = explore
    # The spinner-like input would stop a user typing 1; an attacker sends the change
    # straight into the document, which syncs it to the server unclamped.
    page.evaluate("() => { Bokeh.documents[0].get_model_by_name('k').value = 1; }")
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('k-message').text.includes('cannot be below')"
    )
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('k').value === 5")
    assert "cannot be below 5" in model_attr(page, "k-message", "text")
    counts = column(page, "table-source", "n_patients")
    assert counts and min(counts) >= 5
    assert "fewer than 5 patients" in model_attr(page, "legend", "text")


XSS = '<img src=x onerror="window.__x=1">'


def test_a_hostile_clinician_name_is_shown_as_text(serve, page, tmp_path, monkeypatch):
    """A clinician's name is typed text: the filter's options (Choices.js, which draws
    labels as HTML) and the signed-in bar show it literally, and nothing runs."""
    monkeypatch.setenv(_snapshot.SNAPSHOT_ENV, str(tmp_path / "snapshots"))
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    with Store(url) as store:
        generate_demo(store, seed=5, patients=40)
        patient = store.find_patients("")[0]
        episode = store.list_episodes(patient.id)[0]
        store.create_session(episode.id, {"date": "2026-01-05", "clinician": XSS}, "t")
    server = serve(url)
    page.set_viewport_size({"width": 1280, "height": 1000})
    sign_in(page, server, next_path="/explore")
    wait_for_bokeh(page)
    page.wait_for_function(f"() => ({LEGEND})().includes('patients in the filtered cohort')")
    page.locator(".tp-clinicians input").first.click()
    page.get_by_text(XSS, exact=True).first.wait_for()
    assert page.evaluate("() => window.__x") is None
    assert page.locator(".tp-clinicians img").count() == 0


def test_the_checkboxes_are_named_for_screen_readers(explore):
    page = explore
    before = model_attr(page, "legend", "text")
    fold = page.get_by_role(
        "checkbox", name="Fold to the affected side (affected knee on the right)"
    )
    fold.check()  # found by its name, as assistive technology announces it
    page.wait_for_function(f"before => ({LEGEND})() !== before", arg=before)
    assert model_attr(page, "fold", "active") is True
    assert page.get_by_label("Compare two groups").count() == 1
