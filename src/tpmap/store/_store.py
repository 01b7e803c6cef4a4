"""The Store: every read and write of tpmap's clinical record, accounts and audit trail.

Each public method opens its own connection from the engine and commits before it returns,
so a Store may be shared between threads (the web page calls it from a worker thread).
Every mutating method validates through :mod:`tpmap.model` first: bad input raises
:class:`~tpmap.model.ValidationError` and leaves the database unchanged.

Every change is written to the audit trail in the same transaction (see
:mod:`tpmap.store._audit`). A method's ``user`` is either a name (the command line, imports,
scripts: unscoped) or a :class:`~tpmap.auth.Principal` (a signed-in user: the account must be
an active clinician, and every id must belong to one of their clinics, checked in the same
transaction; anything else is "not found"). :meth:`Store.scoped` binds a principal.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sqlalchemy import (
    Engine,
    Table,
    case,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, RowMapping, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from tpmap import auth, model
from tpmap.auth import AccessDenied, Principal, Secret
from tpmap.model import ValidationError
from tpmap.store import _audit, _migrate
from tpmap.store._accounts import AccountsMixin
from tpmap.store._common import RowLike, printable, user_name
from tpmap.store._engine import WRITE_OPTION, default_database_url, make_engine
from tpmap.store._records import (
    AdverseEvent,
    Episode,
    Mark,
    MarkChange,
    NotFoundError,
    Outcome,
    Patient,
    PressurePainThreshold,
    SessionRecord,
    UndoResult,
    record_from_row,
)
from tpmap.store.schema import (
    AdverseEventRow,
    ClinicRow,
    EpisodeRow,
    LoginSessionRow,
    MarkChangeRow,
    MarkRow,
    OutcomeChangeRow,
    OutcomeMeasureRow,
    PatientRow,
    PressurePainThresholdRow,
    SessionRow,
    UserClinicRow,
    UserRow,
    utcnow,
)

if TYPE_CHECKING:
    from tpmap.store._scoped import ScopedStore

__all__ = ["Store", "open_store"]

log = logging.getLogger("tpmap.store")

_patients: Table = PatientRow.__table__
_episodes: Table = EpisodeRow.__table__
_sessions: Table = SessionRow.__table__
_marks: Table = MarkRow.__table__
_changes: Table = MarkChangeRow.__table__
_ppts: Table = PressurePainThresholdRow.__table__
_adverse: Table = AdverseEventRow.__table__
_outcomes: Table = OutcomeMeasureRow.__table__
_outcome_changes: Table = OutcomeChangeRow.__table__
_OUTCOME_FIELDS: tuple[str, ...] = ("instrument", "score", "date")
# The change logs undo walks: their table, the record's column and the parent's column.
_CHANGE_LOGS: dict[str, tuple[Table, str, str]] = {
    "mark": (_changes, "mark_id", "session_id"),
    "outcome": (_outcome_changes, "outcome_id", "episode_id"),
}
# Runs inside a reading's transaction after it changed: (connection, row, who).
_AfterChange = Callable[[Connection, RowMapping, str], None]
_clinics: Table = ClinicRow.__table__
_users: Table = UserRow.__table__
_user_clinics: Table = UserClinicRow.__table__
_logins: Table = LoginSessionRow.__table__

# Fields of a mark that a change can touch, i.e. everything MarkInput carries.
_MARK_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(model.MarkInput))
_MARK_SELECT = select(*_marks.c, _sessions.c.date.label("session_date")).join(
    _sessions, _sessions.c.id == _marks.c.session_id
)
_CHUNK = 10_000
# What each kind of id is, how to reach its patient, and the words for it.
_KINDS: dict[str, tuple[Table, str]] = {
    "patient": (_patients, "patient"),
    "episode": (_episodes, "episode"),
    "session": (_sessions, "session"),
    "mark": (_marks, "mark"),
    "pressure_pain_threshold": (_ppts, "pressure pain threshold"),
    "adverse_event": (_adverse, "adverse event"),
    "outcome": (_outcomes, "outcome"),
}


def _owner_select(kind: str, ident: int) -> Any:
    """SELECT patient_id, clinic_id of the record ``kind`` ``ident`` (one indexed join)."""
    p, e, s = _patients, _episodes, _sessions
    if kind == "patient":
        return select(p.c.id, p.c.clinic_id).where(p.c.id == ident)
    if kind in ("episode", "outcome"):
        if kind == "episode":
            base = select(p.c.id, p.c.clinic_id).select_from(e).where(e.c.id == ident)
        else:
            o = _outcomes
            base = (
                select(p.c.id, p.c.clinic_id)
                .select_from(o)
                .join(e, e.c.id == o.c.episode_id)
                .where(o.c.id == ident)
            )
        return base.join(p, p.c.id == e.c.patient_id)
    if kind == "session":
        stmt = select(p.c.id, p.c.clinic_id).select_from(s).where(s.c.id == ident)
    else:
        child = _KINDS[kind][0]
        stmt = (
            select(p.c.id, p.c.clinic_id)
            .select_from(child)
            .join(s, s.c.id == child.c.session_id)
            .where(child.c.id == ident)
        )
    return stmt.join(e, e.c.id == s.c.episode_id).join(p, p.c.id == e.c.patient_id)


@dataclasses.dataclass(frozen=True, slots=True)
class _Actor:
    """Who is acting, and (for a signed-in principal) which clinics they may touch."""

    name: str
    clinics: frozenset[int] | None  # None: unscoped (command line, imports, scripts)


def _row_values(row: RowLike, skip: Sequence[str] = ("id",)) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in skip}


def _ident(value: object, kind: str) -> int:
    """An id from outside (a page, a file) as a positive int; anything else is not found."""
    if type(value) is int and 0 < value < 2**63:
        return value
    if type(value) is int:  # zero, negative, or beyond any database integer
        raise NotFoundError(f"No {_KINDS[kind][1]} with id {printable(repr(value), 40)}")
    try:
        return _int_id(value, f"{kind}_id")
    except ValidationError:
        raise NotFoundError(f"No {_KINDS[kind][1]} with id {printable(repr(value), 40)}") from None


def _fields(
    value: object, validator: Callable[..., dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    """Validated fields from an input dataclass (already valid) or a raw mapping."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return validator(value, **kwargs)
    raise TypeError(f"expected an input record or a mapping, got {type(value).__name__}")


def _json(values: Mapping[str, Any] | None) -> str | None:
    # Dates (of outcome scores) as ISO text: validation reads them back as dates.
    return None if values is None else json.dumps(dict(values), sort_keys=True, default=str)


def _muscle_words(row: RowLike) -> str:
    return f"{row['side']} {str(row['muscle']).replace('_', ' ')}"


_I = TypeVar("_I")


def _chunks(rows: Iterable[_I], size: int) -> Iterator[list[_I]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _int_id(value: object, name: str) -> int:
    if type(value) is int and value > 0:  # the common case, kept cheap for 10^6 rows
        return value
    try:
        number = model.coerce_int(value, 1, 2**63 - 1, f"{name} must be a stored id")
    except ValueError as exc:
        raise ValidationError({name: str(exc)}) from None
    if number is None:
        raise ValidationError({name: f"{name} is required"})
    return number


# Column defaults for rows that leave a column out (bulk inserts fill every column).
_BULK_DEFAULTS: dict[str, dict[str, Any]] = {
    "marks": {"muscle_overridden": False, "note": ""},
    "episodes": {"note": ""},
    "sessions": {"note": ""},
    "adverse_events": {"note": ""},
    "patients": {"sex": "unknown"},
}


def _executemany(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    stamp: Mapping[str, Any],
) -> None:
    """INSERT many rows straight through the driver, converting values once per column.

    SQLAlchemy's own executemany builds each row's parameters through the compiled statement,
    which at 10^6 marks costs more than SQLite's insert itself. Here the statement is compiled
    once, a missing column takes its default, and only columns whose type has a bind
    processor are converted. PostgreSQL (psycopg) gets COPY, an order of magnitude faster
    than executemany there.
    """
    if not rows:
        return
    unknown = [c for c in rows[0] if c not in table.c]
    if unknown:
        raise ValidationError({c: f"Unknown field: {c}" for c in unknown})
    dialect = conn.dialect
    columns = [c.name for c in table.c if c.name != "id"]
    base = dict.fromkeys(columns) | _BULK_DEFAULTS.get(table.name, {}) | dict(stamp)
    copy = dialect.name == "postgresql" and dialect.driver == "psycopg"
    compiled = insert(table).compile(dialect=dialect, column_keys=columns)
    order = list(compiled.positiontup or []) if dialect.positional and not copy else columns
    pairs = [(name, base[name]) for name in order]
    processors = [
        (i, p)
        for i, name in enumerate(order)
        # dialect_impl: the backend's own type (SQLite's DATETIME renders its string format).
        if (p := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    params: list[list[Any]] = [[row.get(name, default) for name, default in pairs] for row in rows]
    for i, process in processors:
        # Most values repeat (one timestamp per import): convert each distinct one once.
        seen: dict[Any, Any] = {}
        for values in params:
            value = values[i]
            try:
                values[i] = seen[value]
            except KeyError:
                values[i] = seen[value] = process(value)
            except TypeError:  # unhashable: convert it on its own
                values[i] = process(value)
    cursor = conn.connection.cursor()
    try:
        if copy:
            quote = dialect.identifier_preparer.quote
            target = f"{dialect.identifier_preparer.format_table(table)} "
            target += f"({', '.join(quote(c) for c in columns)})"
            with cursor.copy(f"COPY {target} FROM STDIN") as stream:
                for values in params:
                    stream.write_row(values)
        else:
            cursor.executemany(str(compiled), params)
    except dialect.loaded_dbapi.IntegrityError as exc:
        # The driver's own exception: SQLAlchemy does not wrap a raw cursor's errors.
        raise ValidationError({"rows": f"The database rejected the import: {exc}"}) from None
    finally:
        cursor.close()


class Store(AccountsMixin):
    """The tpmap database: patients, episodes, sessions, marks and what came of them.

    Parameters
    ----------
    url
        SQLAlchemy URL; default :func:`default_database_url`.
    migrate
        Apply the shipped migrations on open (idempotent).
    secret
        The server secret, which keys the audit trail's hash chain. By default it is found
        (on the first change) as :func:`tpmap.auth.load_secret` finds it: ``TPMAP_SECRET``,
        else the file in tpmap's data directory (generated there once).
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        migrate: bool = True,
        secret: Secret | bytes | str | None = None,
    ) -> None:
        self.url: URL = make_url(url if url is not None else default_database_url())
        self._engine: Engine = make_engine(self.url)
        # Same pool, but marked so that SQLite begins write transactions IMMEDIATE.
        self._writer: Engine = self._engine.execution_options(**{WRITE_OPTION: True})
        if isinstance(secret, str):
            secret = secret.encode()
        if isinstance(secret, bytes):
            secret = Secret(secret, "given", explicit=True)
        self._secret: Secret | None = secret
        self._audit_key: bytes | None = None
        if migrate:
            _migrate.upgrade(self._writer)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for read-only analysis, e.g. ``pandas.read_sql``)."""
        return self._engine

    def close(self) -> None:
        """Close all pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    def _key(self) -> bytes:
        if self._audit_key is None:
            secret = self._secret or auth.load_secret()
            self._audit_key = secret.key("audit")
        return self._audit_key

    def _audit(self, conn: Connection, actor: str, action: str, entity: str, **kw: Any) -> None:
        _audit.append(conn, self._key(), actor=actor, action=action, entity=entity, **kw)

    @staticmethod
    def _one(conn: Connection, stmt: Any, what: str, ident: int) -> RowMapping:
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise NotFoundError(f"No {what} with id {ident}")
        return row

    def _lock_session(self, conn: Connection, session_id: int) -> RowMapping:
        # Serialises mark changes (and undo) per session on PostgreSQL; SQLite already holds
        # the database write lock (BEGIN IMMEDIATE) and ignores FOR UPDATE.
        stmt = select(_sessions).where(_sessions.c.id == session_id).with_for_update()
        return self._one(conn, stmt, "session", session_id)

    def _require(self, conn: Connection, table: Table, ident: int, what: str) -> RowMapping:
        return self._one(conn, select(table).where(table.c.id == ident), what, ident)

    # -- who is acting, and what they may touch ---------------------------------------------

    def _actor(self, conn: Connection, user: str | Principal) -> _Actor:
        """The actor for ``user``; a principal is checked against the accounts in ``conn``."""
        if not isinstance(user, Principal):
            return _Actor(user_name(user), None)
        row = (
            conn.execute(
                select(_users.c.id, _users.c.name, _users.c.roles, _users.c.active).where(
                    _users.c.name_key == user.name.lower()
                )
            )
            .mappings()
            .first()
        )
        if row is None or not row["active"]:
            raise AccessDenied("This account is disabled or unknown: sign in again")
        if user.login_id is not None:
            ended = conn.execute(
                select(_logins.c.ended_at).where(
                    _logins.c.id == user.login_id, _logins.c.user_id == row["id"]
                )
            ).first()
            if ended is None or ended[0] is not None:
                raise AccessDenied("You were signed out: sign in again")
        if auth.Role.CLINICIAN not in row["roles"].split(","):
            raise AccessDenied("Only clinicians see and record patients")
        clinics = conn.execute(
            select(_user_clinics.c.clinic_id).where(_user_clinics.c.user_id == row["id"])
        ).scalars()
        return _Actor(row["name"], frozenset(clinics))

    def _owner(
        self, conn: Connection, actor: _Actor | None, kind: str, ident: int
    ) -> tuple[int, int]:
        """(patient_id, clinic_id) of a record; NotFoundError if absent or out of scope."""
        row = conn.execute(_owner_select(kind, ident)).first()
        if row is None or (
            actor is not None and actor.clinics is not None and row[1] not in actor.clinics
        ):
            raise NotFoundError(f"No {_KINDS[kind][1]} with id {ident}")
        return row[0], row[1]

    def _scope(self, conn: Connection, scope: Principal | None) -> _Actor | None:
        return None if scope is None else self._actor(conn, scope)

    def _default_clinic(self, conn: Connection, actor: _Actor, clinic_id: object) -> int:
        if clinic_id is not None:
            try:
                ident = _int_id(clinic_id, "clinic_id")
            except ValidationError:
                raise ValidationError({"clinic_id": "Choose one of your clinics"}) from None
            if actor.clinics is not None and ident not in actor.clinics:
                raise ValidationError({"clinic_id": "Choose one of your clinics"})
            if conn.execute(select(_clinics.c.id).where(_clinics.c.id == ident)).first() is None:
                raise ValidationError({"clinic_id": "No such clinic"})
            return ident
        if actor.clinics is not None:
            if len(actor.clinics) == 1:
                return next(iter(actor.clinics))
            if not actor.clinics:
                raise AccessDenied("Your account belongs to no clinic: ask an administrator")
            raise ValidationError({"clinic_id": "Choose the clinic this patient belongs to"})
        first = conn.execute(select(func.min(_clinics.c.id))).scalar()
        if first is None:
            raise ValidationError({"clinic_id": "Create a clinic first (tpmap clinic add)"})
        return int(first)

    def scoped(self, principal: Principal) -> ScopedStore:
        """The clinical record as ``principal`` may see and change it (see :class:`ScopedStore`)."""
        from tpmap.store._scoped import ScopedStore

        return ScopedStore(self, principal)

    # -- patients ------------------------------------------------------------------------------

    def create_patient(
        self,
        patient: model.PatientInput | Mapping[str, Any],
        user: str | Principal,
        *,
        clinic_id: int | None = None,
    ) -> Patient:
        """Create a patient in a clinic; the code must be new there (compared case-insensitively).

        Without ``clinic_id``: the principal's only clinic, or (unscoped) the first clinic.
        """
        values = _fields(patient, model.validate_patient_fields)
        duplicate = {"code": f"Patient code {values['code']} is already in use"}
        try:
            with self._write() as conn:
                actor = self._actor(conn, user)
                clinic = self._default_clinic(conn, actor, clinic_id)
                # Within the clinic only: another clinic's codes are neither an obstacle
                # nor something this clinic may learn about.
                taken = conn.execute(
                    select(_patients.c.code).where(
                        _patients.c.clinic_id == clinic,
                        func.lower(_patients.c.code) == values["code"].lower(),
                    )
                ).scalar()
                if taken is not None:
                    raise ValidationError({"code": f"Patient code {taken} is already in use"})
                row = (
                    conn.execute(
                        insert(_patients)
                        .values(
                            **values, clinic_id=clinic, created_at=utcnow(), created_by=actor.name
                        )
                        .returning(*_patients.c)
                    )
                    .mappings()
                    .one()
                )
                self._audit(
                    conn,
                    actor.name,
                    "create",
                    "patient",
                    entity_id=row["id"],
                    patient_id=row["id"],
                    clinic_id=clinic,
                    after=_row_values(row),
                )
        except IntegrityError:
            # Another writer took the code between our check and our insert (PostgreSQL).
            raise ValidationError(duplicate) from None
        return record_from_row(Patient, row)

    def get_patient(self, patient_id: int, *, scope: Principal | None = None) -> Patient:
        """The patient with this id (NotFoundError if none)."""
        patient_id = _ident(patient_id, "patient")
        with self._read() as conn:
            self._owner(conn, self._scope(conn, scope), "patient", patient_id)
            return record_from_row(Patient, self._require(conn, _patients, patient_id, "patient"))

    def patient_by_code(self, code: str, *, scope: Principal | None = None) -> Patient | None:
        """The patient with this code (case-insensitive), or None.

        Codes are unique within a clinic; a code used by several of the clinics in view
        (all clinics, unscoped) names no single patient and raises ``ValidationError``.
        """
        if not isinstance(code, str):
            return None
        stmt = select(_patients).where(func.lower(_patients.c.code) == code.strip().lower())
        with self._read() as conn:
            actor = self._scope(conn, scope)
            if actor is not None:
                stmt = stmt.where(_patients.c.clinic_id.in_(actor.clinics or ()))
            rows = conn.execute(stmt.limit(2)).mappings().all()
        if len(rows) > 1:
            raise ValidationError(
                {"code": f"Patient code {code.strip()} is used in more than one clinic"}
            )
        return record_from_row(Patient, rows[0]) if rows else None

    def find_patients(
        self, query: str = "", limit: int = 20, *, scope: Principal | None = None
    ) -> list[Patient]:
        """Patients whose code contains ``query`` (case-insensitive), prefix matches first.

        An empty query lists the most recently created patients.
        """
        text = (query if isinstance(query, str) else "").strip().lower()[:64]
        limit = max(1, min(int(limit), 1000))
        code = func.lower(_patients.c.code)
        stmt = select(_patients).limit(limit)
        if text:
            stmt = stmt.where(code.contains(text, autoescape=True)).order_by(
                case((code.startswith(text, autoescape=True), 0), else_=1), _patients.c.code
            )
        else:
            stmt = stmt.order_by(_patients.c.created_at.desc(), _patients.c.id.desc())
        with self._read() as conn:
            actor = self._scope(conn, scope)
            if actor is not None:
                stmt = stmt.where(_patients.c.clinic_id.in_(actor.clinics or ()))
            return [record_from_row(Patient, r) for r in conn.execute(stmt).mappings()]

    # -- episodes ------------------------------------------------------------------------------

    def create_episode(
        self,
        patient_id: int,
        episode: model.EpisodeInput | Mapping[str, Any],
        user: str | Principal,
    ) -> Episode:
        """Open an episode of care for a patient."""
        patient_id = _ident(patient_id, "patient")
        values = _fields(episode, model.validate_episode_fields)
        with self._write() as conn:
            actor = self._actor(conn, user)
            pid, cid = self._owner(conn, actor, "patient", patient_id)
            row = (
                conn.execute(
                    insert(_episodes)
                    .values(**values, patient_id=pid, created_at=utcnow(), created_by=actor.name)
                    .returning(*_episodes.c)
                )
                .mappings()
                .one()
            )
            self._audit(
                conn,
                actor.name,
                "create",
                "episode",
                entity_id=row["id"],
                patient_id=pid,
                clinic_id=cid,
                after=_row_values(row),
            )
        return record_from_row(Episode, row)

    def get_episode(self, episode_id: int, *, scope: Principal | None = None) -> Episode:
        """The episode with this id."""
        episode_id = _ident(episode_id, "episode")
        with self._read() as conn:
            self._owner(conn, self._scope(conn, scope), "episode", episode_id)
            return record_from_row(Episode, self._require(conn, _episodes, episode_id, "episode"))

    def list_episodes(self, patient_id: int, *, scope: Principal | None = None) -> list[Episode]:
        """A patient's episodes, oldest first."""
        patient_id = _ident(patient_id, "patient")
        stmt = (
            select(_episodes)
            .where(_episodes.c.patient_id == patient_id)
            .order_by(_episodes.c.start_date, _episodes.c.id)
        )
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), "patient", patient_id)
            return [record_from_row(Episode, r) for r in conn.execute(stmt).mappings()]

    # -- sessions ------------------------------------------------------------------------------

    def create_session(
        self,
        episode_id: int,
        session: model.SessionInput | Mapping[str, Any],
        user: str | Principal,
    ) -> SessionRecord:
        """Record a treatment session in an episode."""
        episode_id = _ident(episode_id, "episode")
        values = _fields(session, model.validate_session_fields)
        with self._write() as conn:
            actor = self._actor(conn, user)
            pid, cid = self._owner(conn, actor, "episode", episode_id)
            row = (
                conn.execute(
                    insert(_sessions)
                    .values(
                        **values, episode_id=episode_id, created_at=utcnow(), created_by=actor.name
                    )
                    .returning(*_sessions.c)
                )
                .mappings()
                .one()
            )
            self._audit(
                conn,
                actor.name,
                "create",
                "session",
                entity_id=row["id"],
                patient_id=pid,
                clinic_id=cid,
                after=_row_values(row),
            )
        return record_from_row(SessionRecord, row)

    def update_session(
        self, session_id: int, fields: Mapping[str, Any], user: str | Principal
    ) -> SessionRecord:
        """Change some fields of a session (e.g. NPRS after treatment)."""
        session_id = _ident(session_id, "session")
        changes = model.validate_session_fields(fields, partial=True)
        with self._write() as conn:
            actor = self._actor(conn, user)
            pid, cid = self._owner(conn, actor, "session", session_id)
            current = self._lock_session(conn, session_id)
            changed = {k: v for k, v in changes.items() if current[k] != v}
            if changed:
                conn.execute(
                    update(_sessions)
                    .where(_sessions.c.id == session_id)
                    .values(**changed, updated_at=utcnow(), updated_by=actor.name)
                )
                self._audit(
                    conn,
                    actor.name,
                    "update",
                    "session",
                    entity_id=session_id,
                    patient_id=pid,
                    clinic_id=cid,
                    before={k: current[k] for k in changed},
                    after=changed,
                )
            row = self._require(conn, _sessions, session_id, "session")
        return record_from_row(SessionRecord, row)

    def get_session(self, session_id: int, *, scope: Principal | None = None) -> SessionRecord:
        """The session with this id."""
        session_id = _ident(session_id, "session")
        with self._read() as conn:
            self._owner(conn, self._scope(conn, scope), "session", session_id)
            row = self._require(conn, _sessions, session_id, "session")
        return record_from_row(SessionRecord, row)

    def list_sessions(
        self, episode_id: int, *, scope: Principal | None = None
    ) -> list[SessionRecord]:
        """An episode's sessions, oldest first."""
        episode_id = _ident(episode_id, "episode")
        stmt = (
            select(_sessions)
            .where(_sessions.c.episode_id == episode_id)
            .order_by(_sessions.c.date, _sessions.c.id)
        )
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), "episode", episode_id)
            return [record_from_row(SessionRecord, r) for r in conn.execute(stmt).mappings()]

    # -- marks ---------------------------------------------------------------------------------

    def _mark_row(self, conn: Connection, mark_id: int) -> RowMapping:
        return self._one(conn, _MARK_SELECT.where(_marks.c.id == mark_id), "mark", mark_id)

    def _log(
        self,
        conn: Connection,
        record: RowLike,
        action: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        who: str,
        owner: tuple[int, int] | None,
        undo_of: int | None = None,
        *,
        kind: str = "mark",
    ) -> None:
        """Append to the change log that undo walks (marks, outcome scores); with ``owner``
        also to the audit trail (an undo is recorded there as ``undo``)."""
        table, record_column, parent_column = _CHANGE_LOGS[kind]
        conn.execute(
            insert(table).values(
                **{record_column: record["id"], parent_column: record[parent_column]},
                action=action,
                before=_json(before),
                after=_json(after),
                at=utcnow(),
                user=who,
                undo_of=undo_of,
            )
        )
        if owner is not None:
            self._audit(
                conn,
                who,
                action if undo_of is None else "undo",
                kind,
                entity_id=record["id"],
                patient_id=owner[0],
                clinic_id=owner[1],
                before=before,
                after=after,
            )

    def add_mark(
        self, session_id: int, mark: model.MarkInput | Mapping[str, Any], user: str | Principal
    ) -> Mark:
        """Store a needled point in a session; committed when this returns."""
        session_id = _ident(session_id, "session")
        values = _fields(mark, model.validate_mark_fields)
        with self._write() as conn:
            actor = self._actor(conn, user)
            owner = self._owner(conn, actor, "session", session_id)
            self._lock_session(conn, session_id)
            mark_id = conn.execute(
                insert(_marks)
                .values(**values, session_id=session_id, created_at=utcnow(), created_by=actor.name)
                .returning(_marks.c.id)
            ).scalar_one()
            row = self._mark_row(conn, mark_id)
            self._log(conn, row, "create", None, values, actor.name, owner)
        return record_from_row(Mark, row)

    def _locked_mark(
        self, conn: Connection, actor: _Actor, mark_id: int
    ) -> tuple[RowMapping, tuple[int, int]]:
        owner = self._owner(conn, actor, "mark", mark_id)
        session_id = self._mark_row(conn, mark_id)["session_id"]
        self._lock_session(conn, session_id)
        # Re-read under the lock: another writer may have changed it meanwhile.
        return self._mark_row(conn, mark_id), owner

    def _change_mark(
        self,
        conn: Connection,
        current: RowLike,
        requested: Mapping[str, Any],
        action: str,
        who: str,
        owner: tuple[int, int],
        undo_of: int | None = None,
    ) -> bool:
        """Validate the merged mark, write the changed fields and log them; True if changed."""
        merged = {name: current[name] for name in _MARK_FIELDS} | dict(requested)
        cleaned = model.validate_mark_fields(merged)
        changed = {k: v for k, v in cleaned.items() if k in requested and v != current[k]}
        if not changed:
            return False
        conn.execute(
            update(_marks)
            .where(_marks.c.id == current["id"])
            .values(**changed, updated_at=utcnow(), updated_by=who)
        )
        before = {k: current[k] for k in changed}
        self._log(conn, current, action, before, changed, who, owner, undo_of)
        return True

    @staticmethod
    def _not_deleted(row: RowLike) -> None:
        if row["deleted_at"] is not None:
            raise ValidationError({"mark": "This mark was deleted: restore it before changing it"})

    def update_mark(self, mark_id: int, fields: Mapping[str, Any], user: str | Principal) -> Mark:
        """Change some fields of a mark (validated together with the rest of the mark).

        Setting ``muscle`` by hand marks the muscle as overridden, unless ``fields`` says
        otherwise. Use :meth:`move_mark` for a new position.
        """
        mark_id = _ident(mark_id, "mark")
        unknown = [name for name in fields if name not in _MARK_FIELDS]
        if unknown:
            raise ValidationError({name: f"Unknown field: {name}" for name in unknown})
        # Check the fields on their own first so that messages name what the user typed.
        requested = model.validate_mark_fields(fields, partial=True)
        with self._write() as conn:
            actor = self._actor(conn, user)
            current, owner = self._locked_mark(conn, actor, mark_id)
            self._not_deleted(current)
            if "muscle" in requested and "muscle_overridden" not in requested:
                requested["muscle_overridden"] = requested["muscle"] != current["muscle"] or bool(
                    current["muscle_overridden"]
                )
            self._change_mark(conn, current, requested, "update", actor.name, owner)
            row = self._mark_row(conn, current["id"])
        return record_from_row(Mark, row)

    def move_mark(
        self,
        mark_id: int,
        x: float,
        y: float,
        muscle: str,
        side: str,
        layer: str,
        user: str | Principal,
        *,
        view: str | None = None,
    ) -> Mark:
        """Move a mark; the muscle comes from the atlas again (no longer overridden)."""
        mark_id = _ident(mark_id, "mark")
        requested: dict[str, Any] = {
            "x": x,
            "y": y,
            "muscle": muscle,
            "side": side,
            "layer": layer,
            "muscle_overridden": False,
        }
        if view is not None:
            requested["view"] = view
        model.validate_mark_fields(requested, partial=True)
        with self._write() as conn:
            actor = self._actor(conn, user)
            current, owner = self._locked_mark(conn, actor, mark_id)
            self._not_deleted(current)
            self._change_mark(conn, current, requested, "move", actor.name, owner)
            row = self._mark_row(conn, current["id"])
        return record_from_row(Mark, row)

    def _set_deleted(
        self,
        conn: Connection,
        current: RowLike,
        deleted: bool,
        who: str,
        owner: tuple[int, int],
        undo_of: int | None = None,
    ) -> bool:
        if (current["deleted_at"] is not None) == deleted:
            return False
        now = utcnow()
        # A deletion shows in deleted_at; a restore clears it, so it is stamped as an update
        # (like an edit) for readers that look for changes by timestamp.
        values: dict[str, Any] = (
            {"deleted_at": now, "deleted_by": who}
            if deleted
            else {"deleted_at": None, "deleted_by": None, "updated_at": now, "updated_by": who}
        )
        conn.execute(update(_marks).where(_marks.c.id == current["id"]).values(**values))
        old = current["deleted_at"].isoformat() if current["deleted_at"] else None
        before, after = {"deleted_at": old}, {"deleted_at": now.isoformat() if deleted else None}
        action = "delete" if deleted else "restore"
        self._log(conn, current, action, before, after, who, owner, undo_of)
        return True

    def delete_mark(self, mark_id: int, user: str | Principal) -> Mark:
        """Hide a mark (soft deletion: it stays in the database and the change log)."""
        mark_id = _ident(mark_id, "mark")
        with self._write() as conn:
            actor = self._actor(conn, user)
            current, owner = self._locked_mark(conn, actor, mark_id)
            self._set_deleted(conn, current, True, actor.name, owner)
            row = self._mark_row(conn, current["id"])
        return record_from_row(Mark, row)

    def restore_mark(self, mark_id: int, user: str | Principal) -> Mark:
        """Bring back a deleted mark (recorded as an update: ``updated_at``/``updated_by``)."""
        mark_id = _ident(mark_id, "mark")
        with self._write() as conn:
            actor = self._actor(conn, user)
            current, owner = self._locked_mark(conn, actor, mark_id)
            self._set_deleted(conn, current, False, actor.name, owner)
            row = self._mark_row(conn, current["id"])
        return record_from_row(Mark, row)

    def undo_last(self, session_id: int, user: str | Principal) -> str | None:
        """Revert the latest change to this session's marks that is not yet undone.

        Undoing an addition deletes the mark, undoing a deletion restores it, undoing an edit or
        a move puts the earlier values back. Calling it again walks further back.

        Returns
        -------
        str or None
            What was undone, for the page's status line; None when nothing is left to undo.
        """
        session_id = _ident(session_id, "session")
        undo = aliased(_changes)
        with self._write() as conn:
            actor = self._actor(conn, user)
            owner = self._owner(conn, actor, "session", session_id)
            self._lock_session(conn, session_id)
            stmt = (
                select(_changes)
                .where(
                    _changes.c.session_id == session_id,
                    _changes.c.undo_of.is_(None),
                    ~exists().where(undo.c.undo_of == _changes.c.id),
                )
                .order_by(_changes.c.id.desc())
                .limit(1)
            )
            change = conn.execute(stmt).mappings().first()
            if change is None:
                return None
            who = actor.name
            mark = self._mark_row(conn, change["mark_id"])
            action, words = change["action"], _muscle_words(mark)
            if action in ("create", "restore"):
                self._set_deleted(conn, mark, True, who, owner, undo_of=change["id"])
                verb = "adding" if action == "create" else "restoring"
            elif action == "delete":
                self._set_deleted(conn, mark, False, who, owner, undo_of=change["id"])
                verb = "deleting"
            else:
                before = json.loads(change["before"] or "{}")
                changed = self._change_mark(
                    conn, mark, before, action, who, owner, undo_of=change["id"]
                )
                if not changed:
                    # Nothing differs any more; still record the undo so the walk moves on.
                    self._log(conn, mark, action, {}, {}, who, owner, undo_of=change["id"])
                if action == "move":
                    verb = "moving"
                else:
                    names = ", ".join(
                        model.FIELD_LABELS.get(k, k).lower()
                        for k in before
                        if k != "muscle_overridden"
                    )
                    verb = f"changing {names or 'the details'} of"
            return f"Undid {verb} the {words} mark"

    def get_mark(self, mark_id: int, *, scope: Principal | None = None) -> Mark:
        """The mark with this id, deleted or not."""
        mark_id = _ident(mark_id, "mark")
        with self._read() as conn:
            self._owner(conn, self._scope(conn, scope), "mark", mark_id)
            return record_from_row(Mark, self._mark_row(conn, mark_id))

    def session_marks(
        self,
        session_id: int,
        *,
        include_deleted: bool = False,
        scope: Principal | None = None,
    ) -> list[Mark]:
        """The marks of one session in the order they were placed (deleted ones hidden)."""
        session_id = _ident(session_id, "session")
        stmt = _MARK_SELECT.where(_marks.c.session_id == session_id).order_by(_marks.c.id)
        if not include_deleted:
            stmt = stmt.where(_marks.c.deleted_at.is_(None))
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), "session", session_id)
            return [record_from_row(Mark, r) for r in conn.execute(stmt).mappings()]

    def episode_marks(self, episode_id: int, *, scope: Principal | None = None) -> list[Mark]:
        """All visible marks of an episode's sessions, oldest session first.

        Each mark carries ``session_date``, so the page can draw earlier sessions faded.
        """
        episode_id = _ident(episode_id, "episode")
        stmt = _MARK_SELECT.where(
            _sessions.c.episode_id == episode_id, _marks.c.deleted_at.is_(None)
        ).order_by(_sessions.c.date, _sessions.c.id, _marks.c.id)
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), "episode", episode_id)
            return [record_from_row(Mark, r) for r in conn.execute(stmt).mappings()]

    def mark_history(self, mark_id: int, *, scope: Principal | None = None) -> list[MarkChange]:
        """The change log of one mark, oldest first."""
        mark_id = _ident(mark_id, "mark")
        stmt = select(_changes).where(_changes.c.mark_id == mark_id).order_by(_changes.c.id)
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), "mark", mark_id)
            rows = conn.execute(stmt).mappings().all()
        return [
            record_from_row(
                MarkChange,
                r,
                before=None if r["before"] is None else json.loads(r["before"]),
                after=None if r["after"] is None else json.loads(r["after"]),
            )
            for r in rows
        ]

    # -- session readings (pressure pain thresholds, adverse events) and outcomes ----------------

    def _add_child(
        self,
        parent_kind: str,
        parent_id: int,
        kind: str,
        values: Mapping[str, Any],
        user: str | Principal,
        then: _AfterChange | None = None,
    ) -> RowMapping:
        """Insert a reading under its parent (checked against the user's clinics), audited;
        ``then(conn, row, who)`` runs in the same transaction (a change log)."""
        parent_id = _ident(parent_id, parent_kind)
        table = _KINDS[kind][0]
        with self._write() as conn:
            actor = self._actor(conn, user)
            pid, cid = self._owner(conn, actor, parent_kind, parent_id)
            stmt = (
                insert(table)
                .values(**values, **{f"{parent_kind}_id": parent_id})
                .returning(*table.c)
            )
            row = conn.execute(stmt).mappings().one()
            self._audit(
                conn,
                actor.name,
                "create",
                kind,
                entity_id=row["id"],
                patient_id=pid,
                clinic_id=cid,
                after=_row_values(row, ("id", "deleted_at", "deleted_by")),
            )
            if then is not None:
                then(conn, row, actor.name)
            return row

    def _list_children(
        self,
        parent_kind: str,
        parent_id: int,
        kind: str,
        scope: Principal | None,
        include_deleted: bool,
        order: Sequence[str] = ("id",),
    ) -> list[RowMapping]:
        parent_id = _ident(parent_id, parent_kind)
        table = _KINDS[kind][0]
        stmt = (
            select(table)
            .where(table.c[f"{parent_kind}_id"] == parent_id)
            .order_by(*(table.c[c] for c in order))
        )
        if not include_deleted:
            stmt = stmt.where(table.c.deleted_at.is_(None))
        with self._read() as conn:
            if scope is not None:
                self._owner(conn, self._scope(conn, scope), parent_kind, parent_id)
            return list(conn.execute(stmt).mappings().all())

    def _set_child_deleted(
        self,
        kind: str,
        ident: int,
        deleted: bool,
        user: str | Principal,
        then: _AfterChange | None = None,
    ) -> RowMapping:
        """Soft-delete (or restore) a reading, audited; ``then(conn, row, who)`` runs in the
        same transaction when something changed."""
        ident = _ident(ident, kind)
        table, what = _KINDS[kind]
        with self._write() as conn:
            actor = self._actor(conn, user)
            pid, cid = self._owner(conn, actor, kind, ident)
            current = self._require(conn, table, ident, what)
            if deleted and current["deleted_at"] is not None:
                raise NotFoundError(f"No {what} with id {ident}")
            if deleted or current["deleted_at"] is not None:
                now = utcnow()
                values = (
                    {"deleted_at": now, "deleted_by": actor.name}
                    if deleted
                    else {"deleted_at": None, "deleted_by": None}
                )
                conn.execute(update(table).where(table.c.id == ident).values(**values))
                self._audit(
                    conn,
                    actor.name,
                    "delete" if deleted else "restore",
                    kind,
                    entity_id=ident,
                    patient_id=pid,
                    clinic_id=cid,
                    before={"deleted_at": current["deleted_at"]},
                    after={"deleted_at": values["deleted_at"]},
                )
                if then is not None:
                    then(conn, current, actor.name)
            return self._require(conn, table, ident, what)

    def add_pressure_pain_threshold(
        self,
        session_id: int,
        reading: model.PressurePainThresholdInput | Mapping[str, Any],
        user: str | Principal,
    ) -> PressurePainThreshold:
        """Record a pressure pain threshold (kg/cm2) taken in a session."""
        values = _fields(reading, model.validate_ppt_fields)
        row = self._add_child("session", session_id, "pressure_pain_threshold", values, user)
        return record_from_row(PressurePainThreshold, row)

    def list_pressure_pain_thresholds(
        self,
        session_id: int,
        *,
        include_deleted: bool = False,
        scope: Principal | None = None,
    ) -> list[PressurePainThreshold]:
        """A session's pressure pain thresholds in the order recorded (deleted ones hidden)."""
        rows = self._list_children(
            "session", session_id, "pressure_pain_threshold", scope, include_deleted
        )
        return [record_from_row(PressurePainThreshold, r) for r in rows]

    def delete_pressure_pain_threshold(
        self, reading_id: int, user: str | Principal
    ) -> PressurePainThreshold:
        """Remove a reading entered by mistake (soft deletion: :meth:`restore_...` undoes it)."""
        row = self._set_child_deleted("pressure_pain_threshold", reading_id, True, user)
        return record_from_row(PressurePainThreshold, row)

    def restore_pressure_pain_threshold(
        self, reading_id: int, user: str | Principal
    ) -> PressurePainThreshold:
        """Bring back a deleted pressure pain threshold reading."""
        row = self._set_child_deleted("pressure_pain_threshold", reading_id, False, user)
        return record_from_row(PressurePainThreshold, row)

    def add_adverse_event(
        self,
        session_id: int,
        event: model.AdverseEventInput | Mapping[str, Any],
        user: str | Principal,
    ) -> AdverseEvent:
        """Record an adverse event for a session."""
        values = _fields(event, model.validate_adverse_event_fields)
        row = self._add_child("session", session_id, "adverse_event", values, user)
        return record_from_row(AdverseEvent, row)

    def list_adverse_events(
        self,
        session_id: int,
        *,
        include_deleted: bool = False,
        scope: Principal | None = None,
    ) -> list[AdverseEvent]:
        """A session's adverse events (deleted ones hidden)."""
        rows = self._list_children("session", session_id, "adverse_event", scope, include_deleted)
        return [record_from_row(AdverseEvent, r) for r in rows]

    def delete_adverse_event(self, event_id: int, user: str | Principal) -> AdverseEvent:
        """Remove an adverse event entered by mistake (soft deletion)."""
        row = self._set_child_deleted("adverse_event", event_id, True, user)
        return record_from_row(AdverseEvent, row)

    def restore_adverse_event(self, event_id: int, user: str | Principal) -> AdverseEvent:
        """Bring back a deleted adverse event."""
        row = self._set_child_deleted("adverse_event", event_id, False, user)
        return record_from_row(AdverseEvent, row)

    def add_outcome(
        self,
        episode_id: int,
        outcome: model.OutcomeInput | Mapping[str, Any],
        user: str | Principal,
    ) -> Outcome:
        """Record an outcome instrument score for an episode (undoable)."""
        values = _fields(outcome, model.validate_outcome_fields)

        def log(conn: Connection, row: RowMapping, who: str) -> None:
            # Audited by _add_child: the change log only.
            self._log(conn, row, "create", None, values, who, None, kind="outcome")

        row = self._add_child("episode", episode_id, "outcome", values, user, then=log)
        return record_from_row(Outcome, row)

    def list_outcomes(
        self,
        episode_id: int,
        *,
        include_deleted: bool = False,
        scope: Principal | None = None,
    ) -> list[Outcome]:
        """An episode's outcome scores by date (deleted ones hidden)."""
        rows = self._list_children(
            "episode", episode_id, "outcome", scope, include_deleted, order=("date", "id")
        )
        return [record_from_row(Outcome, r) for r in rows]

    def _change_outcome(
        self,
        conn: Connection,
        current: RowLike,
        requested: Mapping[str, Any],
        who: str,
        owner: tuple[int, int],
        undo_of: int | None = None,
    ) -> bool:
        """Validate the merged score, write what changed, audit and log it; True if changed."""
        if current["deleted_at"] is not None:
            raise ValidationError({"score": "This score was removed: undo the removal first"})
        merged = {k: current[k] for k in _OUTCOME_FIELDS} | dict(requested)
        cleaned = model.validate_outcome_fields(merged)
        changed = {k: v for k, v in cleaned.items() if k in requested and v != current[k]}
        if not changed:
            return False
        conn.execute(update(_outcomes).where(_outcomes.c.id == current["id"]).values(**changed))
        before = {k: current[k] for k in changed}
        self._log(conn, current, "update", before, changed, who, owner, undo_of, kind="outcome")
        return True

    def update_outcome(
        self, outcome_id: int, fields: Mapping[str, Any], user: str | Principal
    ) -> Outcome:
        """Correct an outcome score (its score, date or instrument), validated as a whole."""
        unknown = [name for name in fields if name not in _OUTCOME_FIELDS]
        if unknown:
            raise ValidationError({name: f"Unknown field: {printable(name)}" for name in unknown})
        requested = dict(fields)  # validated merged with the stored score
        ident = _ident(outcome_id, "outcome")
        with self._write() as conn:
            actor = self._actor(conn, user)
            owner = self._owner(conn, actor, "outcome", ident)
            current = self._require(conn, _outcomes, ident, "outcome")
            self._change_outcome(conn, current, requested, actor.name, owner)
            return record_from_row(Outcome, self._require(conn, _outcomes, ident, "outcome"))

    def delete_outcome(self, outcome_id: int, user: str | Principal) -> Outcome:
        """Remove an outcome score entered by mistake (soft deletion; undoable)."""

        def log(conn: Connection, row: RowMapping, who: str) -> None:
            self._log(conn, row, "delete", None, None, who, None, kind="outcome")

        row = self._set_child_deleted("outcome", outcome_id, True, user, then=log)
        return record_from_row(Outcome, row)

    def restore_outcome(self, outcome_id: int, user: str | Principal) -> Outcome:
        """Bring back a deleted outcome score."""

        def log(conn: Connection, row: RowMapping, who: str) -> None:
            self._log(conn, row, "restore", None, None, who, None, kind="outcome")

        row = self._set_child_deleted("outcome", outcome_id, False, user, then=log)
        return record_from_row(Outcome, row)

    def undo_last_outcome(self, episode_id: int, user: str | Principal) -> UndoResult | None:
        """Revert the latest change to this episode's outcome scores not yet undone.

        Undoing an addition removes the score, undoing a removal brings it back, undoing a
        correction puts the earlier values back; calling it again walks further back.

        Returns
        -------
        UndoResult or None
            What was undone (for the status line) and the score it touched; None when
            nothing is left to undo.
        """
        episode_id = _ident(episode_id, "episode")
        undo = aliased(_outcome_changes)
        stmt = (
            select(_outcome_changes)
            .where(
                _outcome_changes.c.episode_id == episode_id,
                _outcome_changes.c.undo_of.is_(None),
                ~exists().where(undo.c.undo_of == _outcome_changes.c.id),
            )
            .order_by(_outcome_changes.c.id.desc())
            .limit(1)
        )
        with self._write() as conn:
            actor = self._actor(conn, user)
            self._owner(conn, actor, "episode", episode_id)
            change = conn.execute(stmt).mappings().first()
            if change is None:
                return None
            ident, action, who = change["outcome_id"], change["action"], actor.name
            owner = self._owner(conn, actor, "outcome", ident)
            current = self._require(conn, _outcomes, ident, "outcome")
            if action in ("create", "restore", "delete"):
                deleted = action != "delete"
                now = utcnow()
                values = (
                    {"deleted_at": now, "deleted_by": who}
                    if deleted
                    else {"deleted_at": None, "deleted_by": None}
                )
                conn.execute(update(_outcomes).where(_outcomes.c.id == ident).values(**values))
                self._log(
                    conn,
                    current,
                    "delete" if deleted else "restore",
                    {"deleted_at": current["deleted_at"]},
                    {"deleted_at": values["deleted_at"]},
                    who,
                    owner,
                    undo_of=change["id"],
                    kind="outcome",
                )
                verb = {"create": "adding", "restore": "restoring", "delete": "removing"}[action]
            else:
                before = json.loads(change["before"] or "{}")
                if current["deleted_at"] is not None or not self._change_outcome(
                    conn, current, before, who, owner, undo_of=change["id"]
                ):
                    # Nothing to put back any more; record the undo so the walk moves on.
                    self._log(
                        conn, current, "update", {}, {}, who, None, change["id"], kind="outcome"
                    )
                verb = "correcting"
            spec = model.OUTCOME_INSTRUMENTS[current["instrument"]]
            text = f"Undid {verb} the {spec.label} score of {current['date']:%d %b %Y}"
            return UndoResult(text, ident)

    # -- bulk ----------------------------------------------------------------------------------

    @overload
    def _bulk(
        self,
        table: Table,
        rows: Iterable[Mapping[str, Any]],
        validator: Callable[..., dict[str, Any]] | None,
        *,
        parent: str | None,
        stamp: Mapping[str, Any],
        returning: Literal[True],
        chunk_size: int,
        user: str,
        passthrough: tuple[str, ...] = (),
    ) -> list[int]: ...

    @overload
    def _bulk(
        self,
        table: Table,
        rows: Iterable[Mapping[str, Any]],
        validator: Callable[..., dict[str, Any]] | None,
        *,
        parent: str | None,
        stamp: Mapping[str, Any],
        returning: Literal[False],
        chunk_size: int,
        user: str,
        passthrough: tuple[str, ...] = (),
    ) -> int: ...

    def _bulk(
        self,
        table: Table,
        rows: Iterable[Mapping[str, Any]],
        validator: Callable[..., dict[str, Any]] | None,
        *,
        parent: str | None,
        stamp: Mapping[str, Any],
        returning: bool,
        chunk_size: int,
        user: str,
        passthrough: tuple[str, ...] = (),
    ) -> list[int] | int:
        """Insert many rows in one transaction with executemany, in chunks.

        Rows are validated chunk by chunk; a bad row rolls back everything, so an import
        either lands whole or not at all. The error names the row (0-based). One audit row
        records the import (how many rows, into which table), not one per row.
        """
        if "created_at" in stamp:
            passthrough = (*passthrough, "created_at", "created_by")
        try:
            return self._bulk_rows(
                table, rows, validator, parent, passthrough, stamp, returning, chunk_size, user
            )
        except IntegrityError as exc:
            raise ValidationError(
                {"rows": f"The database rejected the import: {exc.orig}"}
            ) from None

    def _bulk_rows(
        self,
        table: Table,
        rows: Iterable[Mapping[str, Any]],
        validator: Callable[..., dict[str, Any]] | None,
        parent: str | None,
        passthrough: tuple[str, ...],
        stamp: Mapping[str, Any],
        returning: bool,
        chunk_size: int,
        user: str,
    ) -> list[int] | int:
        ids: list[int] = []
        count = 0
        with self._write() as conn:
            for chunk in _chunks(rows, chunk_size):
                cleaned: list[Mapping[str, Any]] = []
                for number, raw in enumerate(chunk, start=count):
                    if validator is None:
                        # Trusted rows go in as they are; the database checks keys and types.
                        cleaned.append(raw)
                        continue
                    fields = dict(raw)
                    extra = {k: fields.pop(k) for k in (parent, *passthrough) if k in fields}
                    if parent is not None:
                        extra[parent] = _int_id(extra.get(parent), parent)
                    if "clinic_id" in extra:
                        extra["clinic_id"] = _int_id(extra["clinic_id"], "clinic_id")
                    try:
                        values = validator(fields) if validator is not None else fields
                    except ValidationError as exc:
                        errors = {k: f"Row {number}: {v}" for k, v in exc.errors.items()}
                        raise ValidationError(errors) from None
                    cleaned.append({**values, **extra})
                if returning:
                    stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
                    stamped = [{**stamp, **row} for row in cleaned]
                    ids.extend(conn.execute(stmt, stamped).scalars().all())
                else:
                    _executemany(conn, table, cleaned, stamp)
                count += len(cleaned)
            if count:
                after: dict[str, Any] = {"rows": count}
                if ids:
                    after |= {"first_id": min(ids), "last_id": max(ids)}
                self._audit(conn, user, "import", table.name, after=after)
        return ids if returning else count

    def bulk_insert_patients(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        user: str = "import",
        clinic_id: int | None = None,
    ) -> list[int]:
        """Insert patients (code, sex, birth_year; optionally ``clinic_id``); returns their ids.

        Rows without ``clinic_id`` go into ``clinic_id``, by default the first clinic.
        """
        who = user_name(user)
        with self._read() as conn:
            default = self._default_clinic(conn, _Actor(who, None), clinic_id)
        stamp = {"created_at": utcnow(), "created_by": who, "clinic_id": default}
        result = self._bulk(
            _patients,
            rows,
            model.validate_patient_fields,
            parent=None,
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
            user=who,
            passthrough=("clinic_id",),
        )
        return result

    def bulk_insert_episodes(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> list[int]:
        """Insert episodes (rows carry ``patient_id``); returns their ids in input order."""
        stamp = {"created_at": utcnow(), "created_by": user_name(user)}
        result = self._bulk(
            _episodes,
            rows,
            model.validate_episode_fields,
            parent="patient_id",
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
            user=user_name(user),
        )
        return result

    def bulk_insert_sessions(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> list[int]:
        """Insert sessions (rows carry ``episode_id``); returns their ids in input order."""
        stamp = {"created_at": utcnow(), "created_by": user_name(user)}
        result = self._bulk(
            _sessions,
            rows,
            model.validate_session_fields,
            parent="episode_id",
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
            user=user_name(user),
        )
        return result

    def bulk_insert_marks(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        user: str = "import",
        validate: bool = True,
        chunk_size: int = 20_000,
    ) -> int:
        """Insert many marks (rows carry ``session_id``); returns how many.

        Bulk-inserted marks are not in the change log (an import is not undoable mark by
        mark). ``validate=False`` skips the per-row checks for trusted generated data (rows of
        clean Python values; left-out columns take their defaults); the database's own
        constraints still apply.
        """
        stamp = {"created_at": utcnow(), "created_by": user_name(user)}
        validator = model.validate_mark_fields if validate else None
        result = self._bulk(
            _marks,
            rows,
            validator,
            parent="session_id",
            stamp=stamp,
            returning=False,
            chunk_size=chunk_size,
            user=user_name(user),
        )
        return result

    def bulk_insert_outcomes(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> int:
        """Insert outcome scores (rows carry ``episode_id``); returns how many."""
        result = self._bulk(
            _outcomes,
            rows,
            model.validate_outcome_fields,
            parent="episode_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
            user=user_name(user),
        )
        return result

    def bulk_insert_pressure_pain_thresholds(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> int:
        """Insert pressure pain thresholds (rows carry ``session_id``); returns how many."""
        result = self._bulk(
            _ppts,
            rows,
            model.validate_ppt_fields,
            parent="session_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
            user=user_name(user),
        )
        return result

    def bulk_insert_adverse_events(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> int:
        """Insert adverse events (rows carry ``session_id``); returns how many."""
        result = self._bulk(
            _adverse,
            rows,
            model.validate_adverse_event_fields,
            parent="session_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
            user=user_name(user),
        )
        return result

    def counts(self) -> dict[str, int]:
        """Row counts per table (not counting deleted rows), for status lines and tests."""
        tables = {
            "patients": (_patients, None),
            "episodes": (_episodes, None),
            "sessions": (_sessions, None),
            "pressure_pain_thresholds": (_ppts, _ppts.c.deleted_at),
            "adverse_events": (_adverse, _adverse.c.deleted_at),
            "outcome_measures": (_outcomes, _outcomes.c.deleted_at),
            "marks": (_marks, _marks.c.deleted_at),
        }
        result = {}
        with self._read() as conn:
            for name, (table, deleted) in tables.items():
                stmt = select(func.count()).select_from(table)
                if deleted is not None:
                    stmt = stmt.where(deleted.is_(None))
                result[name] = conn.execute(stmt).scalar_one()
        return result


def open_store(url: str | URL | None = None, *, secret: Secret | bytes | None = None) -> Store:
    """Open (and migrate) the store at ``url``, default :func:`default_database_url`."""
    return Store(url, secret=secret)
