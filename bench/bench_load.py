"""Benchmark: loading research data (:func:`tpmap.research.load_dataset`) against read_sql.

Run by hand (``python -m bench load``); prints a Markdown table for docs/benchmarks.md.

A SQLite database of ``N_MARKS`` marks (10^4 patients, one episode each, 10 sessions an
episode, 10 marks a session) is built through the store's ``bulk_insert_*`` methods. Then:

- cold load: no snapshot yet: every mark read from the database, the Parquet snapshot written;
- warm load: snapshot up to date (the refresh finds nothing to read);
- incremental: after 1 000 new marks (and 10 edits), read only those and merge;
- baseline: ``pandas.read_sql`` of the full marks-sessions-episodes join, every time, then
  :func:`~tpmap.research.compact_marks` (what one would write without a snapshot).

Building a 10^7-mark SQLite database through the store takes longer than a few minutes on
two cores, so the 10^7 row is a snapshot synthesized from the 10^6 one (its rows tiled ten
times with new ids) placed behind the same database: ``load_dataset`` then runs its full
warm path (refresh check against the database, Parquet read, cohort and outcomes) on 10^7
marks. Times are wall-clock seconds of one run (``time.perf_counter``), the baseline's
10^7 figure is extrapolated (x10) from its 10^6 run. Its database and snapshots live in a
scratch folder of the benchmarks' work folder (``bench/_work.py``), removed after the run.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench._work import isolate, scratch, secret_file
from tpmap import _snapshot
from tpmap.auth import load_secret
from tpmap.research import compact_marks, load_dataset
from tpmap.store import Store

__all__ = ["build_database", "main"]

N_PATIENTS = 10_000
SESSIONS_PER_EPISODE = 10
N_MARKS = 1_000_000
MUSCLES = ("vmo", "vastus_lateralis", "rectus_femoris", "gluteus_medius", "gluteus_minimus")
MUSCLES += ("tensor_fasciae_latae", "biceps_femoris", "gastrocnemius_medial", "soleus", "popliteus")
CLINICIANS = tuple(f"Dr {c}" for c in "ABCDEFGH")

BASELINE_SQL = """
SELECT m.id, e.patient_id, m.session_id, s.episode_id, m.view, m.layer, m.x, m.y, m.muscle,
       m.side, m.technique, m.ltr_grade, m.tp_status, s.date AS session_date, s.clinician
FROM marks m JOIN sessions s ON s.id = m.session_id JOIN episodes e ON e.id = s.episode_id
WHERE m.deleted_at IS NULL ORDER BY m.id
"""


def _mark_rows(session_ids: list[int], n: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    session = np.repeat(session_ids, -(-n // len(session_ids)))[:n]
    muscle = rng.integers(0, len(MUSCLES), n)
    x = rng.uniform(-20, 20, n)
    y = rng.uniform(5, 110, n)
    for i in range(n):
        yield {
            "session_id": int(session[i]),
            "view": "anterior" if muscle[i] < 3 else "posterior",
            "x": float(x[i]),
            "y": float(y[i]),
            "muscle": MUSCLES[muscle[i]],
            "side": "right" if x[i] < 0 else "left",
            "layer": "superficial",
            "atlas_version": "2025.1",
            "technique": "static" if i % 3 else "electrical",
            "ltr_grade": "weak",
            "tp_status": "active",
        }


def build_database(url: str, n_marks: int = N_MARKS) -> tuple[Store, list[int]]:
    """Fill a new database through the store's bulk inserts; returns it and the session ids."""
    # The bench's own secret keys the audit trail of the edits below (not the user's).
    store = Store(url, secret=load_secret(secret_file=secret_file()))
    rng = np.random.default_rng(1)
    patients = store.bulk_insert_patients(
        {"code": f"P-{i:06d}", "sex": "female" if i % 2 else "male", "birth_year": 1950 + i % 50}
        for i in range(N_PATIENTS)
    )
    episodes = store.bulk_insert_episodes(
        {
            "patient_id": pid,
            "condition": "patellofemoral_pain" if pid % 3 else "knee_osteoarthritis",
            "affected_side": "right" if pid % 2 else "left",
            "start_date": dt.date(2023, 1, 1) + dt.timedelta(days=int(pid % 365)),
        }
        for pid in patients
    )
    sessions = store.bulk_insert_sessions(
        {
            "episode_id": eid,
            "date": dt.date(2024, 1, 1) + dt.timedelta(days=7 * k),
            "clinician": CLINICIANS[int(rng.integers(len(CLINICIANS)))],
            "nprs_before": 7 - k // 2 if k == 0 else None,
            "nprs_after": int(rng.integers(0, 8)) if k == SESSIONS_PER_EPISODE - 1 else None,
        }
        for eid in episodes
        for k in range(SESSIONS_PER_EPISODE)
    )
    store.bulk_insert_marks(_mark_rows(sessions, n_marks, seed=2), validate=False)
    return store, sessions


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _baseline(store: Store) -> pd.DataFrame:
    with store.engine.connect() as conn:
        frame = pd.read_sql(BASELINE_SQL, conn)
    return compact_marks(frame)


def _synthesize_10x(store: Store, snap_dir: Path, target: Path) -> int:
    """A snapshot of ``store`` whose (merged) rows are tiled ten times with fresh ids."""
    table = _snapshot.MarkSnapshot(snap_dir, store.engine).read()
    state = json.loads((snap_dir / "state.json").read_text())
    target.mkdir()
    n = table.num_rows
    name = "base-synthetic.parquet"
    with pq.ParquetWriter(target / name, _snapshot.SNAPSHOT_SCHEMA, compression="lz4") as w:
        for k in range(10):
            ids = pa.array(np.arange(k * n + 1, (k + 1) * n + 1, dtype=np.int64))
            w.write_table(table.set_column(0, "id", ids), row_group_size=_snapshot.FETCH_ROWS)
    state["parts"] = [{"file": name, "rows": 10 * n}]
    (target / "state.json").write_text(json.dumps(state))
    return 10 * n


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _pages_memory(store: Store, snap: Path) -> list[tuple[int, float]]:
    """Resident memory of one shared data set with 1 and 5 researcher pages computing."""
    from bokeh.document import Document

    from tpmap import load_atlas
    from tpmap.apps.explore import make_document
    from tpmap.research import SharedDataset, view_grids

    atlas = load_atlas()
    shared = SharedDataset(store, snapshot=snap, grids=view_grids(atlas))
    pages = []
    out = []
    try:
        for n in (1, 5):
            while len(pages) < n:
                page = make_document(Document(), research=shared, atlas=atlas)
                page.mode.active = 1  # a density map: the heaviest computation
                page.settle()
                pages.append(page)
            gc.collect()
            out.append((n, _resident_mb()))
    finally:
        shared.close()
    return out


def memory_per_mark(store_url: str, snap: Path) -> float:
    """Bytes a mark of the shared data set's marks frame plus its cell index."""
    from tpmap import load_atlas
    from tpmap.research import SharedDataset, view_grids

    shared = SharedDataset(store_url, snapshot=snap, grids=view_grids(load_atlas()))
    try:
        data = shared.ensure().result()
        fixed = data.marks.iloc[:0].memory_usage(deep=True).sum()
        size = data.marks.memory_usage(deep=True).sum() - fixed + data.cells.nbytes
        return size / len(data.marks)
    finally:
        shared.close()


def main(n_marks: int = N_MARKS) -> None:
    """Build the database, time the loads, print the table."""
    isolate()
    with scratch("load") as work:
        url = f"sqlite:///{work / 'tpmap.db'}"
        t_build, (store, sessions) = _timed(lambda: build_database(url, n_marks))
        snap = work / "snapshot"
        rows: list[tuple[str, str, float, float]] = []
        n_big = 0

        t_base, base = _timed(lambda: _baseline(store))
        t_cold, cold = _timed(lambda: load_dataset(store, snapshot=snap))
        assert len(cold.marks) == len(base) == n_marks
        t_nosnap, _ = _timed(lambda: load_dataset(store, snapshot=False))
        t_warm, warm = _timed(lambda: load_dataset(store, snapshot=snap))
        assert warm.refresh is not None and warm.refresh.rows_read == 0
        rows.append(("cold load (no snapshot yet)", f"{n_marks:,}", t_cold, t_base))
        rows.append(("load_dataset(snapshot=False)", f"{n_marks:,}", t_nosnap, t_base))
        rows.append(("warm load (snapshot up to date)", f"{n_marks:,}", t_warm, t_base))

        store.bulk_insert_marks(_mark_rows(sessions[:100], 1_000, seed=3), validate=False)
        with store.engine.connect() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM marks LIMIT 10").all()]
        for mark_id in ids:
            store.update_mark(mark_id, {"technique": "pistoning"}, "bench")
        t_inc, inc = _timed(lambda: load_dataset(store, snapshot=snap))
        t_base2, base2 = _timed(lambda: _baseline(store))
        assert inc.refresh is not None and inc.refresh.kind == "incremental"
        assert len(inc.marks) == len(base2)
        rows.append(("incremental: +1 000 marks, 10 edits", f"{n_marks:,}", t_inc, t_base2))

        big = work / "snapshot-10x"
        n_big = _synthesize_10x(store, snap, big)
        # Read once so that the file is in the page cache, as a warm snapshot would be.
        load_dataset(store, snapshot=big)
        t_big, big_ds = _timed(lambda: load_dataset(store, snapshot=big))
        assert len(big_ds.marks) == n_big
        per_mark = big_ds.marks.memory_usage(deep=True).sum() / len(big_ds.marks)
        t_frame, _ = _timed(
            lambda: _snapshot.MarkSnapshot(big, store.engine).read(
                [c for c in _snapshot.SNAPSHOT_SCHEMA.names if c not in ("id",)]
            )
        )
        rows.append(("warm load (synthesized snapshot)", f"{n_big:,}", t_big, 10 * t_base))
        memory = _pages_memory(store, snap)
        store.close()

        print(f"\n## Loading research data ({platform.processor() or platform.machine()}, ", end="")
        print(f"{platform.python_version()}; database built in {t_build:.0f} s)\n")
        print("| load | marks | tpmap s | read_sql every time s | speed-up |")
        print("|---|---|---|---|---|")
        for name, n, ours, theirs in rows:
            speed = f"{theirs / ours:.0f}x" if ours and theirs else ""
            note = " (x10)" if n == f"{n_big:,}" else ""
            print(f"| {name} | {n} | {ours:.2f} | {theirs:.2f}{note} | {speed} |")
        size = sum(p.stat().st_size for p in big.glob("*")) / 1e6
        print(
            f"\n10^7 marks in memory: {per_mark:.1f} bytes a mark; Parquet read alone "
            f"{t_frame:.2f} s; snapshot size {size:.0f} MB."
        )
        print(
            "\nOne server's shared data set with researcher pages open (10^6 marks): "
            + "; ".join(f"{n} page(s): {mb:.0f} MB resident" for n, mb in memory)
            + f". Marks frame and cell index: {memory_per_mark(url, snap):.1f} bytes a mark."
        )


if __name__ == "__main__":
    main()
