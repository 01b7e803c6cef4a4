"""Accounts, clinics and the scoped store: each clinician sees and changes only their clinics.

Ids are sent the way an attacker would send them: another clinic's real ids, ids that do not
exist, and values that are not ids at all. Runs on SQLite and, when configured, PostgreSQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from sqlalchemy import text

import store_fixtures
from tpmap.auth import AccessDenied, Principal
from tpmap.model import ValidationError
from tpmap.store import NOT_FOUND, NotFoundError, SignInError, Store

store = store_fixtures.store
store_url = store_fixtures.store_url

PASSWORD = "a long enough password"
MARK = {
    "view": "anterior",
    "x": 4.0,
    "y": 52.0,
    "muscle": "vmo",
    "side": "right",
    "layer": "superficial",
    "atlas_version": "test",
}


@dataclass
class Record:
    patient: int
    episode: int
    session: int
    mark: int
    ppt: int
    event: int
    outcome: int


def _record(store: Store, code: str, clinic: int) -> Record:
    patient = store.create_patient({"code": code}, "setup", clinic_id=clinic)
    episode = store.create_episode(
        patient.id,
        {"condition": "other", "affected_side": "left", "start_date": "2025-01-02"},
        "setup",
    )
    session = store.create_session(episode.id, {"date": "2025-01-03", "clinician": "x"}, "setup")
    mark = store.add_mark(session.id, MARK, "setup")
    ppt = store.add_pressure_pain_threshold(session.id, {"site": "vmo", "kg_cm2": 3}, "setup")
    event = store.add_adverse_event(session.id, {"type": "bruising", "severity": "mild"}, "setup")
    outcome = store.add_outcome(
        episode.id, {"instrument": "nprs", "score": 5, "date": "2025-01-03"}, "setup"
    )
    return Record(patient.id, episode.id, session.id, mark.id, ppt.id, event.id, outcome.id)


@dataclass
class TwoClinics:
    store: Store
    anna: Principal  # clinician at North
    ben: Principal  # clinician at South
    north: Record
    south: Record


@pytest.fixture
def two(store: Store) -> TwoClinics:
    north = store.add_clinic("North", user="setup").id
    south = store.add_clinic("South", user="setup").id
    store.add_user("anna", PASSWORD, roles=["clinician"], clinics=["North"], user="setup")
    store.add_user("ben", PASSWORD, roles=["clinician"], clinics=[south], user="setup")
    anna, ben = store.principal("anna"), store.principal("ben")
    assert anna is not None and ben is not None
    return TwoClinics(
        store, anna, ben, _record(store, "P-NORTH", north), _record(store, "P-SOUTH", south)
    )


def everything(store: Store) -> tuple[object, ...]:
    """All clinical rows and the audit trail's length: what a refused call must not change."""
    tables = (
        "patients",
        "episodes",
        "sessions",
        "marks",
        "mark_changes",
        "pressure_pain_thresholds",
        "adverse_events",
        "outcome_measures",
        "audit_log",
    )
    with store.engine.connect() as conn:
        return tuple(
            tuple(conn.execute(text(f"SELECT * FROM {t} ORDER BY id")).all()) for t in tables
        )


def calls(r: Record) -> dict[str, object]:
    """Every scoped-store call that takes an id, aimed at record ``r``."""
    return {
        "get_patient": lambda s: s.get_patient(r.patient),
        "list_episodes": lambda s: s.list_episodes(r.patient),
        "create_episode": lambda s: s.create_episode(
            r.patient, {"condition": "other", "affected_side": "left", "start_date": "2025-02-01"}
        ),
        "get_episode": lambda s: s.get_episode(r.episode),
        "list_sessions": lambda s: s.list_sessions(r.episode),
        "create_session": lambda s: s.create_session(
            r.episode, {"date": "2025-02-02", "clinician": "x"}
        ),
        "get_session": lambda s: s.get_session(r.session),
        "update_session": lambda s: s.update_session(r.session, {"nprs_after": 1}),
        "session_marks": lambda s: s.session_marks(r.session),
        "episode_marks": lambda s: s.episode_marks(r.episode),
        "add_mark": lambda s: s.add_mark(r.session, MARK),
        "get_mark": lambda s: s.get_mark(r.mark),
        "update_mark": lambda s: s.update_mark(r.mark, {"insertions": 3}),
        "move_mark": lambda s: s.move_mark(r.mark, 5.0, 52.0, "vmo", "right", "superficial"),
        "delete_mark": lambda s: s.delete_mark(r.mark),
        "restore_mark": lambda s: s.restore_mark(r.mark),
        "undo_last": lambda s: s.undo_last(r.session),
        "mark_history": lambda s: s.mark_history(r.mark),
        "add_ppt": lambda s: s.add_pressure_pain_threshold(r.session, {"site": "a", "kg_cm2": 2}),
        "list_ppts": lambda s: s.list_pressure_pain_thresholds(r.session),
        "delete_ppt": lambda s: s.delete_pressure_pain_threshold(r.ppt),
        "restore_ppt": lambda s: s.restore_pressure_pain_threshold(r.ppt),
        "add_event": lambda s: s.add_adverse_event(
            r.session, {"type": "bruising", "severity": "mild"}
        ),
        "list_events": lambda s: s.list_adverse_events(r.session),
        "delete_event": lambda s: s.delete_adverse_event(r.event),
        "restore_event": lambda s: s.restore_adverse_event(r.event),
        "add_outcome": lambda s: s.add_outcome(
            r.episode, {"instrument": "nprs", "score": 2, "date": "2025-02-01"}
        ),
        "list_outcomes": lambda s: s.list_outcomes(r.episode),
        "delete_outcome": lambda s: s.delete_outcome(r.outcome),
        "restore_outcome": lambda s: s.restore_outcome(r.outcome),
    }


def test_a_clinician_cannot_reach_another_clinics_records(two: TwoClinics) -> None:
    anna = two.store.scoped(two.anna)
    before = everything(two.store)
    for name, call in calls(two.south).items():
        with pytest.raises(NotFoundError) as refused:
            call(anna)  # type: ignore[operator]
        assert str(refused.value) == NOT_FOUND, name
    assert everything(two.store) == before
    # ... while the same calls on her own clinic's records work.
    for call in calls(two.north).values():
        call(anna)  # type: ignore[operator]
    assert everything(two.store) != before


def test_crafted_ids_are_not_found_like_missing_ones(two: TwoClinics) -> None:
    anna = two.store.scoped(two.anna)
    before = everything(two.store)
    crafted = [
        two.south.patient,  # a real id of another clinic
        10**6,  # no such id
        2**70,  # beyond any database integer
        -1,
        0,
        f"{two.south.patient}",  # the same, as text (as a Select widget sends it)
        "1 OR 1=1",
        1.5,
        None,
        True,
        [two.north.patient],
        float("nan"),
    ]
    for ident in crafted:
        messages = set()
        for call in (
            lambda i: anna.get_patient(i),
            lambda i: anna.list_episodes(i),
            lambda i: anna.add_mark(i, MARK),
            lambda i: anna.delete_mark(i),
            lambda i: anna.update_mark(i, {"note": "x"}),
            lambda i: anna.undo_last(i),
        ):
            with pytest.raises(NotFoundError) as refused:
                call(ident)
            messages.add(str(refused.value))
        assert messages == {NOT_FOUND}, ident
    assert everything(two.store) == before


def test_searches_show_only_the_clinicians_own_patients(two: TwoClinics) -> None:
    anna, ben = two.store.scoped(two.anna), two.store.scoped(two.ben)
    assert [p.code for p in anna.find_patients("")] == ["P-NORTH"]
    assert [p.code for p in anna.find_patients("P-")] == ["P-NORTH"]
    assert anna.find_patients("SOUTH") == []
    assert anna.patient_by_code("P-SOUTH") is None
    assert ben.patient_by_code("p-south").id == two.south.patient  # type: ignore[union-attr]
    assert [c.name for c in anna.clinics()] == ["North"]


def test_new_patients_go_into_the_clinicians_clinic_only(two: TwoClinics) -> None:
    anna = two.store.scoped(two.anna)
    made = anna.create_patient({"code": "P-NEW"})
    assert made.clinic_id == two.store.get_patient(two.north.patient).clinic_id
    south = two.store.get_patient(two.south.patient).clinic_id
    with pytest.raises(ValidationError, match="one of your clinics"):
        anna.create_patient({"code": "P-NEW-2"}, clinic_id=south)
    audit = two.store.audit_entries(action="create", user="anna")
    assert [(e.entity, e.entity_id, e.after["code"]) for e in audit] == [  # type: ignore[index]
        ("patient", made.id, "P-NEW")
    ]


def test_each_clinic_numbers_its_own_patients(two: TwoClinics) -> None:
    # Clinics number patients alike: South may use North's code, and is not told it exists.
    anna, ben = two.store.scoped(two.anna), two.store.scoped(two.ben)
    made = ben.create_patient({"code": "P-NORTH"})
    assert made.clinic_id == two.store.get_patient(two.south.patient).clinic_id
    assert anna.patient_by_code("p-north").id == two.north.patient  # type: ignore[union-attr]
    assert ben.patient_by_code("p-north").id == made.id  # type: ignore[union-attr]
    assert [p.code for p in anna.find_patients("NORTH")] == ["P-NORTH"]
    assert [p.id for p in ben.find_patients("NORTH")] == [made.id]
    # Within a clinic a code is still taken, whatever its case.
    with pytest.raises(ValidationError, match="P-NORTH is already in use"):
        ben.create_patient({"code": "p-north"})
    # Unscoped, the code names no single patient: refused, not a guess.
    with pytest.raises(ValidationError, match="more than one clinic"):
        two.store.patient_by_code("P-NORTH")
    # The audit trail by code finds both patients (an admin's view of every clinic).
    created = two.store.audit_entries(patient="P-NORTH", action="create")
    assert {e.entity_id for e in created if e.entity == "patient"} == {two.north.patient, made.id}


def test_changes_are_recorded_under_the_principals_name(two: TwoClinics) -> None:
    anna = two.store.scoped(two.anna)
    mark = anna.add_mark(two.north.session, MARK)
    assert mark.created_by == "anna"
    anna.update_mark(mark.id, {"insertions": 4})
    entries = two.store.audit_entries(patient="P-NORTH", user="anna")
    assert [(e.action, e.entity) for e in entries] == [("create", "mark"), ("update", "mark")]
    assert entries[1].before == {"insertions": None} and entries[1].after == {"insertions": 4}


def test_disabled_unknown_and_non_clinician_principals_get_nothing(two: TwoClinics) -> None:
    st = two.store
    st.add_user("rosa", PASSWORD, roles=["researcher"], user="setup")
    st.add_user("adam", PASSWORD, roles=["admin"], user="setup")
    refused = [
        Principal("nobody", frozenset({"clinician"}), frozenset({1})),
        st.principal("rosa"),
        st.principal("adam"),
        # A principal object claiming more than the database grants gets what the database says.
        Principal("rosa", frozenset({"clinician"}), frozenset({1, 2, 3})),
    ]
    for principal in refused:
        scoped = st.scoped(principal)  # type: ignore[arg-type]
        with pytest.raises(AccessDenied):
            scoped.find_patients("")
        with pytest.raises(AccessDenied):
            scoped.get_patient(two.north.patient)
    anna = st.scoped(two.anna)
    assert anna.find_patients("")
    st.set_user_active("anna", False, user="setup")
    before = everything(st)
    with pytest.raises(AccessDenied):
        anna.find_patients("")
    with pytest.raises(AccessDenied):
        anna.add_mark(two.north.session, MARK)
    assert everything(st) == before


def test_a_signed_out_principal_is_refused(two: TwoClinics) -> None:
    signed = two.store.sign_in("anna", PASSWORD, address="10.0.0.1")
    scoped = two.store.scoped(signed.principal)
    assert scoped.get_patient(two.north.patient).code == "P-NORTH"
    two.store.sign_out(signed.token)
    with pytest.raises(AccessDenied, match="signed out"):
        scoped.get_patient(two.north.patient)


def test_clinic_membership_is_read_from_the_database(two: TwoClinics) -> None:
    # A principal built with the wrong clinic ids still sees only what the account holds.
    forged = Principal("anna", frozenset({"clinician"}), frozenset({999}))
    assert [p.code for p in two.store.scoped(forged).find_patients("")] == ["P-NORTH"]


def test_sign_in_gives_one_message_for_a_wrong_name_or_password(two: TwoClinics) -> None:
    st = two.store
    messages = set()
    for name, password in (("anna", "wrong password"), ("annabel", PASSWORD), ("", "")):
        with pytest.raises(SignInError) as refused:
            st.sign_in(name, password, address="10.1.1.1")
        messages.add(str(refused.value))
    assert messages == {"Wrong name or password."}
    ok = st.sign_in("ANNA", PASSWORD, address="10.1.1.2")
    assert ok.principal.name == "anna" and ok.principal.login_id is not None
    assert len(ok.token) >= 40
    kinds = [(e.action, e.target, e.address) for e in st.audit_entries()]
    assert ("sign_in", "anna", "10.1.1.2") in kinds
    assert ("sign_in_failed", "annabel", "10.1.1.1") in kinds
    st.set_user_active("anna", False, user="setup")
    with pytest.raises(SignInError, match="Wrong name or password"):
        st.sign_in("anna", PASSWORD, address="10.1.1.3")


def test_failed_sign_ins_are_slowed_per_account_and_per_address(two: TwoClinics, caplog) -> None:
    st = two.store
    caplog.set_level(logging.WARNING, logger="tpmap.auth")
    # Ten wrong passwords for anna from ten addresses: the account is held for a minute.
    for i in range(10):
        with pytest.raises(SignInError, match="Wrong name"):
            st.sign_in("anna", f"guess number {i}", address=f"10.0.0.{i}")
    with pytest.raises(SignInError, match="Too many") as held:
        st.sign_in("anna", PASSWORD, address="10.0.0.99")
    assert held.value.throttled
    assert "sign-in refused for 'anna' from 10.0.0.99" in caplog.text
    # Ten wrong names from one address: that address is held, for every account ...
    for i in range(10):
        with pytest.raises(SignInError):
            st.sign_in(f"someone{i}", PASSWORD, address="192.0.2.7")
    with pytest.raises(SignInError, match="Too many"):
        st.sign_in("ben", PASSWORD, address="192.0.2.7")
    # ... but not for another address.
    assert st.sign_in("ben", PASSWORD, address="192.0.2.8").principal.name == "ben"


def test_one_argon2_verification_per_sign_in(two: TwoClinics, monkeypatch) -> None:
    import argon2

    count = []
    verify = argon2.PasswordHasher.verify

    def counting(self, hashed, password):  # type: ignore[no-untyped-def]
        count.append(1)
        return verify(self, hashed, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    two.store.sign_in("anna", PASSWORD)
    assert len(count) == 1
    with pytest.raises(SignInError):
        two.store.sign_in("nobody", PASSWORD)  # an unknown name costs the same verification
    assert len(count) == 2


def test_a_password_hashed_with_old_parameters_is_rehashed_at_sign_in(two: TwoClinics) -> None:
    import argon2

    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with two.store.engine.begin() as conn:
        conn.execute(text("UPDATE users SET password_hash = :h WHERE name = 'anna'"), {"h": weak})
    two.store.sign_in("anna", PASSWORD)
    with two.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users WHERE name = 'anna'")).scalar()
    assert stored != weak and stored.startswith("$argon2id$")
    assert not argon2.PasswordHasher().check_needs_rehash(stored)


def test_a_new_password_ends_open_sign_ins(two: TwoClinics) -> None:
    import datetime as dt

    signed = two.store.sign_in("anna", PASSWORD)
    hours = dt.timedelta(hours=8)
    assert two.store.check_login(token=signed.token, idle=hours) is not None
    two.store.set_password("anna", "another long password", user="setup")
    assert two.store.check_login(token=signed.token, idle=hours) is None
    with pytest.raises(SignInError):
        two.store.sign_in("anna", PASSWORD)
    assert two.store.sign_in("anna", "another long password").principal.name == "anna"


def test_account_rules(store: Store) -> None:
    store.add_clinic("North", user="setup")
    with pytest.raises(ValidationError, match="at least 10 characters"):
        store.add_user("anna", "short", roles=["clinician"], clinics=["North"], user="setup")
    with pytest.raises(ValidationError, match="at least one clinic"):
        store.add_user("anna", PASSWORD, roles=["clinician"], user="setup")
    with pytest.raises(ValidationError, match="Role must be one of"):
        store.add_user("anna", PASSWORD, roles=["superuser"], user="setup")
    with pytest.raises(ValidationError, match="No clinic named"):
        store.add_user("anna", PASSWORD, roles=["clinician"], clinics=["Nowhere"], user="setup")
    for hostile in ("<img src=x onerror=alert(1)>", "an\u202ename", "tab\tname", "a" * 65):
        with pytest.raises(ValidationError):
            store.add_user(hostile, PASSWORD, roles=["admin"], user="setup")
    store.add_user("Anna B", PASSWORD, roles=["admin"], user="setup")
    with pytest.raises(ValidationError, match="already exists"):
        store.add_user("anna b", PASSWORD, roles=["admin"], user="setup")
    with pytest.raises(ValidationError, match="already exists"):
        store.add_clinic("north", user="setup")
    assert [u.name for u in store.list_users()] == ["Anna B"]
    assert store.list_users()[0].roles == ("admin",)


def test_record_export_goes_into_the_audit_trail(two: TwoClinics) -> None:
    st = two.store
    st.add_user("rosa", PASSWORD, roles=["researcher"], user="setup")
    rosa = st.principal("rosa")
    assert rosa is not None
    st.record_export(rosa, {"kind": "marks.csv", "rows": 120, "filters": {"fold": True}})
    (entry,) = st.audit_entries(action="export")
    assert (entry.actor, entry.entity, entry.target) == ("rosa", "research", "marks.csv")
    assert entry.after == {"kind": "marks.csv", "rows": 120, "filters": {"fold": True}}
    st.set_user_active("rosa", False, user="setup")
    with pytest.raises(AccessDenied):
        st.record_export(rosa, {"kind": "marks.csv"})
