"""The server's research process: the data set, and every researcher page's computation, in
a low-priority child process (``tpmap.research.ResearchProcess``).

Real databases (the demo cohort on SQLite, the small clinic on PostgreSQL when configured),
real child processes; a page on the process must show exactly what a page computing in
this process shows.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bokeh.document import Document

import store_fixtures
from tpmap import load_atlas, research
from tpmap.apps.explore import make_document
from tpmap.demo import generate_demo
from tpmap.model import MarkInput
from tpmap.store import Store

store_url = store_fixtures.store_url

ATLAS = load_atlas()
EXACT = research.DisclosurePolicy(min_patients=5, perturb=False)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def where(shared: research.SharedDataset) -> tuple[int, int, int, int]:
    """Run in the research process: its pid, nice value, scheduling policy and marks."""
    assert shared.data is not None
    return os.getpid(), os.nice(0), os.sched_getscheduler(0), len(shared.data.marks)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, finished but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('process') / 'demo.db'}"
    store = Store(url)
    generate_demo(store, seed=5, patients=120)
    store.close()
    return url


@pytest.fixture
def process(demo_url: str, tmp_path: Path):
    proc = research.ResearchProcess(demo_url, snapshot=tmp_path / "snap", max_age=3600)
    yield proc
    proc.close()


def test_the_data_set_lives_and_computes_in_a_low_priority_child(process, demo_url):
    futures = [process.ensure() for _ in range(3)]  # three tabs opening at once
    summary = futures[0].result(timeout=120)
    assert all(f.result(timeout=120) == summary for f in futures)
    plain = research.load_dataset(demo_url, snapshot=False)
    assert summary.n_marks == len(plain.marks) and summary.n_episodes == len(plain.cohort)
    assert summary.clinicians == plain.clinicians
    assert summary.date_range == plain.date_range
    assert summary.instruments == plain.instruments
    assert process.loads == 1 and process.progress == "ready"
    pid, nice, policy, n_marks = process.run(where).result(timeout=60)
    assert pid != os.getpid() and alive(pid)
    # The clinician's core comes first: the research process runs on what nothing else wants.
    assert nice == min(19, os.nice(0) + research.NICENESS)
    assert policy == os.SCHED_IDLE
    assert n_marks == len(plain.marks)
    assert process.ensure().result(timeout=60) == summary and process.loads == 1


def test_the_research_process_follows_changes_in_the_database(store_url, tmp_path):
    store = Store(store_url)
    try:
        generate_demo(store, seed=2, patients=12)
        proc = research.ResearchProcess(store_url, snapshot=tmp_path / "snap", max_age=0)
        try:
            first = proc.ensure().result(timeout=120)
            with store.engine.connect() as conn:
                session_id = conn.exec_driver_sql("SELECT min(id) FROM sessions").scalar()
            store.add_mark(
                session_id,
                MarkInput("anterior", 4.0, 52.0, "vmo", "right", "superficial", ATLAS.version),
                "tests",
            )
            second = proc.ensure().result(timeout=120)
            assert second.n_marks == first.n_marks + 1
            assert proc.run(where).result(timeout=60)[3] == second.n_marks
        finally:
            proc.close()
    finally:
        store.close()


def result_of(page) -> tuple[pd.DataFrame, str, object, str | None]:
    page.settle()
    result = page.result
    assert result is not None
    return result.table, result.legend, result.grid, result.refused


def test_a_page_on_the_process_shows_what_a_page_in_this_process_shows(process, demo_url):
    data = research.load_dataset(demo_url, snapshot=False)
    here = make_document(Document(), dataset=data, atlas=ATLAS, policy=EXACT)
    there = make_document(Document(), research=process, atlas=ATLAS, policy=EXACT)
    # The page exists before the data: it says what the research process is doing.
    assert there.result is None
    steps = [
        lambda page: None,
        lambda page: setattr(page.mode, "active", 1),  # density
        lambda page: setattr(page.compare, "active", True),  # density, two groups
        lambda page: setattr(page.mode, "active", 0),  # % of patients, two groups
        lambda page: setattr(page.conditions, "value", ["patellofemoral_pain", "other"]),
    ]
    shown = 0
    for step in steps:
        step(here)
        step(there)
        table_here, legend_here, grid_here, refused_here = result_of(here)
        table_there, legend_there, grid_there, refused_there = result_of(there)
        assert refused_here == refused_there  # the same disclosure rules, the same words
        pd.testing.assert_frame_equal(table_here, table_there)
        assert legend_here == legend_there
        if grid_here is not None:
            np.testing.assert_array_equal(grid_here.values, grid_there.values)
        shown += refused_here is None
    assert shown >= 4
    assert len(there.clinicians.options) == len(data.clinicians)
    here.shared.close()


def test_a_download_from_the_process_is_recorded_before_it_is_sent(process, demo_url):
    store = Store(demo_url)
    try:
        if store.principal("rhea") is None:
            store.add_user("rhea", "a password for tests", roles=("researcher",), user="tests")
        user = store.principal("rhea")
        before = len(store.audit_entries(action="export"))
        page = make_document(
            Document(), research=process, atlas=ATLAS, policy=EXACT, store=store, user=user
        )
        page.settle()
        page.download_marks("csv")
        page.settle()
        frame = pd.read_csv(io.StringIO(base64.b64decode(page.download.data["b64"][0]).decode()))
        assert set(frame.columns) <= set(research.EXPORT_COLUMNS) and len(frame)
        exports = store.audit_entries(action="export")[before:]
        assert [(e.actor, e.target, e.after["rows"]) for e in exports] == [
            ("rhea", "marks", len(frame))
        ]
        # Not recordable (the account was switched off): built, but never sent.
        store.set_user_active("rhea", False, user="tests")
        page.download.source.data = {k: [] for k in page.download.source.data}
        page.download_marks("csv")
        page.settle()
        assert page.download.data.get("b64", []) == []
        assert "could not be prepared" in page.status.text
        store.set_user_active("rhea", True, user="tests")
    finally:
        store.close()


def test_a_research_process_that_died_is_replaced(process):
    process.ensure().result(timeout=120)
    pid = process.run(where).result(timeout=60)[0]
    os.kill(pid, signal.SIGKILL)
    assert gone_within(pid, 10)
    deadline = time.monotonic() + 60
    while True:  # the job sent while the pool learns of the death fails; the next one runs
        try:
            new_pid, _nice, _policy, n_marks = process.run(where).result(timeout=120)
            break
        except BrokenProcessPool:
            assert time.monotonic() < deadline
    assert new_pid != pid and n_marks > 0


def test_closing_stops_the_research_process(process):
    process.ensure().result(timeout=120)
    pid = process.run(where).result(timeout=60)[0]
    process.close()
    assert gone_within(pid, 10)
    with pytest.raises(RuntimeError, match="closed"):
        process.run(where)


def test_the_research_process_ends_with_a_server_that_was_killed(demo_url, tmp_path):
    script = textwrap.dedent(
        f"""
        import os
        from tpmap import research
        import test_research_process as t

        proc = research.ResearchProcess({demo_url!r}, snapshot={str(tmp_path / "snap")!r})
        print(proc.run(t.where).result(timeout=120)[0], flush=True)
        os._exit(0)  # as a killed server: nothing is closed
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip().splitlines()[-1])
    assert gone_within(pid, 10)
