"""The README's screenshots, reproducible: ``make screenshots`` (or ``python docs/screenshots.py``).

Builds the demo database (seed 1) in a temporary folder, starts ``tpmap serve`` on a free port
with its own secret and with every XDG folder and the snapshot folder inside that temporary
folder, signs in through ``/login`` as the demo clinician *anna* and the demo researcher
*rosa*, and takes each picture with Debian's Chromium (Playwright) at 1024 x 768:

- ``annotate.png``: the clinician page, a knee osteoarthritis session with its marks;
- ``annotate-structures.png``: the structures layer, the knee close up, periosteal marks;
- ``outcomes.png`` and ``progress.png``: the episode's Outcomes and Progress tabs;
- ``report.png``: the top of the session report the page's **Session report** button saves;
- ``explore.png``: the researcher page.

Nothing is written outside the temporary folder except the PNGs in ``docs/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
VIEWPORT = {"width": 1024, "height": 768}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLINICIAN, RESEARCHER = "anna", "rosa"
SEED = 1


@dataclass(frozen=True)
class Subject:
    """The demo patient the clinician pictures show, and their last session."""

    code: str
    session_id: int
    affected_side: str
    muscle_mark: tuple[float, float]  # on the anterior view: the mark selected in annotate.png
    structure_mark: tuple[float, float]  # a periosteal mark, selected on the structures layer


def _isolated_env(work: Path) -> dict[str, str]:
    """``os.environ`` with the server secret and every user folder inside ``work``."""
    env = dict(os.environ)
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TPMAP_SNAPSHOT_DIR"):
        path = work / name.lower()
        path.mkdir(exist_ok=True)
        env[name] = str(path)
    env["TPMAP_SECRET"] = os.urandom(32).hex()  # this run's only: the database is thrown away
    env.pop("TPMAP_DATABASE_URL", None)
    return env


def build_database(url: str) -> Subject:
    """The demo cohort and accounts; returns a patient of anna's clinic worth picturing.

    The subject has knee osteoarthritis in one knee, periosteal marks and muscle marks on
    both the front and the back in their last session, and all follow-up scores.
    """
    from tpmap import load_atlas
    from tpmap.demo import FOLLOW_UP_DAYS, create_demo_accounts, generate_demo
    from tpmap.store import Store

    atlas = load_atlas()
    store = Store(url)
    try:
        generate_demo(store, seed=SEED)
        create_demo_accounts(store)
        anna = store.principal(CLINICIAN)
        for patient in sorted(store.find_patients("DEMO-", limit=500, scope=anna), key=_code):
            (episode,) = store.list_episodes(patient.id)
            if episode.condition != "knee_osteoarthritis" or episode.affected_side == "both":
                continue
            sessions = store.list_sessions(episode.id)
            marks = store.session_marks(sessions[-1].id)
            periosteal = [m for m in marks if atlas.kind(m.muscle) == "periosteum"]
            views = {m.view for m in marks if m.layer != "structures"}
            scores = store.list_outcomes(episode.id)
            if (
                len(sessions) >= 5
                and len(periosteal) >= 5
                and {"anterior", "posterior"} <= views
                and len(scores) == 2 * (1 + len(FOLLOW_UP_DAYS))
            ):
                front = [m for m in marks if m.view == "anterior" and m.layer == "superficial"]
                return Subject(
                    patient.code,
                    sessions[-1].id,
                    episode.affected_side,
                    (front[0].x, front[0].y),
                    (periosteal[0].x, periosteal[0].y),
                )
    finally:
        store.close()
    raise RuntimeError("no demo patient of anna's clinic fits the pictures")


def _code(patient: Any) -> str:
    return str(patient.code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``tpmap serve`` on a free port; returns the process and its base URL once it answers."""
    port = _free_port()
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tpmap", "serve", "--db", url, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(base + "/login", timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("tpmap serve did not start:\n" + (work / "serve.log").read_text())


def sign_in(page: Any, base: str, name: str, next_path: str) -> None:
    """Sign in through the real form, as a person would, and land on ``next_path``."""
    from tpmap.demo import DEMO_PASSWORD

    page.goto(f"{base}/login?next={next_path}")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    if "/login" in page.url:
        raise RuntimeError(f"signing in as {name} failed")
    page.locator("div.bk-Canvas").first.wait_for(timeout=60_000)


def _status(page: Any, text: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "t => (Bokeh.documents[0].get_model_by_name('status')?.text || '').includes(t)",
        arg=text,
        timeout=timeout,
    )


def _idle(page: Any) -> None:
    """Wait until every Bokeh view on screen has drawn what it was sent (hidden tabs'
    views never draw, so they are not waited for)."""
    page.wait_for_function(
        "() => [...Bokeh.index.all_views()].every("
        "v => v.is_idle !== false || !v.el || v.el.getClientRects().length === 0)",
        timeout=30_000,
    )
    page.wait_for_timeout(800)


_SCREEN = """([name, x, y]) => {
  const v = [...Bokeh.index.all_views()].find(v => v.model.name === name && v.frame);
  const r = v.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
}"""


def _select_mark(page: Any, xy: tuple[float, float]) -> None:
    """Tap a stored mark on the front view, as a clinician would, to show its details."""
    sx, sy = page.evaluate(_SCREEN, ["atlas-anterior", *xy])
    page.mouse.click(sx, sy)
    page.get_by_text("Technique", exact=True).filter(visible=True).first.wait_for(timeout=30_000)
    page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)  # no hover box on the mark


def _shot(page: Any, name: str, *, full_page: bool = False) -> None:
    """Save a screenshot; ``full_page`` for pages taller than the window (they scroll)."""
    path = DOCS / name
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path.relative_to(DOCS.parent)}", flush=True)


def clinician_pictures(browser: Any, base: str, subject: Subject, work: Path) -> None:
    page = browser.new_page(viewport=VIEWPORT)
    sign_in(page, base, CLINICIAN, "/annotate")
    page.get_by_label("Find").fill(subject.code)
    page.get_by_label("Find").press("Enter")
    page.wait_for_timeout(500)
    page.get_by_label("Patient", exact=True).select_option(label=subject.code)
    _status(page, "Session of")
    _idle(page)
    _select_mark(page, subject.muscle_mark)
    _idle(page)
    _shot(page, "annotate.png")

    page.get_by_role("button", name="Ligaments, tendons, bone").click()
    _idle(page)
    _select_mark(page, subject.structure_mark)
    _idle(page)
    _shot(page, "annotate-structures.png")

    # Back to the whole body for the episode's tabs.
    page.get_by_role("button", name="Superficial").click()
    page.get_by_role("tab", name="Outcomes").click()
    _idle(page)
    _shot(page, "outcomes.png")

    page.get_by_role("tab", name="Progress").click()
    _idle(page)
    _shot(page, "progress.png")

    # The session report as the page's button saves it, opened as a browser would show it.
    page.get_by_role("tab", name="Session").click()
    with page.expect_download(timeout=60_000) as saved:
        page.get_by_role("button", name="Session report").click()
    report = work / "report.html"
    saved.value.save_as(report)
    view = browser.new_page(viewport=VIEWPORT)
    view.goto(report.as_uri())
    _shot(view, "report.png")
    page.close()
    view.close()


def researcher_picture(browser: Any, base: str) -> None:
    page = browser.new_page(viewport=VIEWPORT)
    sign_in(page, base, RESEARCHER, "/explore")
    # The researcher page loads the cohort on a worker first; the legend names it when done.
    page.wait_for_function(
        "() => (Bokeh.documents[0].get_model_by_name('legend')?.text || '').includes('patients')",
        timeout=120_000,
    )
    _idle(page)
    # As a question a researcher asks: folded to the affected knee, where were responders
    # needled more than non-responders? (The whole cohort: the demo's 200 patients are too
    # few for the disclosure rules to allow one condition's groups.)
    page.get_by_role("button", name="Density").click()
    # Bokeh's checkboxes have no accessible name (their text is not a <label>): by class.
    page.get_by_role("checkbox", name="Fold to the affected side").check()
    page.get_by_role("checkbox", name="Compare two groups").check()
    page.wait_for_function(
        "() => (Bokeh.documents[0].get_model_by_name('legend')?.text || '').includes('Group A')",
        timeout=120_000,
    )
    _idle(page)
    _shot(page, "explore.png", full_page=True)
    page.close()


def main() -> int:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="tpmap-screenshots-") as tmp:
        work = Path(tmp)
        env = _isolated_env(work)
        # This process too (the demo's store, Playwright, Chromium): nothing in the user's home.
        os.environ.update(env)
        url = f"sqlite:///{work / 'demo.db'}"
        subject = build_database(url)
        print(f"picturing {subject.code}, session {subject.session_id}", flush=True)
        proc, base = serve(url, work, env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
                )
                clinician_pictures(browser, base, subject, work)
                researcher_picture(browser, base)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
