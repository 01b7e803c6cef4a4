"""Loading research data from the database: the Dataset, and the incremental Parquet snapshot.

Runs on SQLite, and on PostgreSQL when TPMAP_TEST_POSTGRES_URL is set. Never mocks the
database: every frame is checked against rows written through the Store API.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import store_fixtures
from tpmap import _snapshot
from tpmap.model import EpisodeInput, MarkInput, OutcomeInput, PatientInput, SessionInput
from tpmap.research import (
    DATASET_MARK_COLUMNS,
    SESSION_COLUMNS,
    Dataset,
    Filters,
    ResponderRule,
    SharedDataset,
    compact_marks,
    days_to_dates,
    fold_to_affected_side,
    load_dataset,
    muscle_table,
    responders,
    to_days,
)
from tpmap.store import Store

store = store_fixtures.store
store_url = store_fixtures.store_url

pytestmark = pytest.mark.filterwarnings("ignore::tpmap.research.DisclosureWarning")

USER = "clin-a"
MUSCLES = ("vmo", "vastus_lateralis", "gluteus_medius", "tensor_fasciae_latae", "soleus")


def mark(
    muscle: str = "vmo",
    *,
    view: str = "anterior",
    x: float = 4.0,
    y: float = 52.0,
    side: str = "right",
    atlas: str = "2025.1",
    **details: object,
) -> MarkInput:
    return MarkInput(view, x, y, muscle, side, "superficial", atlas, **details)  # type: ignore[arg-type]


@dataclass
class Clinic:
    """A small practice; ids of what the tests look for."""

    store: Store
    patients: dict[str, int]
    episodes: dict[str, int]
    sessions: dict[str, int]
    marks: dict[str, int]


@pytest.fixture
def clinic(store: Store) -> Clinic:
    """Five patients.

    - ``anna``: one episode (PFP, right), two sessions with NPRS 7/6 then 5/3 (a NPRS
      responder from the sessions); marks vmo (s1) and gluteus medius (s2); one mark in s2
      is deleted.
    - ``ben``: OA left; Kujala 50 -> 65 (responder), NPRS outcome 6 -> 5 (non-responder,
      taking precedence over his sessions' NPRS 8 -> 2); one mark.
    - ``cara``: an episode, no sessions, no marks.
    - ``dora``: no episode at all (not in the cohort).
    - ``emil``: an older OA-left episode with a mark, and a newer PFP-right episode with a mark.
    """
    s = store
    patients = {
        "anna": s.create_patient(PatientInput("P-anna", "female", 1980), USER).id,
        "ben": s.create_patient(PatientInput("P-ben", "male", None), USER).id,
        "cara": s.create_patient(PatientInput("P-cara", "female", 2001), USER).id,
        "dora": s.create_patient(PatientInput("P-dora", "other", 1970), USER).id,
        "emil": s.create_patient(PatientInput("P-emil", "male", 1960), USER).id,
    }
    day = dt.date

    def episode(who: str, condition: str, side: str, start: dt.date) -> int:
        return s.create_episode(patients[who], EpisodeInput(condition, side, start), USER).id

    episodes = {
        "anna": episode("anna", "patellofemoral_pain", "right", day(2024, 1, 1)),
        "ben": episode("ben", "knee_osteoarthritis", "left", day(2024, 1, 5)),
        "cara": episode("cara", "lateral_knee_pain", "right", day(2024, 2, 1)),
        "emil_old": episode("emil", "knee_osteoarthritis", "left", day(2023, 3, 1)),
        "emil": episode("emil", "patellofemoral_pain", "right", day(2024, 3, 1)),
    }

    def session(ep: str, date: dt.date, clinician: str, before=None, after=None) -> int:
        return s.create_session(episodes[ep], SessionInput(date, clinician, before, after), USER).id

    sessions = {
        "anna1": session("anna", day(2024, 1, 2), "Dr A", 7, 6),
        "anna2": session("anna", day(2024, 2, 2), "Dr B", 5, 3),
        "ben1": session("ben", day(2024, 1, 6), "Dr A", 8, 5),
        "ben2": session("ben", day(2024, 2, 6), "Dr A", 4, 2),
        "emil_old": session("emil_old", day(2023, 3, 2), "Dr B"),
        "emil": session("emil", day(2024, 3, 2), "Dr B"),
    }
    marks = {
        "anna_vmo": s.add_mark(sessions["anna1"], mark("vmo", technique="static"), USER).id,
        "anna_gmed": s.add_mark(
            sessions["anna2"],
            mark("gluteus_medius", view="posterior", x=12.0, y=95.0, technique="electrical"),
            USER,
        ).id,
        "anna_deleted": s.add_mark(sessions["anna2"], mark("vastus_lateralis", x=9.0), USER).id,
        "ben_vl": s.add_mark(
            sessions["ben1"], mark("vastus_lateralis", x=-9.0, side="left"), USER
        ).id,
        "emil_old": s.add_mark(
            sessions["emil_old"], mark("soleus", view="posterior", y=30.0, atlas="2024.9"), USER
        ).id,
        "emil": s.add_mark(sessions["emil"], mark("vmo"), USER).id,
    }
    s.delete_mark(marks["anna_deleted"], USER)
    for instrument, score, date in (
        ("kujala", 50, day(2024, 1, 5)),
        ("kujala", 65, day(2024, 3, 5)),
        ("nprs", 6, day(2024, 1, 5)),
        ("nprs", 5, day(2024, 3, 5)),
    ):
        s.add_outcome(episodes["ben"], OutcomeInput(instrument, score, date), USER)
    return Clinic(s, patients, episodes, sessions, marks)


@pytest.fixture
def snap_dir(tmp_path: Path) -> Path:
    return tmp_path / "snapshot"


def by_id(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort.set_index("patient_id")


# --------------------------------------------------------------------------------------------
# What a Dataset holds
# --------------------------------------------------------------------------------------------


def test_cohort_has_a_row_per_patient_episode(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    p, e = clinic.patients, clinic.episodes
    assert sorted(ds.cohort["episode_id"]) == sorted(e.values())
    assert set(ds.cohort["patient_id"]) == {p["anna"], p["ben"], p["cara"], p["emil"]}
    assert ds.n_patients == 4  # dora has no episode
    cara = ds.cohort.set_index("episode_id").loc[e["cara"]]
    assert cara["condition"] == "lateral_knee_pain" and cara["n_sessions"] == 0
    assert pd.isna(cara["first_session"])
    assert p["cara"] not in set(ds.marks["patient_id"])  # counted without marks
    assert np.isnan(by_id(ds.cohort).loc[p["ben"], "birth_year"])
    assert ds.cohort["episode_id"].is_unique


def test_each_mark_keeps_its_own_episode(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    episodes = ds.cohort.set_index("episode_id")
    e = clinic.episodes
    assert episodes.loc[e["emil_old"], ["condition", "affected_side"]].tolist() == [
        "knee_osteoarthritis",
        "left",
    ]
    assert episodes.loc[e["emil"], ["condition", "affected_side"]].tolist() == [
        "patellofemoral_pain",
        "right",
    ]
    assert episodes.loc[e["emil"], "first_session"] == pd.Timestamp("2024-03-02")
    marks = ds.marks.loc[ds.marks["patient_id"] == clinic.patients["emil"]]
    assert sorted(marks["episode_id"]) == sorted([e["emil_old"], e["emil"]])
    # His earlier mark counts under knee OA and is folded by its own (left) knee.
    _cohort, oa = ds.filter(Filters(conditions=["knee_osteoarthritis"]))
    assert set(oa.loc[oa["patient_id"] == clinic.patients["emil"], "muscle"]) == {"soleus"}
    _folded_cohort, folded = fold_to_affected_side(ds.cohort, ds.marks)
    old = folded.loc[folded["episode_id"] == e["emil_old"]].iloc[0]
    new = folded.loc[folded["episode_id"] == e["emil"]].iloc[0]
    assert (old["x"], old["side"]) == (np.float32(-4.0), "left")
    assert (new["x"], new["side"]) == (np.float32(4.0), "right")


def test_sessions_include_those_without_marks(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    assert list(ds.sessions.columns) == list(SESSION_COLUMNS)
    assert sorted(ds.sessions["session_id"]) == sorted(clinic.sessions.values())
    ben2 = ds.sessions.set_index("session_id").loc[clinic.sessions["ben2"]]
    assert ben2["session_date"] == to_days("2024-02-06") and ben2["clinician"] == "Dr A"
    # A clinician's denominator: the patients they treated, with or without marks.
    cohort, marks = ds.filter(Filters(clinicians=["Dr A"], date_from="2024-02-01"))
    assert set(cohort["patient_id"]) == {clinic.patients["ben"]}  # ben2 has no marks
    assert marks.empty


def test_deleted_marks_are_excluded(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    assert len(ds.marks) == 5
    assert ds.n_deleted_excluded == 1
    assert "vastus_lateralis" not in set(ds.marks.loc[ds.marks["side"] == "right", "muscle"])
    assert ds.atlas_versions == ("2024.9", "2025.1")


def test_marks_carry_patient_session_date_and_muscle(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    m = ds.marks
    assert list(m.columns) == list(DATASET_MARK_COLUMNS)
    gmed = m.loc[m["muscle"] == "gluteus_medius"].iloc[0]
    assert gmed["patient_id"] == clinic.patients["anna"]
    assert gmed["session_id"] == clinic.sessions["anna2"]
    assert gmed["episode_id"] == clinic.episodes["anna"]
    assert gmed["session_date"] == to_days("2024-02-02")
    assert gmed["clinician"] == "Dr B"
    assert (gmed["view"], gmed["side"], gmed["technique"]) == ("posterior", "right", "electrical")
    assert gmed["x"] == np.float32(12.0) and gmed["y"] == np.float32(95.0)
    assert pd.isna(m.loc[m["patient_id"] == clinic.patients["ben"], "technique"]).all()
    # The frame is already in the compact layout: compact_marks changes nothing.
    pd.testing.assert_frame_equal(compact_marks(m), m)
    assert days_to_dates(m["session_date"]).min() == pd.Timestamp("2023-03-02")


def test_responders(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    cohort = ds.cohort.set_index("episode_id")
    e = clinic.episodes
    assert set(ds.instruments) == {"kujala", "nprs"}
    # Anna: NPRS before needling at her first session (7) and 31 days later (5).
    assert cohort.loc[e["anna"], "responder_nprs"] == "responder"
    # Ben: NPRS outcome measures (6 -> 5) win over his sessions' (8 -> 4).
    assert cohort.loc[e["ben"], "responder_nprs"] == "non_responder"
    assert cohort.loc[e["ben"], "responder_kujala"] == "responder"
    for who in ("cara", "emil", "emil_old"):
        assert cohort.loc[e[who], "responder_nprs"] == "unknown"
        assert cohort.loc[e[who], "responder_kujala"] == "unknown"
    before = ds.outcomes.loc[ds.outcomes["source"] == "session_before"]
    p = clinic.patients
    assert before["patient_id"].tolist() == [p["anna"], p["anna"], p["ben"], p["ben"]]
    assert before["score"].tolist() == [7.0, 5.0, 8.0, 4.0]  # never the NPRS after needling
    statuses = responders(ds.outcomes, ds.cohort, rule=ResponderRule("nprs"))
    assert statuses.set_index("episode_id").loc[e["cara"], "reason"] == "no_sessions"


def test_an_outcome_removed_as_a_mistake_is_not_an_outcome(clinic: Clinic, snap_dir: Path) -> None:
    e = clinic.episodes
    wrong = clinic.store.add_outcome(
        e["ben"], OutcomeInput("kujala", 20, dt.date(2024, 3, 6)), USER
    )
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    assert ds.cohort.set_index("episode_id").loc[e["ben"], "responder_kujala"] == "non_responder"
    clinic.store.delete_outcome(wrong.id, USER)
    ds = load_dataset(clinic.store, snapshot=False)
    scores = ds.outcomes.loc[ds.outcomes["instrument"] == "kujala", "score"].tolist()
    assert scores == [50.0, 65.0]
    assert ds.cohort.set_index("episode_id").loc[e["ben"], "responder_kujala"] == "responder"


def test_filters_end_to_end(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    p = clinic.patients
    cohort, marks = ds.filter(Filters(conditions=["patellofemoral_pain"]))
    assert set(cohort["patient_id"]) == {p["anna"], p["emil"]}
    # Emil's mark of his earlier (OA) episode is not a PFP mark.
    assert set(marks["patient_id"]) == {p["anna"], p["emil"]} and len(marks) == 3
    cohort, marks = ds.filter(Filters(responder=["responder"], instrument="nprs"))
    assert cohort["patient_id"].tolist() == [p["anna"]]
    cohort, marks = ds.filter(Filters(clinicians=["Dr A"], date_from="2024-01-01"))
    assert set(cohort["patient_id"]) == {p["anna"], p["ben"]}  # patients Dr A treated
    assert sorted(marks["muscle"].astype(str)) == ["vastus_lateralis", "vmo"]
    cohort, marks = ds.filter(Filters(age_bands=["18-29"]))  # cara, 2001, at her 2024 start
    assert cohort["patient_id"].tolist() == [p["cara"]] and marks.empty
    table = muscle_table(*reversed(ds.filter(Filters())), min_patients=1)
    vmo = table.loc[(table["muscle"] == "vmo") & (table["side"] == "right")].iloc[0]
    assert (vmo["n_patients"], vmo["n_cohort"]) == (2, 4)  # emil counts once
    with pytest.raises(ValueError, match="instrument"):
        Filters(responder=["responder"], instrument="nope")


def test_widget_conveniences(clinic: Clinic, snap_dir: Path) -> None:
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    assert isinstance(ds, Dataset)
    assert ds.clinicians == ("Dr A", "Dr B")
    assert ds.date_range == (dt.date(2023, 3, 2), dt.date(2024, 3, 2))
    assert ds.n_patients == 4
    assert ds.loaded_at.tzinfo is not None


def test_url_source_and_no_snapshot(clinic: Clinic, store_url: str, snap_dir: Path) -> None:
    from_url = load_dataset(store_url, snapshot=False)
    from_store = load_dataset(clinic.store, snapshot=snap_dir)
    assert from_url.snapshot is None and from_url.refresh is None
    pd.testing.assert_frame_equal(from_url.marks, from_store.marks)
    pd.testing.assert_frame_equal(from_url.cohort, from_store.cohort)
    pd.testing.assert_frame_equal(from_url.outcomes, from_store.outcomes)
    pd.testing.assert_frame_equal(from_url.sessions, from_store.sessions)


def test_empty_database(store: Store, snap_dir: Path) -> None:
    ds = load_dataset(store, snapshot=snap_dir)
    assert ds.marks.empty and ds.cohort.empty and ds.outcomes.empty and ds.sessions.empty
    assert list(ds.marks.columns) == list(DATASET_MARK_COLUMNS)
    assert ds.date_range is None and ds.clinicians == () and ds.atlas_versions == ()


# --------------------------------------------------------------------------------------------
# The incremental snapshot gives exactly what a full load gives
# --------------------------------------------------------------------------------------------


def no_time_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the high-water mark a day ahead: only ids and the change log can find changes."""
    for name in ("SAFETY_MARGIN", "SERIAL_WRITER_MARGIN"):
        monkeypatch.setattr(_snapshot, name, -dt.timedelta(days=1))


def assert_same(incremental: Dataset, full: Dataset) -> None:
    pd.testing.assert_frame_equal(incremental.marks, full.marks)
    pd.testing.assert_frame_equal(incremental.cohort, full.cohort)
    pd.testing.assert_frame_equal(incremental.outcomes, full.outcomes)
    pd.testing.assert_frame_equal(incremental.sessions, full.sessions)
    assert incremental.n_deleted_excluded == full.n_deleted_excluded
    assert incremental.atlas_versions == full.atlas_versions


def random_changes(clinic: Clinic, rng: random.Random, *, session_edits: bool) -> None:
    """A burst of what clinicians do: add, edit, move, delete, restore, undo, bulk import."""
    s = clinic.store
    sessions = list(clinic.sessions.values())
    with s.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM marks").all()]
    for _ in range(rng.randint(3, 8)):
        op = rng.choice(["add", "add", "bulk", "update", "move", "delete", "restore", "undo"])
        if session_edits and rng.random() < 0.2:
            op = "session"
        mark_id = rng.choice(ids)
        current = s.get_mark(mark_id)
        if op == "add":
            sid = rng.choice(sessions)
            ids.append(s.add_mark(sid, mark(rng.choice(MUSCLES), x=rng.uniform(-20, 20)), USER).id)
        elif op == "bulk":
            rows = [
                {
                    "session_id": rng.choice(sessions),
                    **asdict(mark(rng.choice(MUSCLES), x=rng.uniform(-20, 20), atlas="2025.2")),
                }
                for _ in range(rng.randint(1, 5))
            ]
            s.bulk_insert_marks(rows, validate=False)
            with s.engine.connect() as conn:
                ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM marks").all()]
        elif op == "update" and current.deleted_at is None:
            s.update_mark(
                mark_id,
                {"muscle": rng.choice(MUSCLES), "technique": rng.choice(["static", "pistoning"])},
                USER,
            )
        elif op == "move" and current.deleted_at is None:
            s.move_mark(mark_id, rng.uniform(-20, 20), 60.0, "vmo", "left", "deep", USER)
        elif op == "delete":
            s.delete_mark(mark_id, USER)
        elif op == "restore":
            s.restore_mark(mark_id, USER)
        elif op == "undo":
            s.undo_last(current.session_id, USER)
        elif op == "session":
            s.update_session(
                rng.choice(sessions),
                {"clinician": rng.choice(["Dr A", "Dr C"]), "date": dt.date(2024, 4, 1)},
                USER,
            )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", ["default", "no_timestamps", "no_compaction"])
def test_incremental_refresh_equals_full_load(
    clinic: Clinic,
    snap_dir: Path,
    seed: int,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if mode == "no_timestamps":
        # A high-water mark in the future: ids and the change log alone must find every change.
        no_time_window(monkeypatch)
    if mode == "no_compaction":
        monkeypatch.setattr(_snapshot, "COMPACT_SHARE", 1e9)
        monkeypatch.setattr(_snapshot, "COMPACT_PARTS", 1000)
    rng = random.Random(seed)
    first = load_dataset(clinic.store, snapshot=snap_dir)
    assert first.refresh is not None and first.refresh.kind == "cold"
    for _ in range(4):
        random_changes(clinic, rng, session_edits=mode != "no_timestamps")
        incremental = load_dataset(clinic.store, snapshot=snap_dir)
        assert incremental.refresh is not None and incremental.refresh.kind != "cold"
        assert_same(incremental, load_dataset(clinic.store, snapshot=False))
    if mode == "no_compaction":
        assert incremental.refresh.parts > 1


def test_refresh_reads_only_changed_rows(
    clinic: Clinic, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_time_window(monkeypatch)
    load_dataset(clinic.store, snapshot=snap_dir)
    again = load_dataset(clinic.store, snapshot=snap_dir)
    assert again.refresh is not None and (again.refresh.kind, again.refresh.rows_read) == (
        "none",
        0,
    )
    clinic.store.add_mark(clinic.sessions["ben2"], mark("soleus"), USER)
    clinic.store.update_mark(clinic.marks["anna_vmo"], {"technique": "pistoning"}, USER)
    clinic.store.restore_mark(clinic.marks["anna_deleted"], USER)
    after = load_dataset(clinic.store, snapshot=snap_dir)
    assert after.refresh is not None and after.refresh.rows_read == 3
    assert after.n_deleted_excluded == 0 and len(after.marks) == 7


def test_snapshot_of_a_replaced_database_is_rebuilt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    snap_dir = tmp_path / "snap"

    def fill(n: int) -> None:
        with Store(url) as s:
            pid = s.create_patient(PatientInput("P-1"), USER).id
            eid = s.create_episode(
                pid, EpisodeInput("other", "right", dt.date(2024, 1, 1)), USER
            ).id
            sid = s.create_session(eid, SessionInput(dt.date(2024, 1, 2), "Dr A"), USER).id
            for _ in range(n):
                s.add_mark(sid, mark(), USER)

    fill(3)
    assert len(load_dataset(url, snapshot=snap_dir).marks) == 3
    (tmp_path / "db.sqlite").unlink()
    fill(2)  # same URL, fresh database with lower ids
    ds = load_dataset(url, snapshot=snap_dir)
    assert ds.refresh is not None and ds.refresh.kind == "cold"
    assert len(ds.marks) == 2


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def test_memory_is_at_most_32_bytes_a_mark(clinic: Clinic, snap_dir: Path) -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    sessions = list(clinic.sessions.values())
    rows = [
        {
            "session_id": int(rng.choice(sessions)),
            "view": "anterior",
            "x": float(rng.uniform(-20, 20)),
            "y": float(rng.uniform(10, 110)),
            "muscle": MUSCLES[int(rng.integers(len(MUSCLES)))],
            "side": "right",
            "layer": "superficial",
            "atlas_version": "2025.1",
            "technique": "static",
            "ltr_grade": "weak",
            "tp_status": "active",
        }
        for _ in range(n)
    ]
    clinic.store.bulk_insert_marks(rows, validate=False)
    ds = load_dataset(clinic.store, snapshot=snap_dir)
    assert len(ds.marks) == n + 5
    total = ds.marks.memory_usage(deep=True, index=True).sum()
    # The per-frame constants (category labels, the index) do not grow with the marks.
    fixed = ds.marks.iloc[:0].memory_usage(deep=True, index=True).sum()
    assert (total - fixed) / len(ds.marks) <= 32
    assert fixed < 4096


# --------------------------------------------------------------------------------------------
# One data set per server process
# --------------------------------------------------------------------------------------------


def test_shared_dataset_loads_once_for_every_page(clinic: Clinic, snap_dir: Path) -> None:
    shared = SharedDataset(clinic.store, snapshot=snap_dir, max_age=3600)
    try:
        futures = [shared.ensure() for _ in range(5)]  # five tabs opening at once
        data = futures[0].result(timeout=60)
        assert all(f.result(timeout=60) is data for f in futures)
        assert shared.loads == 1 and shared.progress == "ready"
        # Sorted by patient, the order density maps want; the same marks as a plain load.
        assert data.marks["patient_id"].is_monotonic_increasing
        plain = load_dataset(clinic.store, snapshot=False).marks
        key = ["session_id", "muscle", "x"]
        pd.testing.assert_frame_equal(
            data.marks.sort_values(key).reset_index(drop=True),
            plain.sort_values(key).reset_index(drop=True),
        )
        assert shared.ensure().result() is data and shared.loads == 1
    finally:
        shared.close()


def test_shared_dataset_refreshes_only_when_something_changed(
    clinic: Clinic, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL the snapshot re-reads the last minutes' rows (SAFETY_MARGIN): marks
    # written just now would count as a change. Only ids and the change log decide here.
    no_time_window(monkeypatch)
    shared = SharedDataset(clinic.store, snapshot=snap_dir, max_age=0)
    try:
        first = shared.ensure().result(timeout=60)
        assert shared.ensure().result(timeout=60) is first and shared.loads == 1
        clinic.store.add_mark(clinic.sessions["ben2"], mark("soleus"), USER)
        second = shared.ensure().result(timeout=60)
        assert second is not first and len(second.marks) == len(first.marks) + 1
        clinic.store.create_session(
            clinic.episodes["cara"], SessionInput(dt.date(2024, 2, 3), "Dr C"), USER
        )
        third = shared.ensure().result(timeout=60)
        assert "Dr C" in third.clinicians and shared.loads == 3
    finally:
        shared.close()


def test_perturbation_key_survives_a_restart(clinic: Clinic, snap_dir: Path) -> None:
    a = SharedDataset(clinic.store, snapshot=snap_dir)
    b = SharedDataset(clinic.store, snapshot=snap_dir)
    ids = np.arange(1, 30)
    assert a.cell_key.count(ids, floor=5) == b.cell_key.count(ids, floor=5)
    key_file = snap_dir / "cellkey.bin"
    assert key_file.stat().st_mode & 0o777 == 0o600
    a.close()
    b.close()


# --------------------------------------------------------------------------------------------
# The snapshot with several processes
# --------------------------------------------------------------------------------------------


def test_snapshot_lives_where_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_snapshot.SNAPSHOT_ENV, str(tmp_path / "cache"))
    directory = _snapshot.default_snapshot_dir("sqlite:///somewhere.db")
    assert directory.parent == tmp_path / "cache" and directory.name.startswith("marks-")


def test_replaced_parts_are_removed_only_after_a_grace_period(
    clinic: Clinic, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_snapshot, "COMPACT_PARTS", 0)  # compact on every refresh
    snap = _snapshot.MarkSnapshot(snap_dir, clinic.store.engine)
    snap.refresh()
    old = {p.name for p in snap_dir.glob("*.parquet")}
    stale = snap._read_state()
    clinic.store.add_mark(clinic.sessions["ben2"], mark("soleus"), USER)
    snap.refresh()
    # A reader that read the old state can still open its parts...
    assert old <= {p.name for p in snap_dir.glob("*.parquet")}
    assert snap._read_merged(stale).num_rows == 6
    # ...until the grace period is over.
    later = dt.datetime.now(dt.UTC) + _snapshot.GRACE + dt.timedelta(seconds=1)
    snap._remove_unlisted(snap._read_state(), now=later)
    assert not old & {p.name for p in snap_dir.glob("*.parquet")}
    with pytest.raises(FileNotFoundError):
        snap._read_merged(stale)
    # A reader holding the stale state reads the state again and gets the new rows.
    states = iter([stale])
    real = snap._read_state
    monkeypatch.setattr(snap, "_read_state", lambda **kw: next(states, None) or real(**kw))
    assert snap.read().num_rows == 7


_WRITER = """
import datetime as dt, sys
from tpmap import _snapshot
from tpmap.model import MarkInput
from tpmap.store import Store
_snapshot.COMPACT_PARTS = 1
store = Store(sys.argv[1])
snap = _snapshot.MarkSnapshot(sys.argv[2], store.engine)
for i in range(12):
    store.add_mark(int(sys.argv[3]), MarkInput("anterior", 1.0 + i, 50.0, "vmo", "right",
                   "superficial", "2025.1"), "writer")
    snap.refresh()
print("done")
"""


def test_readers_in_other_processes_never_see_a_half_written_snapshot(
    clinic: Clinic, snap_dir: Path, store_url: str
) -> None:
    import subprocess
    import sys

    snap = _snapshot.MarkSnapshot(snap_dir, clinic.store.engine)
    snap.refresh()
    # The writer's refreshes remove replaced parts at once (no grace): the reader's retry
    # is what keeps it going.
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER.replace("_snapshot.COMPACT_PARTS = 1",
                                               "_snapshot.COMPACT_PARTS = 1\n"
                                               "_snapshot.GRACE = dt.timedelta(0)"),
         store_url, str(snap_dir), str(clinic.sessions["ben2"])],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen = set()
    try:
        while writer.poll() is None:
            table = snap.read(["id", "deleted"])
            ids = table.column("id").to_numpy()
            assert (np.diff(ids) > 0).all()  # whole, sorted, no duplicates
            seen.add(table.num_rows)
    finally:
        out, _ = writer.communicate(timeout=120)
    assert "done" in out
    assert snap.read().num_rows == 6 + 12
    assert len(seen) >= 1


def test_stale_snapshots_are_evicted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    old, fresh = root / "marks-old", root / "marks-fresh"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "state.json").write_text("{}")
    long_ago = (dt.datetime.now() - _snapshot.STALE_AFTER - dt.timedelta(days=1)).timestamp()
    import os

    os.utime(old / "state.json", (long_ago, long_ago))
    assert _snapshot.evict_stale(root) == 1
    assert not old.exists() and fresh.exists()
