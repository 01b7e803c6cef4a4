"""A clinician's taps while a researcher loads and filters, on the same server.

One `tpmap serve` process on the 10^6-mark database of ``python -m bench annotate``, with a
cold research snapshot (a scratch folder in the benchmarks' work folder, ``bench/_work.py``).
Debian's Chromium via Playwright: a clinician page taps marks (tap to mark drawn as saved,
measured by the page's own clock, as in bench_annotate) while, in a second Chromium, a
researcher page

1. is idle (not open): the baseline;
2. opens and loads the 10^6 marks (cold: every mark read from the database);
3. changes a filter before every tap (the page recomputes in the research process).

All of it runs twice, each time on a new server: with the researcher's Chromium as it is
(drawing each new figure on the same two cores as the clinician's browser and the server),
and with it at ``nice`` 19, which stands for the researcher's browser on another computer
and leaves the server's own share of the clinician's wait.

The alternative, side by side: the previous design ran the load inside ``make_document``
and every recomputation inside the widget callback, on the event loop: every clinician tap
in that process waited for them. Their durations are measured in-process here (a cold
``load_dataset`` and one ``Analysis.compute``), which is how long a tap could be held up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.document import Document

from bench._report import print_rows
from bench._work import isolate, scratch, serve, stop
from bench.bench_annotate import _ARM, _SCREEN, _build_db, _pct, _tap_patient, db_url, sign_in
from tpmap import load_atlas, research
from tpmap.apps.explore import make_document

N_TAPS = 20
CONDITIONS = ["knee_osteoarthritis", "patellofemoral_pain", "lateral_knee_pain"]
LEGEND = "() => (Bokeh.documents[0].get_model_by_name('legend') || {}).text || ''"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 302 itself is the answer


def _points(atlas, n: int) -> list[tuple[float, float]]:
    """``n`` tap positions 1.5 cm apart on large superficial muscles of the posterior view,
    so that no tap lands on an earlier mark (that would select it instead of adding one)."""
    out = []
    for muscle in ("gluteus_maximus", "gluteus_medius", "biceps_femoris", "adductors"):
        for side in ("left", "right"):
            try:
                poly = atlas.region("posterior", muscle, side).polygon
            except (KeyError, LookupError, ValueError):
                continue
            minx, miny, maxx, maxy = poly.bounds
            for x in np.arange(minx + 0.75, maxx, 1.5):
                for y in np.arange(miny + 0.75, maxy, 1.5):
                    hit = atlas.region_at("posterior", float(x), float(y), layer="superficial")
                    if hit is not None and hit.muscle == muscle:
                        out.append((float(x), float(y)))
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} tap positions; the bench needs {n}")
    return out[:n]


def main() -> list[tuple[str, str, str]]:
    warnings.simplefilter("ignore")
    isolate()  # Playwright, Chromium and tpmap in this process: nothing in the user's home
    _build_db()
    with scratch("concurrent") as work:
        return _run(work)


def _chromium(work: Path, niceness: int) -> str:
    """Chromium, started at ``niceness`` (a wrapper script in the work folder)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not niceness:
        return chromium
    wrapper = work / f"chromium-nice-{niceness}"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {niceness} {chromium} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _measure(work: Path, atlas: Any, name: str, researcher_nice: int) -> Measured:
    """One server (cold snapshot), a clinician's taps through the three phases."""
    from playwright.sync_api import sync_playwright

    tap_code = _tap_patient()
    proc, url = serve(db_url(), snapshot_dir=work / f"served-{name}")  # cold
    points = iter(_points(atlas, 6 * N_TAPS))
    m = Measured()
    opener = urllib.request.build_opener(_NoRedirect)
    n_taps = 0
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(work, 0), args=args)
            # The researcher's own browser; niced, it stands for a browser on another computer.
            other = p.chromium.launch(executable_path=_chromium(work, researcher_nice), args=args)
            clinician = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
            researcher = other.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            # The bench's clinician, signed in on both pages (a clinician may use /explore).
            sign_in(clinician, url, "/annotate")
            sign_in(researcher, url, "/atlas")  # not /explore yet: that starts the load
            clinician.locator("div.bk-Canvas").first.wait_for()
            clinician.locator(".tp-patient-search input").fill(tap_code)
            clinician.locator(".tp-patient-search input").press("Enter")
            clinician.wait_for_timeout(500)
            clinician.locator(".tp-patient select").select_option(label=tap_code)
            clinician.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('status').text.includes(': 0 marks')"
            )

            def tap(phase: str) -> None:
                nonlocal n_taps
                # The server's event loop alone: "/" is a redirect answered on the loop.
                t0 = time.perf_counter()
                with contextlib.suppress(urllib.error.HTTPError):
                    opener.open(url + "/", timeout=30).close()
                m.loop_ms[phase].append(1000 * (time.perf_counter() - t0))
                x, y = next(points)
                sx, sy = clinician.evaluate(_SCREEN, ["atlas-posterior", x, y])
                clinician.evaluate(_ARM, ["marks-posterior", n_taps + 1])
                clinician.mouse.click(sx, sy)
                took = clinician.evaluate("() => window.__tap")
                if took is None:  # never shown as saved: a failure, not a time
                    raise RuntimeError(f"tap {n_taps + 1} ({phase}) was not saved")
                m.taps[phase].append(took)
                n_taps += 1
                print(f"  {name} {phase}: tap {n_taps} {took:.0f} ms", flush=True)
                clinician.wait_for_timeout(350)  # keep taps apart: each is a plain Tap

            for _ in range(N_TAPS):
                tap("idle")

            # The researcher opens the page: the data set loads (cold) in the research process.
            started = time.perf_counter()
            researcher.goto(url + "/explore", wait_until="commit")  # signed in above
            while True:
                try:
                    done = "patients" in researcher.evaluate(LEGEND)
                except Exception:  # the page's document may not exist yet
                    done = False
                if done:
                    break
                tap("loading")
            m.load_seconds = time.perf_counter() - started

            # Interleaved, so that the machine's other load affects both alike.
            for i in range(2 * N_TAPS):
                if i % 2:
                    researcher.evaluate(
                        "c => { Bokeh.documents[0].get_model_by_name('conditions').value = [c]; }",
                        CONDITIONS[i % len(CONDITIONS)],
                    )
                    tap("filtering")
                else:
                    researcher.wait_for_timeout(600)  # the last change computed and drawn
                    tap("idle")
            browser.close()
            other.close()
    finally:
        stop(proc)
    return m


@dataclass
class Measured:
    """Tap and event-loop times (ms) per phase, and how long the researcher's load took."""

    taps: dict[str, list[float]] = field(
        default_factory=lambda: {"idle": [], "loading": [], "filtering": []}
    )
    loop_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"idle": [], "loading": [], "filtering": []}
    )
    load_seconds: float = 0.0


def _run(work: Path) -> list[tuple[str, str, str]]:
    atlas = load_atlas()
    # The researcher's browser on this machine (it draws each new figure on the clinician's
    # cores), then niced: the server's own share of the clinician's wait.
    same = _measure(work, atlas, "same-machine", 0)
    niced = _measure(work, atlas, "niced", 19)

    # The alternative: how long the event loop was held by the same work in the old design.
    t = time.perf_counter()
    data = research.load_dataset(db_url(), snapshot=os.path.join(work, "cold"))
    cold_load = time.perf_counter() - t
    page = make_document(Document(), dataset=data, atlas=atlas)
    page.settle()
    compute_ms = []
    for condition in CONDITIONS * 2:
        page.conditions.value = [condition]
        t = time.perf_counter()
        page.analysis.compute(page.shared, page.request())
        compute_ms.append(1000 * (time.perf_counter() - t))
    page.settle()

    def summary(values: list[float]) -> str:
        if not values:
            return "-"
        digits = 1 if statistics.median(values) < 10 else 0
        return (
            f"median {statistics.median(values):.{digits}f} ms, "
            f"p95 {_pct(values, 0.95):.{digits}f} ms"
        )

    rows = []
    for m, where in ((same, "same machine"), (niced, "niced")):
        rows += [
            (f"[researcher's browser {where}]", "", ""),
            ("server event loop (a redirect), researcher idle", summary(m.loop_ms["idle"]), ""),
            ("server event loop while the page loads", summary(m.loop_ms["loading"]), ""),
            (
                "server event loop right after a filter change",
                summary(m.loop_ms["filtering"]),
                "",
            ),
            ("clinician tap, researcher page idle", summary(m.taps["idle"]), ""),
            (
                f"clinician tap while the researcher page loads ({m.load_seconds:.1f} s, "
                f"{len(m.taps['loading'])} taps)",
                summary(m.taps["loading"]),
                f"event loop held {cold_load:.1f} s by the load",
            ),
            (
                "clinician tap right after each filter change",
                summary(m.taps["filtering"]),
                f"event loop held {statistics.median(compute_ms):.0f} ms per change",
            ),
        ]
    print_rows(
        f"clinician and researcher on one server, {len(data.marks):,} marks",
        rows,
        "alternative (old design)",
    )
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
