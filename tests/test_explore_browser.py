"""End to end: the researcher page in Chromium against `tpmap serve` on a demo database."""

from __future__ import annotations

from tpmap.demo import generate_demo
from tpmap.store import Store

from bokeh_page import model_attr, wait_for_bokeh
from conftest import sign_in


def test_filter_redraws_and_downloads_work(serve, page, tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    store = Store(url)
    generate_demo(store, seed=5, patients=80)
    store.close()
    server = serve(url)
    page.set_viewport_size({"width": 1280, "height": 1000})
    sign_in(page, server, next_path="/explore")
    wait_for_bokeh(page)
    assert "80 patients in the filtered cohort" in model_attr(page, "legend", "text")

    page.locator(".tp-conditions input").first.click()
    page.get_by_text("Knee osteoarthritis").first.click()
    page.wait_for_function(
        "() => !Bokeh.documents[0].get_model_by_name('legend').text.includes('80 patients')"
    )
    assert "patients in the filtered cohort" in model_attr(page, "legend", "text")

    with page.expect_download() as info:
        page.locator(".tp-download-table button").click()
    path = info.value.path()
    assert path is not None
    header = path.read_text().splitlines()[0]
    assert header.startswith("muscle,side,n_marks,n_patients")

    with page.expect_download() as info:
        page.locator(".tp-download-png button").click()
    png = info.value.path().read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page.screenshot(path=str(tmp_path / "explore.png"))
