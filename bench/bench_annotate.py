"""The clinician page in a real browser, on a database of about 10^6 marks.

Measures (Debian's Chromium driven by Playwright, against a real `tpmap serve`):

- tap to mark drawn: from the click to the mark drawn as saved (committed) in the page,
  signed in, with every change written to the audit trail in the same transaction;
- opening a patient with 50 sessions: from choosing the patient to the session drawn;
- signing in: from posting the sign-in form to the server's answer (one argon2id
  verification, the sign-in and its audit entry written), next to one verification alone.

Side by side, the obvious alternative for the server part: reloading the whole episode's
marks from the database after each tap instead of updating the one mark.

Run with ``python -m bench annotate``. The database is built once (~1 minute) in the benchmarks'
work folder under the system temp dir (``bench/_work.py``; ``$TPMAP_BENCH_DIR`` moves it).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import time
from typing import Any

from bench._work import isolate, secret_file, serve, stop, work_dir
from tpmap import load_atlas
from tpmap.auth import load_secret
from tpmap.store import Store

N_TAPS = 40
# The benchmark's own account (its server secret is the work folder's, never the user's).
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password-1"


def db_url() -> str:
    """The ~10^6-mark database in the work folder: built once, reused by later runs."""
    return f"sqlite:///{work_dir() / 'annotate-1e6.db'}"


def _store() -> Store:
    return Store(db_url(), secret=load_secret(secret_file=secret_file()))


def _ensure_account(store: Store) -> None:
    """A clinician of the first clinic (where BENCH-50 and the tap patients go)."""
    if BENCH_USER not in {u.name for u in store.list_users()}:
        first = min(store.list_clinics(), key=lambda c: c.id)
        store.add_user(
            BENCH_USER, BENCH_PASSWORD, roles=["clinician"], clinics=[first.id], user="bench"
        )


_SCREEN = """([name, x, y]) => {
  const v = [...Bokeh.index.all_views()].find(v => v.model.name === name && v.frame);
  const r = v.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
}"""
# Armed before the click: from the pointer going down to the first animation frame in which
# the mark is in the page as saved (committed), measured by the page's own clock.
_ARM = """([source, n]) => {
  window.__tap = new Promise(resolve => {
    document.addEventListener("pointerdown", () => {
      const t0 = performance.now();
      const saved = () => {
        const d = Bokeh.documents[0].get_model_by_name(source).data;
        const state = Array.from(d instanceof Map ? d.get("state") : d.state);
        // Stored marks are drawn "saved", or "selected" (the newest one is selected).
        return state.filter(s => s === "saved" || s === "selected").length >= n;
      };
      const check = () => saved() ? resolve(performance.now() - t0)
                        : performance.now() - t0 > 10000 ? resolve(null)  // never saved
                        : requestAnimationFrame(check);
      requestAnimationFrame(check);
    }, {once: true, capture: true});
  });
}"""


def sign_in(page: Any, url: str, next_path: str) -> None:
    """Sign ``page`` in as the benchmark's clinician through ``/login``."""
    page.goto(f"{url}/login?next={next_path}")
    page.locator("#name").fill(BENCH_USER)
    page.locator("#password").fill(BENCH_PASSWORD)
    with page.expect_navigation():
        page.locator("button[type=submit]").click()


def _build_db() -> tuple[int, int]:
    """A database with ~10^6 marks and one patient with 50 sessions; returns its ids."""
    from tpmap.demo import generate_demo

    store = _store()
    _ensure_account(store)
    if store.counts()["marks"] < 900_000:
        print("building a database of about 10^6 marks (once) ...", flush=True)
        generate_demo(store, seed=7, patients=2000, marks_per_session=110)
    patient = store.patient_by_code("BENCH-50")
    if patient is None:
        patient = store.create_patient({"code": "BENCH-50", "sex": "female"}, "bench")
        episode = store.create_episode(
            patient.id,
            {
                "condition": "patellofemoral_pain",
                "affected_side": "right",
                "start_date": "2025-01-06",
            },
            "bench",
        )
        atlas = load_atlas()
        vmo = atlas.region("anterior", "vmo", "right").polygon.representative_point()
        start = dt.date(2025, 1, 6)
        for i in range(50):
            s = store.create_session(
                episode.id,
                {"date": start + dt.timedelta(days=7 * i), "clinician": "bench"},
                "bench",
            )
            for j in range(6):
                store.add_mark(
                    s.id,
                    {"view": "anterior", "x": vmo.x + 0.05 * j, "y": vmo.y, "muscle": "vmo",
                     "side": "right", "layer": "superficial", "atlas_version": atlas.version},
                    "bench",
                )  # fmt: skip
    episode = store.list_episodes(patient.id)[-1]
    n = store.counts()["marks"]
    store.close()
    return episode.id, n


def _tap_patient() -> str:
    """A new patient with one empty session today, for the taps of this run."""
    store = _store()
    code = f"TAP-{time.time_ns() // 1_000_000}"
    patient = store.create_patient({"code": code}, "bench")
    episode = store.create_episode(
        patient.id,
        {"condition": "other", "affected_side": "left", "start_date": dt.date.today()},
        "bench",
    )
    store.create_session(episode.id, {"date": dt.date.today(), "clinician": "bench"}, "bench")
    store.close()
    return code


def _sign_in_ms(url: str) -> float:
    """POST the sign-in form (with its XSRF token) and time the server's answer."""
    import http.client
    import re
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", "/login")
    answer = conn.getresponse()
    form = answer.read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    cookie = answer.getheader("Set-Cookie", "").split(";")[0]
    body = urlencode({"_xsrf": xsrf, "name": BENCH_USER, "password": BENCH_PASSWORD})
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    t0 = time.perf_counter()
    conn.request("POST", "/login", body=body, headers=headers)
    answer = conn.getresponse()
    answer.read()
    elapsed = 1000 * (time.perf_counter() - t0)
    conn.close()
    if answer.status != 302:
        raise RuntimeError(f"signing in failed ({answer.status})")
    return elapsed


def _timed(fn, n: int = 40) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return times


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> list[tuple[str, str, str]]:
    from playwright.sync_api import sync_playwright

    isolate()  # Playwright, Chromium and tpmap in this process: nothing in the user's home
    episode_id, n_marks = _build_db()
    tap_code = _tap_patient()
    proc, url = serve(db_url())
    atlas = load_atlas()
    taps, opens = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            context = browser.new_context(viewport={"width": 1024, "height": 768})
            page = context.new_page()
            sign_in(page, url, "/annotate")
            for _ in range(3):
                page.goto(url + "/annotate")
                page.locator("div.bk-Canvas").first.wait_for()
                page.locator(".tp-patient-search input").fill("BENCH-50")
                page.locator(".tp-patient-search input").press("Enter")
                page.wait_for_timeout(500)
                t0 = time.perf_counter()
                page.locator(".tp-patient select").select_option(label="BENCH-50")
                page.wait_for_function(
                    "() => Bokeh.documents[0].get_model_by_name('status').text"
                    ".includes('Session of')"
                )
                opens.append(1000 * (time.perf_counter() - t0))
            # A patient of its own to tap in, so that BENCH-50 keeps exactly 50 sessions.
            page.locator(".tp-patient-search input").fill(tap_code)
            page.locator(".tp-patient-search input").press("Enter")
            page.wait_for_timeout(500)
            page.locator(".tp-patient select").select_option(label=tap_code)
            page.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('status').text.includes(': 0 marks')"
            )
            poly = atlas.region("posterior", "gluteus_medius", "left").polygon
            minx, miny, maxx, maxy = poly.bounds
            for i in range(N_TAPS):
                # Spread the taps (more than the selection radius apart) inside the muscle.
                x = minx + (maxx - minx) * (0.2 + 0.6 * ((i * 7) % N_TAPS) / N_TAPS)
                y = miny + (maxy - miny) * (0.3 + 0.4 * (i % 5) / 5)
                # Left and right in turn, as a session goes from muscle to muscle: the status
                # line names each mark, so every tap changes it (and the page's layout).
                if i % 2:
                    x = -x
                if atlas.region_at("posterior", x, y) is None:
                    continue
                sx, sy = page.evaluate(_SCREEN, ["atlas-posterior", x, y])
                page.evaluate(_ARM, ["marks-posterior", len(taps) + 1])
                page.mouse.click(sx, sy)
                took = page.evaluate("() => window.__tap")
                if took is None:  # a tap that never showed as saved is a failure, not a time
                    shot = work_dir() / "tap-not-saved.png"
                    page.screenshot(path=str(shot))
                    status = page.evaluate(
                        "() => Bokeh.documents[0].get_model_by_name('status').text"
                    )
                    raise RuntimeError(f"tap {len(taps) + 1} was not saved: {status!r} ({shot})")
                taps.append(took)
                page.wait_for_timeout(350)  # keep taps apart: each is a plain Tap
            browser.close()
        # Signing in, timed last (right after start the server is still building the atlas
        # indexes in a thread) and over plain HTTP: the server's cost, not the browser's.
        sign_ins = [_sign_in_ms(url) for _ in range(5)]
    finally:
        stop(proc)

    # One argon2id verification alone (argon2-cffi's defaults), for the sign-in row.
    from argon2 import PasswordHasher

    hasher = PasswordHasher()
    hashed = hasher.hash(BENCH_PASSWORD)
    verify_ms = []
    for _ in range(5):
        t = time.perf_counter()
        hasher.verify(hashed, BENCH_PASSWORD)
        verify_ms.append(1000 * (time.perf_counter() - t))

    # The obvious alternative, server side only: reload the episode after every tap.
    store = _store()
    reload_ms = []
    for _ in range(10):
        t = time.perf_counter()
        store.episode_marks(episode_id)
        reload_ms.append(1000 * (time.perf_counter() - t))
    # What the audit trail and clinic scoping add to storing one mark (server side): the
    # store as the signed-in page uses it, next to the same insert with no audit row.
    session_id = store.list_sessions(store.list_episodes(store.patient_by_code(tap_code).id)[0].id)[
        0
    ].id
    principal = store.principal(BENCH_USER)
    point = {"view": "posterior", "x": 10.0, "y": 95.0, "muscle": "gluteus_medius",
             "side": "left", "layer": "superficial", "atlas_version": atlas.version}  # fmt: skip
    scoped_ms = _timed(lambda: store.scoped(principal).add_mark(session_id, point))
    plain = _store()
    plain._audit = lambda *args, **kwargs: None  # type: ignore[method-assign]
    plain_ms = _timed(lambda: plain.add_mark(session_id, point, BENCH_USER))
    plain.close()
    store.close()

    rows = [
        (
            f"tap to mark drawn (saved), {len(taps)} taps",
            f"median {statistics.median(taps):.0f} ms, p95 {_pct(taps, 0.95):.0f} ms",
            f"+{statistics.median(reload_ms):.0f} ms per tap to reload the episode",
        ),
        (
            "sign in (POST /login to its answer)",
            f"median {statistics.median(sign_ins):.0f} ms",
            f"one argon2id verification alone: {statistics.median(verify_ms):.0f} ms",
        ),
        (
            "store one mark (server side, SQLite)",
            f"median {statistics.median(scoped_ms):.1f} ms scoped + audited",
            f"{statistics.median(plain_ms):.1f} ms unscoped, no audit row",
        ),
        (
            "open a patient with 50 sessions",
            f"median {statistics.median(opens):.0f} ms (max {max(opens):.0f})",
            "",
        ),
    ]
    print(f"\nclinician page in Chromium, database of {n_marks:,} marks (SQLite)")
    print(f"{'case':<40} {'tpmap':>34}   alternative")
    for r in rows:
        print(f"{r[0]:<40} {r[1]:>34}   {r[2]}")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
