"""The store as a clinician and a researcher meet it: what is kept, what is hidden, undo."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, Table, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

import store_fixtures
from tpmap.model import EpisodeInput, MarkInput, PatientInput, SessionInput, ValidationError
from tpmap.store import (
    NotFoundError,
    Store,
    current_revision,
    default_database_url,
    head_revision,
    make_engine,
    open_store,
)
from tpmap.store._migrate import alembic_config, downgrade
from tpmap.store.schema import PatientRow, metadata, utcnow

# The shared database fixtures (tests/store_fixtures.py): a Store on SQLite, and on PostgreSQL
# when TPMAP_TEST_POSTGRES_URL is set.
store = store_fixtures.store
store_url = store_fixtures.store_url

USER = "clin-a"


@dataclass
class Clinic:
    store: Store
    patient_id: int
    episode_id: int
    session_id: int


@pytest.fixture
def clinic(store: Store) -> Clinic:
    patient = store.create_patient(PatientInput("P-0042", "female", 1985), USER)
    episode = store.create_episode(
        patient.id, EpisodeInput("patellofemoral_pain", "right", dt.date(2024, 3, 1)), USER
    )
    session = store.create_session(episode.id, SessionInput(dt.date(2024, 3, 4), "Dr A", 6), USER)
    return Clinic(store, patient.id, episode.id, session.id)


POSITION = {
    "view": "anterior",
    "x": "4",
    "y": "52",
    "muscle": "vmo",
    "side": "right",
    "layer": "superficial",
    "atlas_version": "2025.1",
}


def mark(muscle: str = "vmo", x: float = 4.0, side: str = "right", **details: object) -> MarkInput:
    return MarkInput(
        view="anterior",
        x=x,
        y=52.0,
        muscle=muscle,
        side=side,
        layer="superficial",
        atlas_version="2025.1",
        **details,  # type: ignore[arg-type]
    )


def snapshot(store: Store) -> tuple[object, ...]:
    """Everything a failed call must leave untouched."""
    with store.engine.connect() as conn:
        changes = conn.execute(text("SELECT count(*) FROM mark_changes")).scalar_one()
        marks = conn.execute(text("SELECT * FROM marks ORDER BY id")).all()
        sessions = conn.execute(text("SELECT * FROM sessions ORDER BY id")).all()
    return store.counts(), changes, marks, sessions


# -- opening, migrations ---------------------------------------------------------------------------


def test_migrated_schema_matches_the_metadata(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_reopening_is_idempotent_and_keeps_data(store_url: str) -> None:
    with open_store(store_url) as first:
        first.create_patient({"code": "P-1"}, USER)
    with open_store(store_url) as second, open_store(store_url) as third:
        assert current_revision(second.engine) == head_revision()
        assert [p.code for p in third.find_patients("")] == ["P-1"]


CHANGE_INDEXES = {
    "marks": {"ix_marks_created_at", "ix_marks_updated_at", "ix_marks_deleted_at"},
    "sessions": {"ix_sessions_updated_at"},
    "mark_changes": {"ix_mark_changes_at"},
}


def index_names(engine: object, table: str) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes(table)}  # type: ignore[misc]


def test_a_0001_database_is_upgraded_on_open_and_keeps_its_rows(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        assert current_revision(engine) == "0001"
        for table, names in CHANGE_INDEXES.items():
            assert not names & index_names(engine, table)
        with engine.begin() as conn:
            conn.execute(
                insert(PatientRow).values(
                    code="P-OLD", sex="unknown", created_at=utcnow(), created_by=USER
                )
            )
    finally:
        engine.dispose()
    with Store(store_url) as st:
        assert current_revision(st.engine) == head_revision()
        for table, names in CHANGE_INDEXES.items():
            assert names <= index_names(st.engine, table)
        assert [p.code for p in st.find_patients("")] == ["P-OLD"]


def test_the_change_indexes_are_dropped_on_downgrade(store: Store) -> None:
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    for table, names in CHANGE_INDEXES.items():
        assert not names & index_names(store.engine, table)
    assert current_revision(store.engine) == "0001"


MARKS: Table = metadata.tables["marks"]
CHANGES: Table = metadata.tables["mark_changes"]


def _rows(engine: Engine, table: Table) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]


def _check_constraints(engine: Engine) -> set[str | None]:
    return {c["name"] for c in inspect(engine).get_check_constraints("marks")}


def _insert_layer(engine: Engine, like: int, layer: str) -> None:
    """Copy mark ``like`` with another layer straight into the table, past the model."""
    with engine.begin() as conn:
        row = conn.execute(select(MARKS).where(MARKS.c.id == like)).mappings().one()
        values = {k: v for k, v in row.items() if k != "id"} | {"layer": layer}
        conn.execute(insert(MARKS).values(**values))


def test_a_0002_database_takes_structures_marks_after_upgrade_and_keeps_every_row(
    clinic: Clinic, store_url: str
) -> None:
    st = clinic.store
    first = st.add_mark(clinic.session_id, mark("vmo"), USER)
    moved = st.add_mark(clinic.session_id, mark("vastus_medialis", x=5.0), USER)
    st.move_mark(moved.id, 5.5, 60.0, "vastus_medialis", "right", "superficial", USER)
    st.delete_mark(first.id, USER)
    indexes = index_names(st.engine, "marks")
    checks = _check_constraints(st.engine)
    st.close()
    engine = make_engine(store_url).execution_options(tpmap_write=True)
    try:
        downgrade(engine, "0002")  # as a database written by the previous version
        assert current_revision(engine) == "0002"
        marks, changes = _rows(engine, MARKS), _rows(engine, CHANGES)
        with pytest.raises(IntegrityError):  # 0002 refuses the new layer...
            _insert_layer(engine, moved.id, "structures")
    finally:
        engine.dispose()
    with Store(store_url) as upgraded:
        assert current_revision(upgraded.engine) == head_revision()
        # ... nothing recorded changes: every mark keeps its layer and atlas version, the
        # change log (and so undo) is intact, and so are the indexes and other constraints.
        assert _rows(upgraded.engine, MARKS) == marks
        assert _rows(upgraded.engine, CHANGES) == changes
        assert index_names(upgraded.engine, "marks") == indexes
        assert _check_constraints(upgraded.engine) == checks
        structure = MarkInput(
            view="anterior",
            x=-5.0,
            y=53.5,
            muscle="mpfl",
            side="right",
            layer="structures",
            atlas_version="2026.12.1+acdfb409",
        )
        added = upgraded.add_mark(clinic.session_id, structure, USER)
        assert (added.muscle, added.layer) == ("mpfl", "structures")
        assert upgraded.undo_last(clinic.session_id, USER) is not None
        # The database itself still refuses a layer that does not exist.
        with pytest.raises(IntegrityError):
            _insert_layer(upgraded.engine, moved.id, "bone")
        with upgraded.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_downgrade_below_0004_is_refused_while_structures_marks_exist(
    clinic: Clinic, store_url: str
) -> None:
    st = clinic.store
    added = st.add_mark(clinic.session_id, mark("vmo"), USER)
    _insert_layer(st.engine, added.id, "structures")
    st.close()
    engine = make_engine(store_url).execution_options(tpmap_write=True)
    try:
        with pytest.raises(RuntimeError, match="1 marks are on the structures layer"):
            downgrade(engine, "0002")
        assert current_revision(engine) == head_revision()
        assert len(_rows(engine, MARKS)) == 2
    finally:
        engine.dispose()


def test_codes_become_unique_per_clinic_on_upgrade_and_a_shared_code_blocks_downgrade(
    store_url: str,
) -> None:
    with Store(store_url) as st:
        north = st.add_clinic("North", user=USER).id
        south = st.add_clinic("South", user=USER).id
        st.create_patient({"code": "P-001"}, USER, clinic_id=north)
    engine = make_engine(store_url).execution_options(tpmap_write=True)
    try:
        downgrade(engine, "0005")  # as the previous version: one code in the whole server
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                insert(PatientRow).values(
                    code="P-001", clinic_id=south, sex="unknown", created_at=utcnow()
                )
            )
    finally:
        engine.dispose()
    with Store(store_url) as upgraded:
        assert current_revision(upgraded.engine) == head_revision()
        assert [p.code for p in upgraded.find_patients("")] == ["P-001"]
        shared = upgraded.create_patient({"code": "P-001"}, USER, clinic_id=south)
        assert shared.clinic_id == south
    engine = make_engine(store_url).execution_options(tpmap_write=True)
    try:
        with pytest.raises(RuntimeError, match="1 patient codes are used in more than one"):
            downgrade(engine, "0005")
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_a_committed_mark_is_visible_from_a_second_store(clinic: Clinic, store_url: str) -> None:
    added = clinic.store.add_mark(clinic.session_id, mark(), USER)
    with Store(store_url) as other:
        assert other.session_marks(clinic.session_id) == [added]


def test_timestamps_are_timezone_aware_utc(clinic: Clinic) -> None:
    added = clinic.store.add_mark(clinic.session_id, mark(), USER)
    assert added.created_at.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - added.created_at) < dt.timedelta(minutes=5)
    deleted = clinic.store.delete_mark(added.id, USER)
    assert deleted.deleted_at is not None and deleted.deleted_at.tzinfo is not None


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'tpmap.db'}"
    with open_store(url) as opened, opened.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_default_url_comes_from_the_environment_or_the_user_data_dir(monkeypatch) -> None:
    monkeypatch.setenv("TPMAP_DATABASE_URL", "postgresql+psycopg://db/tpmap")
    assert default_database_url() == "postgresql+psycopg://db/tpmap"
    monkeypatch.delenv("TPMAP_DATABASE_URL")
    url = default_database_url()
    assert url.startswith("sqlite:///") and url.endswith("tpmap.db") and "tpmap" in url[:-8]


# -- patients, episodes, sessions ------------------------------------------------------------------


def test_patient_codes_are_unique_ignoring_case(clinic: Clinic) -> None:
    before = snapshot(clinic.store)
    with pytest.raises(ValidationError, match="P-0042 is already in use"):
        clinic.store.create_patient({"code": "p-0042"}, USER)
    assert snapshot(clinic.store) == before


def test_a_name_is_refused_as_patient_code(store: Store) -> None:
    with pytest.raises(ValidationError, match="must not look like a name"):
        store.create_patient({"code": "Jane Doe", "sex": "female"}, USER)
    assert store.find_patients("") == []


def test_find_patients_by_code_prefix_first_case_insensitive(store: Store) -> None:
    for code in ("KNEE-P-1", "P-100", "P-101", "X_P-1", "AP1"):
        store.create_patient({"code": code}, USER)
    assert [p.code for p in store.find_patients("p-1")] == ["P-100", "P-101", "KNEE-P-1", "X_P-1"]
    assert [p.code for p in store.find_patients("p-1", limit=1)] == ["P-100"]
    # '_' and '%' are literal characters in a code, not LIKE wildcards.
    assert [p.code for p in store.find_patients("_")] == ["X_P-1"]
    assert store.find_patients("%") == []
    assert store.patient_by_code("x_p-1") is not None


def test_episodes_and_sessions_are_listed_in_date_order(clinic: Clinic) -> None:
    st = clinic.store
    later = st.create_session(clinic.episode_id, {"date": "2024-03-18", "clinician": "Dr B"}, USER)
    earlier = st.create_session(
        clinic.episode_id, {"date": "2024-03-02", "clinician": "Dr B"}, USER
    )
    dates = [s.date for s in st.list_sessions(clinic.episode_id)]
    assert dates == [earlier.date, dt.date(2024, 3, 4), later.date]
    assert [e.condition for e in st.list_episodes(clinic.patient_id)] == ["patellofemoral_pain"]
    with pytest.raises(NotFoundError):
        st.create_session(999_999, {"date": "2024-03-02", "clinician": "Dr B"}, USER)


def test_update_session_records_pain_after_treatment(clinic: Clinic) -> None:
    updated = clinic.store.update_session(clinic.session_id, {"nprs_after": "3"}, "clin-b")
    assert (updated.nprs_before, updated.nprs_after) == (6, 3)
    assert updated.updated_at is not None
    before = snapshot(clinic.store)
    with pytest.raises(ValidationError, match="NPRS is a whole number from 0 to 10"):
        clinic.store.update_session(clinic.session_id, {"nprs_after": "12"}, USER)
    assert snapshot(clinic.store) == before


# -- marks -----------------------------------------------------------------------------------------


def test_add_mark_keeps_every_clinical_detail(clinic: Clinic) -> None:
    details = {
        "technique": "electrical",
        "insertions": 4,
        "ltr_grade": "strong",
        "ltr_count": 2,
        "depth_mm": 25.0,
        "needle_length_mm": 40.0,
        "needle_gauge_mm": 0.3,
        "retention_min": 10.0,
        "estim_frequency_hz": 2.0,
        "estim_intensity_ma": 8.5,
        "estim_duration_min": 10.0,
        "tp_status": "active",
        "referral_reproduced": True,
        "note": "reproduced knee pain",
    }
    added = clinic.store.add_mark(clinic.session_id, mark(**details), USER)
    stored = clinic.store.get_mark(added.id)
    assert {k: getattr(stored, k) for k in details} == details
    assert stored.session_date == dt.date(2024, 3, 4) and stored.created_by == USER


def test_soft_deletion_hides_a_mark_but_keeps_it(clinic: Clinic) -> None:
    st = clinic.store
    kept = st.add_mark(clinic.session_id, mark("vmo"), USER)
    gone = st.add_mark(clinic.session_id, mark("rectus_femoris", x=0.0), USER)
    st.delete_mark(gone.id, "clin-b")
    assert [m.id for m in st.session_marks(clinic.session_id)] == [kept.id]
    assert [m.id for m in st.episode_marks(clinic.episode_id)] == [kept.id]
    hidden = st.get_mark(gone.id)
    assert hidden.deleted and hidden.deleted_by == "clin-b"
    assert len(st.session_marks(clinic.session_id, include_deleted=True)) == 2
    assert st.counts()["marks"] == 1
    st.restore_mark(gone.id, USER)
    assert len(st.session_marks(clinic.session_id)) == 2


def test_restoring_a_mark_stamps_it_as_updated(clinic: Clinic) -> None:
    st = clinic.store
    added = st.add_mark(clinic.session_id, mark(), USER)
    assert added.updated_at is None and added.updated_by is None
    deleted = st.delete_mark(added.id, USER)
    assert deleted.updated_at is None
    restored = st.restore_mark(added.id, "clin-b")
    assert not restored.deleted and restored.deleted_by is None
    assert restored.updated_by == "clin-b" and restored.updated_at is not None
    assert restored.updated_at >= deleted.deleted_at  # type: ignore[operator]

    # Undoing a deletion is a restore too.
    st.delete_mark(added.id, USER)
    assert st.undo_last(clinic.session_id, "clin-c") == "Undid deleting the right vmo mark"
    undone = st.get_mark(added.id)
    assert not undone.deleted and undone.updated_by == "clin-c"
    assert undone.updated_at is not None and undone.updated_at > restored.updated_at


def test_overriding_the_muscle_is_remembered_and_a_move_clears_it(clinic: Clinic) -> None:
    st = clinic.store
    added = st.add_mark(clinic.session_id, mark("vmo"), USER)
    edited = st.update_mark(added.id, {"muscle": "vastus_medialis", "depth_mm": "18"}, USER)
    assert (edited.muscle, edited.muscle_overridden, edited.depth_mm) == (
        "vastus_medialis",
        True,
        18.0,
    )
    moved = st.move_mark(added.id, 9.0, 60.0, "vastus_lateralis", "right", "superficial", USER)
    assert (moved.x, moved.muscle, moved.muscle_overridden) == (9.0, "vastus_lateralis", False)
    assert moved.depth_mm == 18.0 and moved.updated_by == USER


def test_bad_mark_input_changes_nothing(clinic: Clinic) -> None:
    st = clinic.store
    added = st.add_mark(clinic.session_id, mark(technique="static"), USER)
    before = snapshot(st)
    with pytest.raises(ValidationError) as info:
        st.add_mark(clinic.session_id, {**POSITION, "depth_mm": "x", "insertions": -1}, USER)
    assert set(info.value.errors) == {"depth_mm", "insertions"}
    with pytest.raises(ValidationError) as info:
        st.update_mark(added.id, {"estim_frequency_hz": "2"}, USER)
    assert info.value.errors == {
        "estim_frequency_hz": "Stimulation settings apply only to electrical techniques"
    }
    with pytest.raises(ValidationError, match="Depth is between 0 and 150 mm"):
        st.update_mark(added.id, {"depth_mm": "200", "insertions": "3"}, USER)
    with pytest.raises(ValidationError, match="Unknown field"):
        st.update_mark(added.id, {"session_id": 2}, USER)
    with pytest.raises(ValidationError, match="View must be one of"):
        st.move_mark(added.id, 1.0, 2.0, "vmo", "right", "superficial", USER, view="top")
    with pytest.raises(ValidationError, match="Sign in first"):
        st.add_mark(clinic.session_id, mark(), "  ")
    with pytest.raises(NotFoundError):
        st.add_mark(999_999, mark(), USER)
    assert snapshot(st) == before


def test_a_deleted_mark_must_be_restored_before_editing(clinic: Clinic) -> None:
    st = clinic.store
    added = st.add_mark(clinic.session_id, mark(), USER)
    st.delete_mark(added.id, USER)
    with pytest.raises(ValidationError, match="restore it"):
        st.update_mark(added.id, {"insertions": 2}, USER)
    # Deleting twice (a double tap) is harmless and logs nothing new.
    st.delete_mark(added.id, USER)
    assert [c.action for c in st.mark_history(added.id)] == ["create", "delete"]


def test_undo_walks_back_through_the_session(clinic: Clinic) -> None:
    st, sid = clinic.store, clinic.session_id
    a = st.add_mark(sid, mark("vmo", x=4.0), USER)
    b = st.add_mark(sid, mark("rectus_femoris", x=0.0), USER)
    st.update_mark(b.id, {"depth_mm": 30, "insertions": 5}, USER)
    st.move_mark(a.id, 6.0, 55.0, "vastus_medialis", "right", "superficial", USER)
    st.delete_mark(b.id, USER)

    assert st.undo_last(sid, USER) == "Undid deleting the right rectus femoris mark"
    assert {m.id for m in st.session_marks(sid)} == {a.id, b.id}

    assert st.undo_last(sid, USER) == "Undid moving the right vastus medialis mark"
    restored = st.get_mark(a.id)
    assert (restored.x, restored.y, restored.muscle) == (4.0, 52.0, "vmo")

    message = st.undo_last(sid, USER)
    assert message is not None and "depth" in message and "insertions" in message
    assert (st.get_mark(b.id).depth_mm, st.get_mark(b.id).insertions) == (None, None)

    assert st.undo_last(sid, USER) == "Undid adding the right rectus femoris mark"
    assert st.undo_last(sid, USER) == "Undid adding the right vmo mark"
    assert st.session_marks(sid) == []
    assert st.undo_last(sid, USER) is None

    # A new change after undoing is itself undoable, and only it.
    c = st.add_mark(sid, mark("sartorius"), USER)
    assert st.undo_last(sid, USER) == "Undid adding the right sartorius mark"
    assert st.get_mark(c.id).deleted and st.undo_last(sid, USER) is None


def test_undo_only_touches_its_own_session(clinic: Clinic) -> None:
    st = clinic.store
    other = st.create_session(clinic.episode_id, {"date": "2024-03-11", "clinician": "A"}, USER)
    here = st.add_mark(clinic.session_id, mark(), USER)
    st.add_mark(other.id, mark("soleus"), USER)
    assert st.undo_last(clinic.session_id, USER) == "Undid adding the right vmo mark"
    assert st.get_mark(here.id).deleted
    assert [m.muscle for m in st.session_marks(other.id)] == ["soleus"]


def test_episode_marks_return_earlier_sessions_with_their_dates(clinic: Clinic) -> None:
    st = clinic.store
    second = st.create_session(clinic.episode_id, {"date": "2024-03-11", "clinician": "A"}, USER)
    first_marks = [st.add_mark(clinic.session_id, mark(m), USER) for m in ("vmo", "sartorius")]
    st.add_mark(second.id, mark("gluteus_medius", side="left"), USER)
    st.delete_mark(first_marks[1].id, USER)
    other_episode = st.create_episode(
        clinic.patient_id,
        {"condition": "other", "affected_side": "left", "start_date": "2024-01-01"},
        USER,
    )
    other_session = st.create_session(
        other_episode.id, {"date": "2024-01-02", "clinician": "A"}, USER
    )
    st.add_mark(other_session.id, mark("soleus"), USER)

    marks = st.episode_marks(clinic.episode_id)
    assert [(m.muscle, m.session_date) for m in marks] == [
        ("vmo", dt.date(2024, 3, 4)),
        ("gluteus_medius", dt.date(2024, 3, 11)),
    ]


def test_concurrent_clinicians_lose_no_marks(clinic: Clinic) -> None:
    st, errors = clinic.store, []

    def tap(worker: int) -> None:
        try:
            for i in range(10):
                st.add_mark(clinic.session_id, mark(x=worker + i / 10), f"clin-{worker}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tap, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(st.session_marks(clinic.session_id)) == 40
    undone = [st.undo_last(clinic.session_id, USER) for _ in range(41)]
    assert undone[-1] is None and all(undone[:-1])


# -- session readings and outcomes -----------------------------------------------------------------


def test_pressure_pain_thresholds_adverse_events_and_outcomes(clinic: Clinic) -> None:
    st = clinic.store
    ppt = st.add_pressure_pain_threshold(
        clinic.session_id, {"site": "vmo_right", "side": "right", "kg_cm2": "3,4"}, USER
    )
    st.add_pressure_pain_threshold(
        clinic.session_id, {"site": "tibialis anterior", "kg_cm2": 5}, USER
    )
    assert [p.kg_cm2 for p in st.list_pressure_pain_thresholds(clinic.session_id)] == [3.4, 5.0]
    st.delete_pressure_pain_threshold(ppt.id, USER)
    assert [p.site for p in st.list_pressure_pain_thresholds(clinic.session_id)] == [
        "tibialis anterior"
    ]

    event = st.add_adverse_event(clinic.session_id, {"type": "Bruising", "severity": "mild"}, USER)
    assert st.list_adverse_events(clinic.session_id) == [event]
    with pytest.raises(ValidationError, match="Describe the adverse event"):
        st.add_adverse_event(clinic.session_id, {"type": "other", "severity": "mild"}, USER)
    st.delete_adverse_event(event.id, USER)
    assert st.list_adverse_events(clinic.session_id) == []
    with pytest.raises(NotFoundError):
        st.delete_adverse_event(event.id, USER)

    st.add_outcome(
        clinic.episode_id, {"instrument": "kujala", "score": 71, "date": "2024-04-01"}, USER
    )
    st.add_outcome(
        clinic.episode_id, {"instrument": "kujala", "score": 58, "date": "2024-03-01"}, USER
    )
    assert [o.score for o in st.list_outcomes(clinic.episode_id)] == [58.0, 71.0]
    with pytest.raises(ValidationError, match="Kujala is between 0 and 100"):
        st.add_outcome(
            clinic.episode_id, {"instrument": "kujala", "score": 110, "date": "2024-04-01"}, USER
        )
    assert len(st.list_outcomes(clinic.episode_id)) == 2


# -- bulk ------------------------------------------------------------------------------------------


def test_bulk_inserts_link_up_and_return_ids_in_order(store: Store) -> None:
    patients = store.bulk_insert_patients({"code": f"D-{i:03d}", "sex": "male"} for i in range(30))
    assert [store.get_patient(p).code for p in patients[:3]] == ["D-000", "D-001", "D-002"]
    episodes = store.bulk_insert_episodes(
        {
            "patient_id": p,
            "condition": "knee_osteoarthritis",
            "affected_side": "both",
            "start_date": "2023-05-01",
        }
        for p in patients
    )
    sessions = store.bulk_insert_sessions(
        {"episode_id": e, "date": f"2023-05-{d:02d}", "clinician": "demo", "nprs_before": 7}
        for e in episodes
        for d in (2, 9)
    )
    rows = (
        {
            "session_id": s,
            "view": "posterior",
            "x": float(i),
            "y": 95.0,
            "muscle": "gluteus_medius",
            "side": "left",
            "layer": "superficial",
            "atlas_version": "2025.1",
            "technique": "pistoning",
            "insertions": "3",
            "referral_reproduced": "no",
        }
        for i, s in enumerate(sessions * 5)
    )
    assert store.bulk_insert_marks(rows, chunk_size=64) == 300
    assert (
        store.bulk_insert_outcomes(
            {"episode_id": e, "instrument": "womac_function", "score": 30, "date": "2023-06-01"}
            for e in episodes
        )
        == 30
    )
    assert len(store.episode_marks(episodes[0])) == 10
    first = store.session_marks(sessions[0])[0]
    assert (first.insertions, first.referral_reproduced, first.created_by) == (3, False, "import")
    assert first.created_at.tzinfo is not None
    fast = store.bulk_insert_marks(
        [
            {
                "session_id": sessions[0],
                "view": "anterior",
                "x": 1.0,
                "y": 2.0,
                "muscle": "vmo",
                "side": "right",
                "layer": "deep",
                "atlas_version": "2025.1",
            }
        ],
        validate=False,
    )
    assert fast == 1 and store.counts()["marks"] == 301


def test_a_bad_row_rejects_the_whole_bulk_insert(clinic: Clinic) -> None:
    st = clinic.store
    before = snapshot(st)
    good = {
        "session_id": clinic.session_id,
        "view": "anterior",
        "x": 1.0,
        "y": 2.0,
        "muscle": "vmo",
        "side": "right",
        "layer": "deep",
        "atlas_version": "2025.1",
    }
    rows = [good] * 50 + [{**good, "depth_mm": "-3"}] + [good] * 10
    with pytest.raises(ValidationError) as info:
        st.bulk_insert_marks(rows, chunk_size=20)
    assert info.value.errors == {"depth_mm": "Row 50: Depth is between 0 and 150 mm"}
    with pytest.raises(ValidationError, match="database rejected"):
        st.bulk_insert_marks([good, {**good, "session_id": 999_999}], validate=False)
    with pytest.raises(ValidationError):
        st.bulk_insert_patients([{"code": "P-9"}, {"code": "P-9"}])
    assert snapshot(st) == before
