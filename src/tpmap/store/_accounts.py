"""Accounts, clinics, signing in, and reading the audit trail: the Store's account half.

:class:`AccountsMixin` is mixed into :class:`tpmap.store.Store`; it uses the store's
transactions (``_read``/``_write``) and its audit append (``_audit``/``_key``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from tpmap import auth
from tpmap.auth import AccessDenied, Principal
from tpmap.model import ValidationError
from tpmap.store import _audit
from tpmap.store._audit import AuditEntry, AuditReport
from tpmap.store._common import RowLike, printable, user_name
from tpmap.store._records import (
    Clinic,
    NotFoundError,
    SignInError,
    UserAccount,
    record_from_row,
)
from tpmap.store.schema import (
    AuditRow,
    ClinicRow,
    LoginSessionRow,
    PatientRow,
    UserClinicRow,
    UserRow,
    utcnow,
)

__all__ = [
    "SIGN_IN_LIMIT",
    "SIGN_IN_WINDOW",
    "TOO_MANY_SIGN_INS",
    "WRONG_SIGN_IN",
    "AccountsMixin",
    "SignIn",
]

auth_log = logging.getLogger("tpmap.auth")

_patients: Table = PatientRow.__table__
_clinics: Table = ClinicRow.__table__
_users: Table = UserRow.__table__
_user_clinics: Table = UserClinicRow.__table__
_logins: Table = LoginSessionRow.__table__
_audit_log: Table = AuditRow.__table__

#: Failed sign-ins allowed per account and per address within :data:`SIGN_IN_WINDOW`.
SIGN_IN_LIMIT = 10
SIGN_IN_WINDOW = dt.timedelta(minutes=1)
WRONG_SIGN_IN = "Wrong name or password."
TOO_MANY_SIGN_INS = "Too many failed sign-ins: wait a minute, then try again."


@dataclasses.dataclass(frozen=True, slots=True)
class SignIn:
    """A successful sign-in: the principal and the token for the browser's signed cookie."""

    principal: Principal
    token: str


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _end_logins(conn: Connection, user_id: int, now: dt.datetime) -> None:
    """End every open sign-in of an account (disabled, or a new password)."""
    conn.execute(
        update(_logins)
        .where(_logins.c.user_id == user_id, _logins.c.ended_at.is_(None))
        .values(ended_at=now)
    )


class AccountsMixin:
    """Clinics, accounts, sign-ins and the audit trail's reading side (part of ``Store``)."""

    if TYPE_CHECKING:

        def _read(self) -> AbstractContextManager[Connection]: ...
        def _write(self) -> AbstractContextManager[Connection]: ...
        def _key(self) -> bytes: ...
        def _audit(
            self, conn: Connection, actor: str, action: str, entity: str, **kw: Any
        ) -> None: ...

    # -- clinics and accounts ------------------------------------------------------------------

    def add_clinic(self, name: str, *, user: str | Principal) -> Clinic:
        """Create a clinic (names are unique)."""
        clean = auth.validate_clinic_name(name)
        try:
            with self._write() as conn:
                who = self._admin(conn, user)
                if conn.execute(
                    select(_clinics.c.id).where(func.lower(_clinics.c.name) == clean.lower())
                ).first():
                    raise ValidationError({"name": f"A clinic named {clean} already exists"})
                row = (
                    conn.execute(
                        insert(_clinics)
                        .values(name=clean, created_at=utcnow(), created_by=who)
                        .returning(*_clinics.c)
                    )
                    .mappings()
                    .one()
                )
                self._audit(
                    conn,
                    who,
                    "create",
                    "clinic",
                    entity_id=row["id"],
                    clinic_id=row["id"],
                    target=clean,
                    after={"name": clean},
                )
        except IntegrityError:
            raise ValidationError({"name": f"A clinic named {clean} already exists"}) from None
        return record_from_row(Clinic, row)

    def list_clinics(self) -> list[Clinic]:
        """All clinics, by name."""
        with self._read() as conn:
            rows = conn.execute(select(_clinics).order_by(_clinics.c.name)).mappings()
            return [record_from_row(Clinic, r) for r in rows]

    def _admin(self, conn: Connection, user: str | Principal) -> str:
        """The name of who manages accounts: a command-line user, or an active admin."""
        if not isinstance(user, Principal):
            return user_name(user)
        row = conn.execute(
            select(_users.c.name, _users.c.roles, _users.c.active).where(
                _users.c.name_key == user.name.lower()
            )
        ).first()
        if row is None or not row.active or auth.Role.ADMIN not in row.roles.split(","):
            raise AccessDenied("Only administrators manage accounts and clinics")
        return str(row.name)

    def _clinic_ids(self, conn: Connection, clinics: Iterable[int | str]) -> list[int]:
        ids = []
        for clinic in clinics:
            column = _clinics.c.id if isinstance(clinic, int) else func.lower(_clinics.c.name)
            key = clinic if isinstance(clinic, int) else str(clinic).strip().lower()
            found = conn.execute(select(_clinics.c.id).where(column == key)).scalar()
            if found is None:
                raise ValidationError(
                    {"clinic": f"No clinic named {printable(str(clinic))}: tpmap clinic add"}
                )
            ids.append(int(found))
        return sorted(set(ids))

    def add_user(
        self,
        name: str,
        password: str,
        *,
        roles: Iterable[str],
        clinics: Iterable[int | str] = (),
        user: str | Principal,
    ) -> UserAccount:
        """Create an account. Clinicians need at least one clinic (by id or name)."""
        clean = auth.validate_user_name(name)
        role_set = auth.validate_roles(roles)
        hashed = auth.hash_password(password)
        try:
            with self._write() as conn:
                who = self._admin(conn, user)
                clinic_ids = self._clinic_ids(conn, clinics)
                if auth.Role.CLINICIAN in role_set and not clinic_ids:
                    raise ValidationError(
                        {"clinic": "A clinician belongs to at least one clinic: give --clinic"}
                    )
                if conn.execute(
                    select(_users.c.id).where(_users.c.name_key == clean.lower())
                ).first():
                    raise ValidationError({"name": f"An account named {clean} already exists"})
                user_id = conn.execute(
                    insert(_users)
                    .values(
                        name=clean,
                        name_key=clean.lower(),
                        password_hash=hashed,
                        roles=",".join(sorted(role_set)),
                        active=True,
                        created_at=utcnow(),
                        created_by=who,
                    )
                    .returning(_users.c.id)
                ).scalar_one()
                if clinic_ids:
                    conn.execute(
                        insert(_user_clinics),
                        [{"user_id": user_id, "clinic_id": c} for c in clinic_ids],
                    )
                self._audit(
                    conn,
                    who,
                    "create",
                    "user",
                    entity_id=user_id,
                    target=clean,
                    after={"name": clean, "roles": sorted(role_set), "clinics": clinic_ids},
                )
        except IntegrityError:
            raise ValidationError({"name": f"An account named {clean} already exists"}) from None
        return self.get_user(clean)

    def _user_row(self, conn: Connection, name: object) -> RowMapping:
        key = name.strip().lower() if isinstance(name, str) else ""
        row = conn.execute(select(_users).where(_users.c.name_key == key)).mappings().first()
        if row is None:
            raise NotFoundError(f"No account named {printable(str(name))}")
        return row

    def _account(self, conn: Connection, row: RowLike) -> UserAccount:
        clinics = conn.execute(
            select(_clinics.c.id, _clinics.c.name)
            .join(_user_clinics, _user_clinics.c.clinic_id == _clinics.c.id)
            .where(_user_clinics.c.user_id == row["id"])
            .order_by(_clinics.c.name)
        ).all()
        return UserAccount(
            id=row["id"],
            name=row["name"],
            roles=tuple(r for r in row["roles"].split(",") if r),
            clinics=tuple(c.name for c in clinics),
            clinic_ids=tuple(c.id for c in clinics),
            active=bool(row["active"]),
            created_at=row["created_at"],
            created_by=row["created_by"],
        )

    def get_user(self, name: str) -> UserAccount:
        """The account named ``name`` (case-insensitive); NotFoundError if none."""
        with self._read() as conn:
            return self._account(conn, self._user_row(conn, name))

    def list_users(self) -> list[UserAccount]:
        """All accounts, by name."""
        with self._read() as conn:
            rows = conn.execute(select(_users).order_by(_users.c.name_key)).mappings().all()
            return [self._account(conn, r) for r in rows]

    def set_user_active(self, name: str, active: bool, *, user: str | Principal) -> UserAccount:
        """Disable (or enable again) an account; a disabled one is signed out everywhere."""
        with self._write() as conn:
            who = self._admin(conn, user)
            row = self._user_row(conn, name)
            if bool(row["active"]) != bool(active):
                now = utcnow()
                conn.execute(
                    update(_users)
                    .where(_users.c.id == row["id"])
                    .values(active=bool(active), updated_at=now, updated_by=who)
                )
                if not active:
                    _end_logins(conn, row["id"], now)
                self._audit(
                    conn,
                    who,
                    "enable" if active else "disable",
                    "user",
                    entity_id=row["id"],
                    target=row["name"],
                    before={"active": bool(row["active"])},
                    after={"active": bool(active)},
                )
            return self._account(conn, self._user_row(conn, name))

    def set_password(self, name: str, password: str, *, user: str | Principal) -> None:
        """Give an account a new password (argon2id); its open sign-ins end."""
        hashed = auth.hash_password(password)
        with self._write() as conn:
            who = self._admin(conn, user)
            row = self._user_row(conn, name)
            now = utcnow()
            conn.execute(
                update(_users)
                .where(_users.c.id == row["id"])
                .values(password_hash=hashed, updated_at=now, updated_by=who)
            )
            _end_logins(conn, row["id"], now)
            self._audit(
                conn,
                who,
                "password",
                "user",
                entity_id=row["id"],
                target=row["name"],
                after={"password": "changed"},
            )

    # -- signing in ----------------------------------------------------------------------------

    def _failures(self, conn: Connection, name_key: str, address: str | None) -> tuple[int, int]:
        since = utcnow() - SIGN_IN_WINDOW
        recent = and_(_audit_log.c.action == "sign_in_failed", _audit_log.c.at >= since)
        per_name = conn.execute(
            select(func.count()).where(recent, _audit_log.c.target == name_key)
        ).scalar_one()
        per_address = 0
        if address:
            per_address = conn.execute(
                select(func.count()).where(recent, _audit_log.c.address == address)
            ).scalar_one()
        return int(per_name), int(per_address)

    def sign_in(self, name: object, password: object, *, address: str | None = None) -> SignIn:
        """Check a name and password: one argon2 verification, and the sign-in is recorded.

        Raises
        ------
        SignInError
            With the same message for a wrong name and a wrong password (and a disabled
            account), or, after :data:`SIGN_IN_LIMIT` failures within a minute for this name
            or this address, a request to wait, without checking the password at all.
        """
        typed = name if isinstance(name, str) else ""
        name_key = printable(typed.strip().lower(), 64)
        address = None if address is None else printable(address, 64)
        with self._read() as conn:
            per_name, per_address = self._failures(conn, name_key, address)
            row = (
                conn.execute(select(_users).where(_users.c.name_key == name_key)).mappings().first()
            )
        if per_name >= SIGN_IN_LIMIT or per_address >= SIGN_IN_LIMIT:
            auth_log.warning(
                "sign-in refused for %r from %s: %d failures for the name, %d from the address "
                "in the last minute",
                name_key,
                address,
                per_name,
                per_address,
            )
            raise SignInError(TOO_MANY_SIGN_INS, throttled=True)
        hashed = row["password_hash"] if row is not None else auth.dummy_hash()
        ok = auth.verify_password(hashed, password if isinstance(password, str) else "")
        ok = ok and row is not None and bool(row["active"])
        if not ok:
            with self._write() as conn:
                self._audit(
                    conn,
                    name_key or "(no name)",
                    "sign_in_failed",
                    "login",
                    target=name_key,
                    address=address,
                )
            auth_log.warning("failed sign-in for %r from %s", name_key, address)
            raise SignInError(WRONG_SIGN_IN)
        assert row is not None
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as conn:
            if auth.needs_rehash(hashed) and isinstance(password, str):
                conn.execute(
                    update(_users)
                    .where(_users.c.id == row["id"])
                    .values(password_hash=auth.hash_password(password))
                )
            login_id = conn.execute(
                insert(_logins)
                .values(
                    user_id=row["id"],
                    token_hash=_token_hash(token),
                    created_at=now,
                    last_seen_at=now,
                    address=address,
                )
                .returning(_logins.c.id)
            ).scalar_one()
            self._audit(
                conn,
                row["name"],
                "sign_in",
                "login",
                entity_id=login_id,
                target=name_key,
                address=address,
            )
            principal = self._principal(conn, row, login_id)
        auth_log.info("%s signed in from %s", row["name"], address)
        return SignIn(principal, token)

    def _principal(self, conn: Connection, row: RowLike, login_id: int | None) -> Principal:
        clinics = conn.execute(
            select(_user_clinics.c.clinic_id).where(_user_clinics.c.user_id == row["id"])
        ).scalars()
        return Principal(
            name=row["name"],
            roles=frozenset(r for r in row["roles"].split(",") if r),
            clinic_ids=frozenset(clinics),
            active=bool(row["active"]),
            login_id=login_id,
        )

    def principal(self, name: str) -> Principal | None:
        """The account ``name`` as a principal (not tied to a sign-in), or None."""
        with self._read() as conn:
            try:
                row = self._user_row(conn, name)
            except NotFoundError:
                return None
            return self._principal(conn, row, None)

    def check_login(
        self,
        *,
        token: str | None = None,
        login_id: int | None = None,
        idle: dt.timedelta,
        touch_after: dt.timedelta = dt.timedelta(minutes=1),
    ) -> Principal | None:
        """The principal of an open sign-in (by cookie token or id), or None.

        None when the sign-in is unknown, ended (signed out, password changed), idle longer
        than ``idle``, or its account is disabled. A sign-in in use is marked seen (at most
        once per ``touch_after``, so that every websocket message does not write).
        """
        row = self._open_login(token, login_id, idle, touch_after)
        if row is None:
            return None
        with self._read() as conn:
            return self._principal(conn, row, row["login_id"])

    def login_is_open(
        self,
        login_id: int,
        *,
        idle: dt.timedelta,
        touch_after: dt.timedelta = dt.timedelta(minutes=1),
    ) -> bool:
        """Whether sign-in ``login_id`` is still open (one query; checked per websocket message)."""
        return self._open_login(None, login_id, idle, touch_after) is not None

    def _open_login(
        self,
        token: str | None,
        login_id: int | None,
        idle: dt.timedelta,
        touch_after: dt.timedelta,
    ) -> RowMapping | None:
        if token is not None:
            where = _logins.c.token_hash == _token_hash(token)
        elif login_id is not None:
            where = _logins.c.id == login_id
        else:
            return None
        stmt = (
            select(
                _logins.c.id.label("login_id"), _logins.c.last_seen_at, _logins.c.ended_at, _users
            )
            .join(_users, _users.c.id == _logins.c.user_id)
            .where(where)
        )
        now = utcnow()
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None or row["ended_at"] is not None or not row["active"]:
            return None
        if now - row["last_seen_at"] > idle:
            return None
        if now - row["last_seen_at"] > touch_after:
            with self._write() as conn:
                conn.execute(
                    update(_logins)
                    .where(_logins.c.id == row["login_id"], _logins.c.ended_at.is_(None))
                    .values(last_seen_at=now)
                )
        return row

    def sign_out(self, token: str, *, address: str | None = None) -> None:
        """End the sign-in holding ``token`` (no-op when it already ended)."""
        with self._write() as conn:
            row = (
                conn.execute(
                    select(_logins.c.id, _logins.c.ended_at, _users.c.name)
                    .join(_users, _users.c.id == _logins.c.user_id)
                    .where(_logins.c.token_hash == _token_hash(token))
                )
                .mappings()
                .first()
            )
            if row is None or row["ended_at"] is not None:
                return
            conn.execute(update(_logins).where(_logins.c.id == row["id"]).values(ended_at=utcnow()))
            self._audit(
                conn,
                row["name"],
                "sign_out",
                "login",
                entity_id=row["id"],
                target=row["name"].lower(),
                address=None if address is None else printable(address, 64),
            )

    # -- the audit trail -----------------------------------------------------------------------

    def record_export(self, user: str | Principal, record: Mapping[str, Any]) -> None:
        """Write a research export (what was exported, with which filters) to the audit trail.

        ``record`` is a JSON-able mapping, e.g. ``{"kind": "marks.csv", "rows": 1234,
        "filters": {...}}``; it is stored as the entry's ``after``.
        """
        who = user.name if isinstance(user, Principal) else user_name(user)
        if isinstance(user, Principal):
            with self._read() as conn:
                row = conn.execute(
                    select(_users.c.active).where(_users.c.name_key == who.lower())
                ).first()
            if row is None or not row.active:
                raise AccessDenied("This account is disabled or unknown: sign in again")
        values = dict(record)
        kind = values.get("kind")
        with self._write() as conn:
            self._audit(
                conn,
                who,
                "export",
                "research",
                target=printable(str(kind), 100) if kind is not None else None,
                after=values,
            )

    def audit_entries(
        self,
        *,
        user: str | None = None,
        patient: str | int | None = None,
        action: str | None = None,
        date_from: dt.date | dt.datetime | None = None,
        date_to: dt.date | dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The audit trail, oldest first, filtered by actor, patient (code or id), action, dates.

        ``date_to`` is inclusive (a date means up to the end of that day, UTC).
        """
        stmt = select(_audit_log).order_by(_audit_log.c.seq)
        if user:
            stmt = stmt.where(func.lower(_audit_log.c.actor) == user.strip().lower())
        if action:
            stmt = stmt.where(_audit_log.c.action == action)
        if date_from is not None:
            stmt = stmt.where(_audit_log.c.at >= _start_of(date_from))
        if date_to is not None:
            end = _start_of(date_to)
            if not isinstance(date_to, dt.datetime):
                end += dt.timedelta(days=1)
                stmt = stmt.where(_audit_log.c.at < end)
            else:
                stmt = stmt.where(_audit_log.c.at <= end)
        with self._read() as conn:
            if patient is not None:
                if isinstance(patient, int):
                    stmt = stmt.where(_audit_log.c.patient_id == patient)
                else:
                    # A code names one patient per clinic: the trail of each of them.
                    ids = select(_patients.c.id).where(
                        func.lower(_patients.c.code) == str(patient).strip().lower()
                    )
                    stmt = stmt.where(_audit_log.c.patient_id.in_(ids))
            if limit is not None:
                # The newest ``limit`` entries, still oldest first.
                sub = stmt.order_by(None).order_by(_audit_log.c.seq.desc()).limit(limit).subquery()
                stmt = select(sub).order_by(sub.c.seq)
            rows = conn.execute(stmt).mappings().all()
        return [_audit.entry_from_row(r) for r in rows]

    def verify_audit(self) -> AuditReport:
        """Check the audit trail's hash chain from its first row to its head."""
        with self._read() as conn:
            return _audit.verify_rows(conn, self._key())


def _start_of(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
