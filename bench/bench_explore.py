"""The researcher page on about 10^6 marks: how long a filter change takes to redraw.

Two measurements, side by side with the obvious alternative:

- server side, the page's recomputation (``ExplorePage.compute``, which runs on the research
  worker) per mode, against re-reading the marks from the database with ``pandas.read_sql``
  and binning them with ``numpy.histogram2d`` for every change;
- in Chromium against a real `tpmap serve`: from a changed filter to the new figure drawn.

Uses the database that ``python -m bench annotate`` builds (built here when missing) in the
benchmarks' work folder (``bench/_work.py``); this run's snapshots go to a scratch folder there.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from bokeh.document import Document
from sqlalchemy import create_engine

from bench._report import print_rows
from bench._work import isolate, scratch, serve, stop
from bench.bench_annotate import _build_db, db_url, sign_in
from tpmap import load_atlas, research
from tpmap.apps.explore import Request, make_document

CONDITIONS = ["knee_osteoarthritis", "patellofemoral_pain", "lateral_knee_pain"]


def _median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def _read_sql_alternative(view: str, condition: str) -> None:
    engine = create_engine(db_url())
    frame = pd.read_sql(
        "select m.x, m.y, m.view, e.patient_id from marks m "
        "join sessions s on s.id = m.session_id join episodes e on e.id = s.episode_id "
        "where m.deleted_at is null and e.condition = :c and m.view = :v",
        engine,
        params={"c": condition, "v": view},
    )
    atlas = load_atlas()
    xmin, ymin, xmax, ymax = atlas.bounds(view)
    bins = [int((xmax - xmin) / 0.5), int((ymax - ymin) / 0.5)]
    np.histogram2d(frame["x"], frame["y"], bins=bins, range=[[xmin, xmax], [ymin, ymax]])
    engine.dispose()


def main() -> list[tuple[str, str, str]]:
    warnings.simplefilter("ignore")
    isolate()  # Playwright, Chromium and tpmap in this process: nothing in the user's home
    _build_db()
    with scratch("explore") as work:
        return _run(work)


def _run(work: Path) -> list[tuple[str, str, str]]:
    data = research.load_dataset(db_url(), snapshot=os.path.join(work, "snapshot"))
    page = make_document(Document(), dataset=data, atlas=load_atlas())
    page.settle()
    rows = []
    cycle = iter(range(10_000))
    base = page.request()

    for label, changes in (
        ("% of patients per muscle", {"mode": "percent"}),
        ("density map (patients within 1.5 cm)", {"mode": "density"}),
        ("compare groups (density)", {"mode": "density", "compare": True}),
    ):
        request = replace(base, **changes)

        def change(request: Request = request) -> None:
            condition = CONDITIONS[next(cycle) % len(CONDITIONS)]
            # What the research worker does for one filter change.
            page.analysis.compute(
                page.shared, replace(request, filters=research.Filters(conditions=[condition]))
            )

        rows.append((f"server: {label}", f"{_median_ms(change):.0f} ms", ""))
    alt = _median_ms(lambda: _read_sql_alternative("posterior", "knee_osteoarthritis"), 3)
    rows[1] = (*rows[1][:2], f"{alt:.0f} ms (read_sql + histogram2d)")

    # In the browser: a filter change until the new figure is drawn.
    from playwright.sync_api import sync_playwright

    proc, url = serve(db_url(), snapshot_dir=work / "served")
    browser_ms = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page_b = browser.new_page(viewport={"width": 1280, "height": 1000})
            sign_in(page_b, url, "/explore")  # the bench's clinician (may use /explore)
            page_b.locator("div.bk-Canvas").first.wait_for(timeout=120_000)
            legend = "() => Bokeh.documents[0].get_model_by_name('legend').text"
            page_b.wait_for_function(f"() => ({legend})().includes('patients')", timeout=300_000)
            for i in range(9):
                cond = CONDITIONS[i % len(CONDITIONS)]
                before = page_b.evaluate(legend)
                t = time.perf_counter()
                page_b.evaluate(
                    "c => { Bokeh.documents[0].get_model_by_name('conditions').value = [c]; }",
                    cond,
                )
                # Done when the legend has changed and the new figure's view is drawn.
                page_b.wait_for_function(
                    """before => {
                      const text = Bokeh.documents[0].get_model_by_name('legend').text;
                      const f = [...Bokeh.index.all_views()].find(
                        v => v.model.name === 'explore-figure');
                      return text !== before && f && f.is_idle;
                    }""",
                    arg=before,
                    polling="raf",
                    timeout=60_000,
                )
                browser_ms.append(1000 * (time.perf_counter() - t))
            browser.close()
    finally:
        stop(proc)
    rows.append(
        (
            "filter change to figure drawn (Chromium)",
            f"median {statistics.median(browser_ms):.0f} ms",
            "",
        )
    )
    print_rows(f"researcher page, {len(data.marks):,} marks, {data.n_patients:,} patients", rows)
    return rows


if __name__ == "__main__":
    main()
