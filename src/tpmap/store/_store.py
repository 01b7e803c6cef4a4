"""The Store: every read and write of tpmap's clinical record.

Each public method opens its own connection from the engine and commits before it returns,
so a Store may be shared between threads (the web page calls it from a worker thread).
Every mutating method validates through :mod:`tpmap.model` first: bad input raises
:class:`~tpmap.model.ValidationError` and leaves the database unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, case, delete, exists, func, insert, select, update
from sqlalchemy.engine import URL, Connection, RowMapping, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from tpmap import model
from tpmap.model import ValidationError
from tpmap.store import _migrate
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
    record_from_row,
)
from tpmap.store.schema import (
    AdverseEventRow,
    EpisodeRow,
    MarkChangeRow,
    MarkRow,
    OutcomeMeasureRow,
    PatientRow,
    PressurePainThresholdRow,
    SessionRow,
    utcnow,
)

__all__ = ["Store", "open_store"]

_patients: Table = PatientRow.__table__  # type: ignore[assignment]
_episodes: Table = EpisodeRow.__table__  # type: ignore[assignment]
_sessions: Table = SessionRow.__table__  # type: ignore[assignment]
_marks: Table = MarkRow.__table__  # type: ignore[assignment]
_changes: Table = MarkChangeRow.__table__  # type: ignore[assignment]
_ppts: Table = PressurePainThresholdRow.__table__  # type: ignore[assignment]
_adverse: Table = AdverseEventRow.__table__  # type: ignore[assignment]
_outcomes: Table = OutcomeMeasureRow.__table__  # type: ignore[assignment]

# Fields of a mark that a change can touch, i.e. everything MarkInput carries.
_MARK_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(model.MarkInput))
_MARK_SELECT = select(*_marks.c, _sessions.c.date.label("session_date")).join(
    _sessions, _sessions.c.id == _marks.c.session_id
)
_CHUNK = 10_000

_I = TypeVar("_I")


def _user(user: str) -> str:
    if not isinstance(user, str) or not user.strip():
        raise ValidationError({"user": "Sign in first: every change records who made it"})
    return user.strip()[:100]


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
    return None if values is None else json.dumps(dict(values), sort_keys=True)


def _muscle_words(row: Mapping[str, Any]) -> str:
    return f"{row['side']} {str(row['muscle']).replace('_', ' ')}"


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
    rows: list[Mapping[str, Any]],
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
            with cursor.copy(f"COPY {target} FROM STDIN") as stream:  # type: ignore[attr-defined]
                for values in params:
                    stream.write_row(values)
        else:
            cursor.executemany(str(compiled), params)
    except dialect.loaded_dbapi.IntegrityError as exc:
        # The driver's own exception: SQLAlchemy does not wrap a raw cursor's errors.
        raise ValidationError({"rows": f"The database rejected the import: {exc}"}) from None
    finally:
        cursor.close()


class Store:
    """The tpmap database: patients, episodes, sessions, marks and what came of them.

    Parameters
    ----------
    url
        SQLAlchemy URL; default :func:`default_database_url`.
    migrate
        Apply the shipped migrations on open (idempotent).
    """

    def __init__(self, url: str | URL | None = None, *, migrate: bool = True) -> None:
        self.url: URL = make_url(url if url is not None else default_database_url())
        self._engine: Engine = make_engine(self.url)
        # Same pool, but marked so that SQLite begins write transactions IMMEDIATE.
        self._writer: Engine = self._engine.execution_options(**{WRITE_OPTION: True})
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

    # -- patients ------------------------------------------------------------------------------

    def create_patient(self, patient: model.PatientInput | Mapping[str, Any], user: str) -> Patient:
        """Create a patient; the code must be new (compared case-insensitively)."""
        values = _fields(patient, model.validate_patient_fields)
        who = _user(user)
        duplicate = {"code": f"Patient code {values['code']} is already in use"}
        try:
            with self._write() as conn:
                taken = conn.execute(
                    select(_patients.c.code).where(
                        func.lower(_patients.c.code) == values["code"].lower()
                    )
                ).scalar()
                if taken is not None:
                    raise ValidationError({"code": f"Patient code {taken} is already in use"})
                row = (
                    conn.execute(
                        insert(_patients)
                        .values(**values, created_at=utcnow(), created_by=who)
                        .returning(*_patients.c)
                    )
                    .mappings()
                    .one()
                )
        except IntegrityError:
            # Another writer took the code between our check and our insert (PostgreSQL).
            raise ValidationError(duplicate) from None
        return record_from_row(Patient, row)

    def get_patient(self, patient_id: int) -> Patient:
        """The patient with this id (NotFoundError if none)."""
        with self._read() as conn:
            return record_from_row(Patient, self._require(conn, _patients, patient_id, "patient"))

    def patient_by_code(self, code: str) -> Patient | None:
        """The patient with this code (case-insensitive), or None."""
        stmt = select(_patients).where(func.lower(_patients.c.code) == code.strip().lower())
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else record_from_row(Patient, row)

    def find_patients(self, query: str = "", limit: int = 20) -> list[Patient]:
        """Patients whose code contains ``query`` (case-insensitive), prefix matches first.

        An empty query lists the most recently created patients.
        """
        text = (query or "").strip().lower()
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
            return [record_from_row(Patient, r) for r in conn.execute(stmt).mappings()]

    # -- episodes ------------------------------------------------------------------------------

    def create_episode(
        self, patient_id: int, episode: model.EpisodeInput | Mapping[str, Any], user: str
    ) -> Episode:
        """Open an episode of care for a patient."""
        values = _fields(episode, model.validate_episode_fields)
        who = _user(user)
        with self._write() as conn:
            self._require(conn, _patients, patient_id, "patient")
            row = (
                conn.execute(
                    insert(_episodes)
                    .values(**values, patient_id=patient_id, created_at=utcnow(), created_by=who)
                    .returning(*_episodes.c)
                )
                .mappings()
                .one()
            )
        return record_from_row(Episode, row)

    def get_episode(self, episode_id: int) -> Episode:
        """The episode with this id."""
        with self._read() as conn:
            return record_from_row(Episode, self._require(conn, _episodes, episode_id, "episode"))

    def list_episodes(self, patient_id: int) -> list[Episode]:
        """A patient's episodes, oldest first."""
        stmt = (
            select(_episodes)
            .where(_episodes.c.patient_id == patient_id)
            .order_by(_episodes.c.start_date, _episodes.c.id)
        )
        with self._read() as conn:
            return [record_from_row(Episode, r) for r in conn.execute(stmt).mappings()]

    # -- sessions ------------------------------------------------------------------------------

    def create_session(
        self, episode_id: int, session: model.SessionInput | Mapping[str, Any], user: str
    ) -> SessionRecord:
        """Record a treatment session in an episode."""
        values = _fields(session, model.validate_session_fields)
        who = _user(user)
        with self._write() as conn:
            self._require(conn, _episodes, episode_id, "episode")
            row = (
                conn.execute(
                    insert(_sessions)
                    .values(**values, episode_id=episode_id, created_at=utcnow(), created_by=who)
                    .returning(*_sessions.c)
                )
                .mappings()
                .one()
            )
        return record_from_row(SessionRecord, row)

    def update_session(
        self, session_id: int, fields: Mapping[str, Any], user: str
    ) -> SessionRecord:
        """Change some fields of a session (e.g. NPRS after treatment)."""
        changes = model.validate_session_fields(fields, partial=True)
        who = _user(user)
        with self._write() as conn:
            self._lock_session(conn, session_id)
            if changes:
                conn.execute(
                    update(_sessions)
                    .where(_sessions.c.id == session_id)
                    .values(**changes, updated_at=utcnow(), updated_by=who)
                )
            row = self._require(conn, _sessions, session_id, "session")
        return record_from_row(SessionRecord, row)

    def get_session(self, session_id: int) -> SessionRecord:
        """The session with this id."""
        with self._read() as conn:
            row = self._require(conn, _sessions, session_id, "session")
        return record_from_row(SessionRecord, row)

    def list_sessions(self, episode_id: int) -> list[SessionRecord]:
        """An episode's sessions, oldest first."""
        stmt = (
            select(_sessions)
            .where(_sessions.c.episode_id == episode_id)
            .order_by(_sessions.c.date, _sessions.c.id)
        )
        with self._read() as conn:
            return [record_from_row(SessionRecord, r) for r in conn.execute(stmt).mappings()]

    # -- marks ---------------------------------------------------------------------------------

    def _mark_row(self, conn: Connection, mark_id: int) -> RowMapping:
        return self._one(conn, _MARK_SELECT.where(_marks.c.id == mark_id), "mark", mark_id)

    def _log(
        self,
        conn: Connection,
        mark: Mapping[str, Any],
        action: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        who: str,
        undo_of: int | None = None,
    ) -> None:
        conn.execute(
            insert(_changes).values(
                mark_id=mark["id"],
                session_id=mark["session_id"],
                action=action,
                before=_json(before),
                after=_json(after),
                at=utcnow(),
                user=who,
                undo_of=undo_of,
            )
        )

    def add_mark(
        self, session_id: int, mark: model.MarkInput | Mapping[str, Any], user: str
    ) -> Mark:
        """Store a needled point in a session; committed when this returns."""
        values = _fields(mark, model.validate_mark_fields)
        who = _user(user)
        with self._write() as conn:
            self._lock_session(conn, session_id)
            mark_id = conn.execute(
                insert(_marks)
                .values(**values, session_id=session_id, created_at=utcnow(), created_by=who)
                .returning(_marks.c.id)
            ).scalar_one()
            row = self._mark_row(conn, mark_id)
            self._log(conn, row, "create", None, values, who)
        return record_from_row(Mark, row)

    def _locked_mark(self, conn: Connection, mark_id: int) -> RowMapping:
        session_id = self._mark_row(conn, mark_id)["session_id"]
        self._lock_session(conn, session_id)
        # Re-read under the lock: another writer may have changed it meanwhile.
        return self._mark_row(conn, mark_id)

    def _change_mark(
        self,
        conn: Connection,
        current: Mapping[str, Any],
        requested: Mapping[str, Any],
        action: str,
        who: str,
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
        self._log(conn, current, action, before, changed, who, undo_of)
        return True

    @staticmethod
    def _not_deleted(row: Mapping[str, Any]) -> None:
        if row["deleted_at"] is not None:
            raise ValidationError({"mark": "This mark was deleted: restore it before changing it"})

    def update_mark(self, mark_id: int, fields: Mapping[str, Any], user: str) -> Mark:
        """Change some fields of a mark (validated together with the rest of the mark).

        Setting ``muscle`` by hand marks the muscle as overridden, unless ``fields`` says
        otherwise. Use :meth:`move_mark` for a new position.
        """
        unknown = [name for name in fields if name not in _MARK_FIELDS]
        if unknown:
            raise ValidationError({name: f"Unknown field: {name}" for name in unknown})
        who = _user(user)
        # Check the fields on their own first so that messages name what the user typed.
        requested = model.validate_mark_fields(fields, partial=True)
        with self._write() as conn:
            current = self._locked_mark(conn, mark_id)
            self._not_deleted(current)
            if "muscle" in requested and "muscle_overridden" not in requested:
                requested["muscle_overridden"] = requested["muscle"] != current["muscle"] or bool(
                    current["muscle_overridden"]
                )
            self._change_mark(conn, current, requested, "update", who)
            row = self._mark_row(conn, mark_id)
        return record_from_row(Mark, row)

    def move_mark(
        self,
        mark_id: int,
        x: float,
        y: float,
        muscle: str,
        side: str,
        layer: str,
        user: str,
        *,
        view: str | None = None,
    ) -> Mark:
        """Move a mark; the muscle comes from the atlas again (no longer overridden)."""
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
        who = _user(user)
        model.validate_mark_fields(requested, partial=True)
        with self._write() as conn:
            current = self._locked_mark(conn, mark_id)
            self._not_deleted(current)
            self._change_mark(conn, current, requested, "move", who)
            row = self._mark_row(conn, mark_id)
        return record_from_row(Mark, row)

    def _set_deleted(
        self,
        conn: Connection,
        current: Mapping[str, Any],
        deleted: bool,
        who: str,
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
        self._log(conn, current, "delete" if deleted else "restore", before, after, who, undo_of)
        return True

    def delete_mark(self, mark_id: int, user: str) -> Mark:
        """Hide a mark (soft deletion: it stays in the database and the change log)."""
        who = _user(user)
        with self._write() as conn:
            self._set_deleted(conn, self._locked_mark(conn, mark_id), True, who)
            row = self._mark_row(conn, mark_id)
        return record_from_row(Mark, row)

    def restore_mark(self, mark_id: int, user: str) -> Mark:
        """Bring back a deleted mark (recorded as an update: ``updated_at``/``updated_by``)."""
        who = _user(user)
        with self._write() as conn:
            self._set_deleted(conn, self._locked_mark(conn, mark_id), False, who)
            row = self._mark_row(conn, mark_id)
        return record_from_row(Mark, row)

    def undo_last(self, session_id: int, user: str) -> str | None:
        """Revert the latest change to this session's marks that is not yet undone.

        Undoing an addition deletes the mark, undoing a deletion restores it, undoing an edit or
        a move puts the earlier values back. Calling it again walks further back.

        Returns
        -------
        str or None
            What was undone, for the page's status line; None when nothing is left to undo.
        """
        who = _user(user)
        undo = aliased(_changes)
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
        with self._write() as conn:
            self._lock_session(conn, session_id)
            change = conn.execute(stmt).mappings().first()
            if change is None:
                return None
            mark = self._mark_row(conn, change["mark_id"])
            action, words = change["action"], _muscle_words(mark)
            if action in ("create", "restore"):
                self._set_deleted(conn, mark, True, who, undo_of=change["id"])
                verb = "adding" if action == "create" else "restoring"
            elif action == "delete":
                self._set_deleted(conn, mark, False, who, undo_of=change["id"])
                verb = "deleting"
            else:
                before = json.loads(change["before"] or "{}")
                if not self._change_mark(conn, mark, before, action, who, undo_of=change["id"]):
                    # Nothing differs any more; still record the undo so the walk moves on.
                    self._log(conn, mark, action, {}, {}, who, undo_of=change["id"])
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

    def get_mark(self, mark_id: int) -> Mark:
        """The mark with this id, deleted or not."""
        with self._read() as conn:
            return record_from_row(Mark, self._mark_row(conn, mark_id))

    def session_marks(self, session_id: int, *, include_deleted: bool = False) -> list[Mark]:
        """The marks of one session in the order they were placed (deleted ones hidden)."""
        stmt = _MARK_SELECT.where(_marks.c.session_id == session_id).order_by(_marks.c.id)
        if not include_deleted:
            stmt = stmt.where(_marks.c.deleted_at.is_(None))
        with self._read() as conn:
            return [record_from_row(Mark, r) for r in conn.execute(stmt).mappings()]

    def episode_marks(self, episode_id: int) -> list[Mark]:
        """All visible marks of an episode's sessions, oldest session first.

        Each mark carries ``session_date``, so the page can draw earlier sessions faded.
        """
        stmt = _MARK_SELECT.where(
            _sessions.c.episode_id == episode_id, _marks.c.deleted_at.is_(None)
        ).order_by(_sessions.c.date, _sessions.c.id, _marks.c.id)
        with self._read() as conn:
            return [record_from_row(Mark, r) for r in conn.execute(stmt).mappings()]

    def mark_history(self, mark_id: int) -> list[MarkChange]:
        """The change log of one mark, oldest first."""
        stmt = select(_changes).where(_changes.c.mark_id == mark_id).order_by(_changes.c.id)
        with self._read() as conn:
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

    # -- session readings: pressure pain thresholds and adverse events --------------------------

    def _add_child(
        self,
        parent: Table,
        parent_id: int,
        parent_name: str,
        table: Table,
        values: Mapping[str, Any],
    ) -> RowMapping:
        with self._write() as conn:
            self._require(conn, parent, parent_id, parent_name)
            stmt = (
                insert(table)
                .values(**values, **{f"{parent_name}_id": parent_id})
                .returning(*table.c)
            )
            return conn.execute(stmt).mappings().one()

    def _list_children(self, table: Table, column: str, parent_id: int) -> list[RowMapping]:
        stmt = select(table).where(table.c[column] == parent_id).order_by(table.c.id)
        with self._read() as conn:
            return list(conn.execute(stmt).mappings().all())

    def _delete_row(self, table: Table, ident: int, what: str, user: str) -> None:
        _user(user)
        with self._write() as conn:
            if conn.execute(delete(table).where(table.c.id == ident)).rowcount == 0:
                raise NotFoundError(f"No {what} with id {ident}")

    def add_pressure_pain_threshold(
        self,
        session_id: int,
        reading: model.PressurePainThresholdInput | Mapping[str, Any],
        user: str,
    ) -> PressurePainThreshold:
        """Record a pressure pain threshold (kg/cm2) taken in a session."""
        values = _fields(reading, model.validate_ppt_fields)
        _user(user)
        row = self._add_child(_sessions, session_id, "session", _ppts, values)
        return record_from_row(PressurePainThreshold, row)

    def list_pressure_pain_thresholds(self, session_id: int) -> list[PressurePainThreshold]:
        """A session's pressure pain thresholds in the order recorded."""
        rows = self._list_children(_ppts, "session_id", session_id)
        return [record_from_row(PressurePainThreshold, r) for r in rows]

    def delete_pressure_pain_threshold(self, reading_id: int, user: str) -> None:
        """Remove a pressure pain threshold reading entered by mistake."""
        self._delete_row(_ppts, reading_id, "pressure pain threshold", user)

    def add_adverse_event(
        self, session_id: int, event: model.AdverseEventInput | Mapping[str, Any], user: str
    ) -> AdverseEvent:
        """Record an adverse event for a session."""
        values = _fields(event, model.validate_adverse_event_fields)
        _user(user)
        return record_from_row(
            AdverseEvent, self._add_child(_sessions, session_id, "session", _adverse, values)
        )

    def list_adverse_events(self, session_id: int) -> list[AdverseEvent]:
        """A session's adverse events."""
        rows = self._list_children(_adverse, "session_id", session_id)
        return [record_from_row(AdverseEvent, r) for r in rows]

    def delete_adverse_event(self, event_id: int, user: str) -> None:
        """Remove an adverse event entered by mistake."""
        self._delete_row(_adverse, event_id, "adverse event", user)

    # -- outcomes ------------------------------------------------------------------------------

    def add_outcome(
        self, episode_id: int, outcome: model.OutcomeInput | Mapping[str, Any], user: str
    ) -> Outcome:
        """Record an outcome instrument score for an episode."""
        values = _fields(outcome, model.validate_outcome_fields)
        _user(user)
        return record_from_row(
            Outcome, self._add_child(_episodes, episode_id, "episode", _outcomes, values)
        )

    def list_outcomes(self, episode_id: int) -> list[Outcome]:
        """An episode's outcome scores by date."""
        stmt = (
            select(_outcomes)
            .where(_outcomes.c.episode_id == episode_id)
            .order_by(_outcomes.c.date, _outcomes.c.id)
        )
        with self._read() as conn:
            return [record_from_row(Outcome, r) for r in conn.execute(stmt).mappings()]

    # -- bulk ----------------------------------------------------------------------------------

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
    ) -> list[int] | int:
        """Insert many rows in one transaction with executemany, in chunks.

        Rows are validated chunk by chunk; a bad row rolls back everything, so an import
        either lands whole or not at all. The error names the row (0-based).
        """
        passthrough = ("created_at", "created_by") if "created_at" in stamp else ()
        try:
            return self._bulk_rows(
                table, rows, validator, parent, passthrough, stamp, returning, chunk_size
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
    ) -> list[int] | int:
        ids: list[int] = []
        count = 0
        with self._write() as conn:
            for chunk in _chunks(rows, chunk_size):
                cleaned: list[dict[str, Any]] = []
                for number, raw in enumerate(chunk, start=count):
                    if validator is None:
                        # Trusted rows go in as they are; the database checks keys and types.
                        cleaned.append(raw)  # type: ignore[arg-type]
                        continue
                    fields = dict(raw)
                    extra = {k: fields.pop(k) for k in (parent, *passthrough) if k in fields}
                    if parent is not None:
                        extra[parent] = _int_id(extra.get(parent), parent)
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
        return ids if returning else count

    def bulk_insert_patients(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> list[int]:
        """Insert patients (code, sex, birth_year); returns their ids in input order."""
        stamp = {"created_at": utcnow(), "created_by": _user(user)}
        result = self._bulk(
            _patients,
            rows,
            model.validate_patient_fields,
            parent=None,
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

    def bulk_insert_episodes(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> list[int]:
        """Insert episodes (rows carry ``patient_id``); returns their ids in input order."""
        stamp = {"created_at": utcnow(), "created_by": _user(user)}
        result = self._bulk(
            _episodes,
            rows,
            model.validate_episode_fields,
            parent="patient_id",
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

    def bulk_insert_sessions(
        self, rows: Iterable[Mapping[str, Any]], *, user: str = "import"
    ) -> list[int]:
        """Insert sessions (rows carry ``episode_id``); returns their ids in input order."""
        stamp = {"created_at": utcnow(), "created_by": _user(user)}
        result = self._bulk(
            _sessions,
            rows,
            model.validate_session_fields,
            parent="episode_id",
            stamp=stamp,
            returning=True,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

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
        stamp = {"created_at": utcnow(), "created_by": _user(user)}
        validator = model.validate_mark_fields if validate else None
        result = self._bulk(
            _marks,
            rows,
            validator,
            parent="session_id",
            stamp=stamp,
            returning=False,
            chunk_size=chunk_size,
        )
        return result  # type: ignore[return-value]

    def bulk_insert_outcomes(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert outcome scores (rows carry ``episode_id``); returns how many."""
        result = self._bulk(
            _outcomes,
            rows,
            model.validate_outcome_fields,
            parent="episode_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

    def bulk_insert_pressure_pain_thresholds(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert pressure pain thresholds (rows carry ``session_id``); returns how many."""
        result = self._bulk(
            _ppts,
            rows,
            model.validate_ppt_fields,
            parent="session_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

    def bulk_insert_adverse_events(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert adverse events (rows carry ``session_id``); returns how many."""
        result = self._bulk(
            _adverse,
            rows,
            model.validate_adverse_event_fields,
            parent="session_id",
            stamp={},
            returning=False,
            chunk_size=_CHUNK,
        )
        return result  # type: ignore[return-value]

    def counts(self) -> dict[str, int]:
        """Row counts per table (marks: not deleted), for status lines and tests."""
        tables = {
            "patients": _patients,
            "episodes": _episodes,
            "sessions": _sessions,
            "pressure_pain_thresholds": _ppts,
            "adverse_events": _adverse,
            "outcome_measures": _outcomes,
        }
        with self._read() as conn:
            result = {
                name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for name, t in tables.items()
            }
            result["marks"] = conn.execute(
                select(func.count()).select_from(_marks).where(_marks.c.deleted_at.is_(None))
            ).scalar_one()
        return result


def open_store(url: str | URL | None = None) -> Store:
    """Open (and migrate) the store at ``url``, default :func:`default_database_url`."""
    return Store(url)
