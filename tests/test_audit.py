"""The audit trail: written with each change, verifiable, and tamper-evident.

Tampering is done the way an intruder with database access would do it: plain SQL.
Runs on SQLite and, when configured, PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading

import pytest
from alembic import command
from sqlalchemy import insert, text

import store_fixtures
from tpmap.auth import Secret
from tpmap.store import AuditKeyError, Store, current_revision, head_revision, make_engine
from tpmap.store._migrate import alembic_config
from tpmap.store.schema import (
    EpisodeRow,
    MarkRow,
    PatientRow,
    PressurePainThresholdRow,
    SessionRow,
    utcnow,
)

store = store_fixtures.store
store_url = store_fixtures.store_url

MARK = {
    "view": "anterior",
    "x": 4.0,
    "y": 52.0,
    "muscle": "vmo",
    "side": "right",
    "layer": "superficial",
    "atlas_version": "test",
}


def a_session(store: Store, code: str = "P-1") -> tuple[int, int, int]:
    patient = store.create_patient({"code": code}, "dr-a")
    episode = store.create_episode(
        patient.id,
        {"condition": "other", "affected_side": "left", "start_date": "2025-01-02"},
        "dr-a",
    )
    session = store.create_session(episode.id, {"date": "2025-01-03", "clinician": "A"}, "dr-a")
    return patient.id, episode.id, session.id


def tpmap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpmap", *args], capture_output=True, text=True, timeout=120
    )


def test_every_change_is_in_the_trail_with_who_what_before_after(store: Store) -> None:
    patient, _, session = a_session(store)
    mark = store.add_mark(session, MARK, "dr-b")
    store.update_mark(mark.id, {"insertions": 2}, "dr-b")
    store.move_mark(mark.id, 5.0, 52.0, "vmo", "right", "superficial", "dr-b")
    store.delete_mark(mark.id, "dr-c")
    store.undo_last(session, "dr-c")
    ppt = store.add_pressure_pain_threshold(session, {"site": "vmo", "kg_cm2": 3}, "dr-b")
    store.delete_pressure_pain_threshold(ppt.id, "dr-b")
    store.restore_pressure_pain_threshold(ppt.id, "dr-a")
    store.update_session(session, {"nprs_after": 2}, "dr-b")
    trail = store.audit_entries(patient="P-1")
    assert [(e.actor, e.action, e.entity) for e in trail] == [
        ("dr-a", "create", "patient"),
        ("dr-a", "create", "episode"),
        ("dr-a", "create", "session"),
        ("dr-b", "create", "mark"),
        ("dr-b", "update", "mark"),
        ("dr-b", "move", "mark"),
        ("dr-c", "delete", "mark"),
        ("dr-c", "undo", "mark"),
        ("dr-b", "create", "pressure_pain_threshold"),
        ("dr-b", "delete", "pressure_pain_threshold"),
        ("dr-a", "restore", "pressure_pain_threshold"),
        ("dr-b", "update", "session"),
    ]
    assert all(e.patient_id == patient for e in trail)
    assert [e.seq for e in trail] == list(range(1, 13))
    update = trail[4]
    assert (update.before, update.after) == ({"insertions": None}, {"insertions": 2})
    assert trail[11].before == {"nprs_after": None} and trail[11].after == {"nprs_after": 2}
    assert trail[0].after["code"] == "P-1"  # type: ignore[index]
    assert abs(trail[-1].at - utcnow()) < dt.timedelta(minutes=5)
    # Filters: by person, action and date.
    assert len(store.audit_entries(user="DR-C")) == 2
    assert [e.entity for e in store.audit_entries(action="restore")] == ["pressure_pain_threshold"]
    assert store.audit_entries(date_to=dt.date(2000, 1, 1)) == []
    assert len(store.audit_entries(date_from=dt.date.today() - dt.timedelta(days=1))) == 12
    assert [e.seq for e in store.audit_entries(limit=2)] == [11, 12]
    assert store.verify_audit().ok


def test_a_change_and_its_audit_row_commit_together(store: Store) -> None:
    _, _, session = a_session(store)
    marks_before = store.counts()["marks"]
    rows_before = len(store.audit_entries())
    # Make the audit append fail inside the change's transaction: the change must not land.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_chain SET key_check = 'not the key'"))
    with pytest.raises(AuditKeyError):
        store.add_mark(session, MARK, "dr-a")
    with pytest.raises(AuditKeyError):
        store.create_patient({"code": "P-2"}, "dr-a")
    assert store.counts()["marks"] == marks_before
    assert store.patient_by_code("P-2") is None
    assert len(store.audit_entries()) == rows_before


def test_soft_deleted_readings_stay_and_can_be_restored(store: Store) -> None:
    _, episode, session = a_session(store)
    event = store.add_adverse_event(session, {"type": "bruising", "severity": "mild"}, "dr-a")
    outcome = store.add_outcome(
        episode, {"instrument": "nprs", "score": 4, "date": "2025-01-03"}, "dr-a"
    )
    store.delete_adverse_event(event.id, "dr-a")
    store.delete_outcome(outcome.id, "dr-a")
    assert store.list_adverse_events(session) == []
    assert store.list_outcomes(episode) == []
    (kept,) = store.list_adverse_events(session, include_deleted=True)
    assert kept.deleted_at is not None
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM adverse_events")).scalar() == 1
    assert store.restore_adverse_event(event.id, "dr-b").deleted_at is None
    assert store.restore_outcome(outcome.id, "dr-b").deleted_at is None
    assert [e.id for e in store.list_adverse_events(session)] == [event.id]
    assert [o.id for o in store.list_outcomes(episode)] == [outcome.id]


def test_verify_passes_on_a_fresh_trail_and_names_an_edited_row(store: Store, store_url) -> None:
    assert store.verify_audit().ok  # no rows yet
    a_session(store)
    store.add_user("adam", "a long enough password", roles=["admin"], user="cli:test")
    report = store.verify_audit()
    assert report.ok and report.rows == 4
    done = tpmap("audit", "verify", "--db", store_url)
    assert done.returncode == 0 and "intact: 4 rows" in done.stdout

    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'someone else' WHERE seq = 2"))
    report = store.verify_audit()
    assert not report.ok and report.seq == 2
    assert "Audit row 2" in report.problem and "changed" in report.problem  # type: ignore[operator]
    done = tpmap("audit", "verify", "--db", store_url)
    assert done.returncode == 1
    assert "Audit row 2" in done.stderr and "'someone else': create episode" in done.stderr


def test_verify_notices_a_removed_row(store: Store) -> None:
    a_session(store)
    a_session(store, "P-2")
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    report = store.verify_audit()
    assert not report.ok and report.seq == 3 and "row 3 missing" in report.problem  # type: ignore[operator]


def test_verify_notices_rows_cut_off_the_end(store: Store) -> None:
    a_session(store)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    report = store.verify_audit()
    assert not report.ok and "rows 3-3 are missing" in report.problem  # type: ignore[operator]
    # Rewinding the chain's head to the new last row does not hide it: the head is keyed.
    with store.engine.begin() as conn:
        last = conn.execute(text("SELECT hash FROM audit_log WHERE seq = 2")).scalar()
        conn.execute(text("UPDATE audit_chain SET seq = 2, hash = :h"), {"h": last})
    report = store.verify_audit()
    assert not report.ok and "head was changed" in report.problem  # type: ignore[operator]


def test_a_forged_row_with_a_recomputed_plain_hash_is_caught(store: Store) -> None:
    import hashlib

    a_session(store)
    # Without the secret, the best an intruder can do is an unkeyed hash.
    with store.engine.begin() as conn:
        forged = hashlib.sha256(b"forged").hexdigest()
        conn.execute(text("UPDATE audit_log SET hash = :h WHERE seq = 1"), {"h": forged})
    assert store.verify_audit().seq == 1


def test_another_secret_neither_verifies_nor_extends_the_trail(store_url: str) -> None:
    with Store(store_url) as first:
        a_session(first)
    other = Secret(b"x" * 40, "test", explicit=True)
    with Store(store_url, secret=other) as second:
        report = second.verify_audit()
        assert not report.ok and "not the one this audit trail" in report.problem  # type: ignore[operator]
        with pytest.raises(AuditKeyError):
            second.create_patient({"code": "P-9"}, "dr-a")


def test_concurrent_writers_keep_one_chain(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    _, _, session = a_session(stores[0])
    errors: list[BaseException] = []

    def work(st: Store, n: int) -> None:
        try:
            for i in range(15):
                st.add_mark(session, {**MARK, "x": 4.0 + 0.01 * (n * 20 + i)}, f"dr-{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(st, n)) for n, st in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = stores[0].verify_audit()
    assert report.ok and report.rows == 3 + 30
    for st in stores:
        st.close()


def test_a_0002_database_migrates_with_its_patients_in_a_default_clinic(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
        now = utcnow()
        with engine.begin() as conn:
            ids = [
                conn.execute(
                    insert(PatientRow.__table__)
                    .values(code=f"OLD-{i}", sex="female", created_at=now, created_by="v1")
                    .returning(PatientRow.__table__.c.id)
                ).scalar_one()
                for i in range(3)
            ]
            episode = conn.execute(
                insert(EpisodeRow.__table__)
                .values(
                    patient_id=ids[0],
                    condition="other",
                    affected_side="left",
                    start_date=dt.date(2024, 5, 1),
                    note="",
                    created_at=now,
                )
                .returning(EpisodeRow.__table__.c.id)
            ).scalar_one()
            session = conn.execute(
                insert(SessionRow.__table__)
                .values(
                    episode_id=episode,
                    clinician="A",
                    date=dt.date(2024, 5, 2),
                    note="",
                    created_at=now,
                )
                .returning(SessionRow.__table__.c.id)
            ).scalar_one()
            conn.execute(
                insert(MarkRow.__table__).values(
                    session_id=session,
                    **MARK,
                    muscle_overridden=False,
                    note="",
                    created_at=now,
                    created_by="v1",
                )
            )
            conn.execute(
                insert(PressurePainThresholdRow.__table__).values(
                    session_id=session, site="vmo", kg_cm2=3.0
                )
            )
    finally:
        engine.dispose()

    with Store(store_url) as st:
        assert current_revision(st.engine) == head_revision()
        (clinic,) = st.list_clinics()
        assert clinic.name == "Default clinic"
        patients = st.find_patients("OLD-")
        assert len(patients) == 3 and {p.clinic_id for p in patients} == {clinic.id}
        assert len(st.session_marks(session)) == 1
        assert len(st.list_pressure_pain_thresholds(session)) == 1
        assert st.verify_audit().ok
        # The migrated database works as a new one: accounts, scoped access, the trail.
        st.add_user(
            "anna", "a long enough password", roles=["clinician"], clinics=[clinic.id], user="t"
        )
        anna = st.principal("anna")
        assert anna is not None
        assert len(st.scoped(anna).find_patients("OLD")) == 3
        st.scoped(anna).add_mark(session, MARK)
        assert st.verify_audit().rows == 2
