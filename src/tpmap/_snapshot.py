"""A columnar (Parquet) snapshot of the marks table, refreshed incrementally from the database.

The research page and notebooks read every mark at once. Reading 10^7 rows through a database
driver takes minutes; reading them from Parquet straight into categoricals takes about a
second. This module keeps such a copy and brings it up to date by reading from the database
only the marks that changed since the last refresh.

Layout
------
A snapshot is a directory with ``state.json`` and one or more Parquet *parts*. Each part holds
marks sorted by ``id``, joined with their session (``session_date``, ``clinician``,
``episode_id``) and episode (``patient_id``), with a ``deleted`` flag: soft-deleted marks stay
in the snapshot as tombstones so that a later restore, or the count of excluded marks, needs
no database read. A row of a later part replaces the row with the same ``id`` in earlier parts.
A refresh appends a part; when the parts hold more than a few percent of the base (or there
are many) they are compacted into one new base.

What a refresh reads
--------------------
Marks with ``id`` above the snapshot's highest id, and marks that may have changed since the
snapshot's high-water mark: ``created_at``, ``updated_at`` or ``deleted_at`` at or after it,
marks named in ``mark_changes`` entries newer than the last one seen (belt and braces: a
restore also stamps ``updated_at``, but the log is the record of every change), and every mark
of a session edited since (its date or clinician may have changed). The high-water mark is
the time the refresh began less :data:`SAFETY_MARGIN` (PostgreSQL), so a transaction that was
still open during a refresh (its rows not yet visible, or an id below the highest one seen) is
picked up by the next one; on SQLite, whose writers are serialised, ids suffice
(:data:`SERIAL_WRITER_MARGIN`). Re-reading a row twice is harmless: it replaces itself. Marks
changed behind the store's back (raw SQL that neither logs the change nor sets ``updated_at``)
are not seen: ``refresh(rebuild=True)`` reads everything again.

A snapshot that does not match its database any more (the database was replaced or restored
from an older backup: ids went backwards, or the newest mark's ``created_at`` differs) is
rebuilt from scratch, as is one written by another snapshot format version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import (
    Engine,
    Integer,
    Select,
    Table,
    cast,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union,
)
from sqlalchemy.engine import URL, Connection, make_url

from tpmap.store.schema import EpisodeRow, MarkChangeRow, MarkRow, SessionRow

__all__ = [
    "DICTIONARY_COLUMNS",
    "SAFETY_MARGIN",
    "SERIAL_WRITER_MARGIN",
    "SNAPSHOT_SCHEMA",
    "SNAPSHOT_VERSION",
    "MarkSnapshot",
    "RefreshStats",
    "default_snapshot_dir",
    "live_rows",
    "merge_parts",
    "read_marks_table",
]

#: Bumped whenever the Parquet layout changes; an older snapshot is rebuilt.
SNAPSHOT_VERSION = 1
#: How far back before a refresh's start the next refresh looks for changed rows, on backends
#: with concurrent writers (PostgreSQL: ids come from a sequence, so a transaction still open
#: during a refresh can commit ids below the highest one seen).
SAFETY_MARGIN = dt.timedelta(minutes=5)
#: The same for SQLite, whose writers are serialised: a transaction committing after a
#: refresh's read has higher mark and change-log ids than any the refresh saw, so ids alone
#: find it and no re-read window is needed (nor wanted: it would re-read a fresh bulk import).
SERIAL_WRITER_MARGIN = dt.timedelta(0)
#: Rows fetched from the database per batch (one Parquet row group per batch).
FETCH_ROWS = 250_000
#: Compact the parts into a new base when the deltas exceed this share of the base rows...
COMPACT_SHARE = 0.02
#: ... or when there are more parts than this.
COMPACT_PARTS = 8

_m: Table = MarkRow.__table__  # type: ignore[assignment]
_s: Table = SessionRow.__table__  # type: ignore[assignment]
_e: Table = EpisodeRow.__table__  # type: ignore[assignment]
_c: Table = MarkChangeRow.__table__  # type: ignore[assignment]

_DICT = pa.dictionary(pa.int32(), pa.string())
#: String columns stored dictionary-encoded (they become pandas categoricals).
DICTIONARY_COLUMNS: tuple[str, ...] = (
    "view",
    "layer",
    "muscle",
    "side",
    "technique",
    "ltr_grade",
    "tp_status",
    "clinician",
    "atlas_version",
)
#: Columns of a snapshot part, in order.
SNAPSHOT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("patient_id", pa.int32()),
        ("episode_id", pa.int32()),
        ("session_id", pa.int32()),
        ("view", _DICT),
        ("layer", _DICT),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("muscle", _DICT),
        ("side", _DICT),
        ("technique", _DICT),
        ("ltr_grade", _DICT),
        ("tp_status", _DICT),
        ("session_date", pa.int32()),
        ("clinician", _DICT),
        ("atlas_version", _DICT),
        ("deleted", pa.bool_()),
    ]
)
_EPOCH = dt.date(1970, 1, 1)


# --------------------------------------------------------------------------------------------
# Reading marks from the database
# --------------------------------------------------------------------------------------------


def _session_days(dialect: str) -> Any:
    """SQL for the session date as days since 1970 (an integer, no Python date objects)."""
    if dialect == "sqlite":
        # julianday of a date is a whole day plus .5: the difference is exact.
        return cast(func.julianday(_s.c.date) - 2440587.5, Integer)
    if dialect == "postgresql":
        return type_coerce(_s.c.date - literal_column("DATE '1970-01-01'"), Integer)
    return _s.c.date  # converted in Python (other backends are not tuned)


def _marks_select(dialect: str) -> Select[Any]:
    """The joined mark rows, in :data:`SNAPSHOT_SCHEMA` column order."""
    return (
        select(
            _m.c.id,
            _e.c.patient_id,
            _s.c.episode_id,
            _m.c.session_id,
            _m.c.view,
            _m.c.layer,
            _m.c.x,
            _m.c.y,
            _m.c.muscle,
            _m.c.side,
            _m.c.technique,
            _m.c.ltr_grade,
            _m.c.tp_status,
            _session_days(dialect).label("session_date"),
            _s.c.clinician,
            _m.c.atlas_version,
            _m.c.deleted_at.is_not(None).label("deleted"),
        )
        .select_from(_m.join(_s, _s.c.id == _m.c.session_id).join(_e, _e.c.id == _s.c.episode_id))
        .order_by(_m.c.id)
    )


def _to_batch(rows: list[Any]) -> pa.Table:
    """Arrow table of :data:`SNAPSHOT_SCHEMA` from database rows (tuples in that order)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(SNAPSHOT_SCHEMA)
    arrays: list[pa.Array] = []
    for values, schema_field in zip(columns, SNAPSHOT_SCHEMA, strict=True):
        kind = schema_field.type
        if pa.types.is_dictionary(kind):
            arrays.append(pa.array(values, pa.string()).dictionary_encode())
        elif schema_field.name == "deleted":
            arrays.append(pa.array(values).cast(pa.bool_()) if values else pa.array([], pa.bool_()))
        elif schema_field.name == "session_date" and values and isinstance(values[0], dt.date):
            days = pa.array(values, pa.date32()).cast(pa.int32())
            arrays.append(days)
        elif kind == pa.float32():
            arrays.append(pa.array(np.asarray(values, dtype=np.float32)))
        else:
            arrays.append(pa.array(values, pa.int64()).cast(kind))  # overflow raises
    return pa.Table.from_arrays(arrays, schema=SNAPSHOT_SCHEMA)


def _stream(conn: Connection, stmt: Select[Any]) -> Iterator[pa.Table]:
    """Run ``stmt`` with a server-side cursor and yield Arrow tables of FETCH_ROWS rows."""
    result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(stmt)
    for rows in result.partitions():
        yield _to_batch(rows)


def _empty() -> pa.Table:
    return SNAPSHOT_SCHEMA.empty_table()


def read_marks_table(engine: Engine | Connection) -> pa.Table:
    """Every mark (deleted ones flagged) straight from the database, no snapshot.

    Parameters
    ----------
    engine
        Engine or open connection of a tpmap database.

    Returns
    -------
    pyarrow.Table
        Rows of :data:`SNAPSHOT_SCHEMA` sorted by mark id.
    """
    with _connection(engine) as conn:
        batches = list(_stream(conn, _marks_select(conn.dialect.name)))
    return pa.concat_tables(batches) if batches else _empty()


@contextlib.contextmanager
def _connection(engine: Engine | Connection) -> Iterator[Connection]:
    if isinstance(engine, Connection):
        yield engine
        return
    options: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        # One consistent view of the database for the whole refresh.
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect() as conn, conn.execution_options(**options).begin():
        yield conn


# --------------------------------------------------------------------------------------------
# Merging parts
# --------------------------------------------------------------------------------------------


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    """Sort by id, keeping the last row of each id (later rows are newer)."""
    if table.num_rows < 2:
        return table
    ids = table.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return table.take(pa.array(order[last]))


def merge_parts(base: pa.Table, deltas: list[pa.Table]) -> pa.Table:
    """Apply delta parts to a base part: rows with a known id replace it, others are added.

    ``base`` must be sorted by unique id; the result is too. Costs one pass over the base
    plus a sort of the (small) deltas: no sort of the base.
    """
    if not deltas:
        return base
    delta = _dedupe_sorted(pa.concat_tables(deltas))
    if delta.num_rows == 0:
        return base
    base_ids = base.column("id").to_numpy()
    delta_ids = delta.column("id").to_numpy()
    pos = np.searchsorted(base_ids, delta_ids)
    hit = pos < len(base_ids)
    hit[hit] = base_ids[pos[hit]] == delta_ids[hit]
    keep = np.ones(len(base_ids), dtype=bool)
    keep[pos[hit]] = False
    kept_index = np.flatnonzero(keep)
    # Where each delta row lands among the kept base rows, then interleave by index.
    insert_at = np.searchsorted(base_ids[kept_index], delta_ids)
    n_out = len(kept_index) + len(delta_ids)
    take = np.empty(n_out, dtype=np.int64)
    delta_slots = insert_at + np.arange(len(delta_ids))
    is_delta = np.zeros(n_out, dtype=bool)
    is_delta[delta_slots] = True
    take[~is_delta] = kept_index
    take[delta_slots] = len(base_ids) + np.arange(len(delta_ids))
    combined = pa.concat_tables([base, delta]).unify_dictionaries()
    return combined.take(pa.array(take))


# --------------------------------------------------------------------------------------------
# The snapshot directory
# --------------------------------------------------------------------------------------------


def _url_text(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def default_snapshot_dir(url: str | URL) -> Path:
    """Snapshot directory for a database: the user cache dir, keyed by a hash of the URL.

    Examples
    --------
    >>> default_snapshot_dir("sqlite:///x.db").name[:6]  # doctest: +SKIP
    'marks-'
    """
    import platformdirs

    key = hashlib.sha256(_url_text(url).encode()).hexdigest()[:20]
    return Path(platformdirs.user_cache_dir("tpmap", appauthor=False)) / f"marks-{key}"


@dataclass(frozen=True)
class RefreshStats:
    """What a refresh did: ``kind`` is ``"cold"``, ``"incremental"`` or ``"none"``."""

    kind: str
    rows_read: int
    rows_total: int
    compacted: bool = False
    parts: int = 1


@dataclass
class _State:
    version: int
    url: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    max_mark_id: int = 0
    max_change_id: int = 0
    high_water: str | None = None
    fingerprint: str | None = None

    @property
    def base_rows(self) -> int:
        return int(self.parts[0]["rows"]) if self.parts else 0

    @property
    def delta_rows(self) -> int:
        return sum(int(p["rows"]) for p in self.parts[1:])


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


class MarkSnapshot:
    """The Parquet snapshot of one database's marks, in ``directory``.

    Parameters
    ----------
    directory
        Where the snapshot lives (created on first refresh).
    engine
        Engine of the tpmap database it mirrors.

    Examples
    --------
    >>> snap = MarkSnapshot(tmp_path / "snap", store.engine)  # doctest: +SKIP
    >>> snap.refresh().kind  # doctest: +SKIP
    'cold'
    >>> table = snap.read()  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, engine: Engine) -> None:
        self.directory = Path(directory)
        self.engine = engine
        self._url = _url_text(engine.url)

    # -- state ---------------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.directory / "state.json"

    def _read_state(self) -> _State | None:
        try:
            raw = json.loads(self._state_path.read_text())
            state = _State(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if state.version != SNAPSHOT_VERSION or state.url != self._url:
            return None
        if not all((self.directory / p["file"]).exists() for p in state.parts):
            return None
        return state

    def _write_state(self, state: _State) -> None:
        tmp = self.directory / f".state-{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps(state.__dict__, indent=1))
        os.replace(tmp, self._state_path)  # atomic: readers see the old or the new state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise refreshes between processes (POSIX advisory lock; none elsewhere)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_part(self, tables: Iterator[pa.Table], prefix: str) -> tuple[str, int]:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = self.directory / f".{name}.tmp"
        rows = 0
        with pq.ParquetWriter(tmp, SNAPSHOT_SCHEMA, compression="lz4") as writer:
            for table in tables:
                if table.num_rows:
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
                    rows += table.num_rows
        os.replace(tmp, self.directory / name)
        return name, rows

    def _remove_unlisted(self, state: _State) -> None:
        listed = {p["file"] for p in state.parts}
        for path in self.directory.glob("*.parquet"):
            if path.name not in listed:
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- refresh -------------------------------------------------------------------------------

    @staticmethod
    def _db_marks(conn: Connection) -> tuple[int, int]:
        max_mark = conn.execute(select(func.max(_m.c.id))).scalar_one() or 0
        max_change = conn.execute(select(func.max(_c.c.id))).scalar_one() or 0
        return int(max_mark), int(max_change)

    @staticmethod
    def _fingerprint(conn: Connection, mark_id: int) -> str | None:
        if mark_id <= 0:
            return None
        created = conn.execute(select(_m.c.created_at).where(_m.c.id == mark_id)).scalar()
        return _iso(created)

    def _matches(self, conn: Connection, state: _State, max_mark: int, max_change: int) -> bool:
        if max_mark < state.max_mark_id or max_change < state.max_change_id:
            return False
        return self._fingerprint(conn, state.max_mark_id) == state.fingerprint

    def _changed(self, dialect: str, state: _State, high_water: dt.datetime) -> Select[Any]:
        changed_ids = union(
            select(_m.c.id.label("id")).where(_m.c.id > state.max_mark_id),
            select(_c.c.mark_id.label("id")).where(_c.c.id > state.max_change_id),
            select(_m.c.id.label("id")).where(
                _m.c.session_id.in_(select(_s.c.id).where(_s.c.updated_at >= high_water))
            ),
            select(_m.c.id.label("id")).where(
                or_(
                    _m.c.created_at >= high_water,
                    _m.c.updated_at >= high_water,
                    _m.c.deleted_at >= high_water,
                )
            ),
        ).subquery()
        return _marks_select(dialect).where(_m.c.id.in_(select(changed_ids.c.id)))

    def refresh(self, *, rebuild: bool = False) -> RefreshStats:
        """Bring the snapshot up to date with the database (build it the first time).

        Parameters
        ----------
        rebuild
            Ignore the existing snapshot and read every mark again.

        Returns
        -------
        RefreshStats
            Whether it was a cold build or an incremental refresh, and how many rows it read.
        """
        with self._lock():
            state = None if rebuild else self._read_state()
            started = dt.datetime.now(dt.UTC)
            with _connection(self.engine) as conn:
                dialect = conn.dialect.name
                max_mark, max_change = self._db_marks(conn)
                fingerprint = self._fingerprint(conn, max_mark)
                if state is not None and not self._matches(conn, state, max_mark, max_change):
                    state = None
                if state is None:
                    name, rows = self._write_part(_stream(conn, _marks_select(dialect)), "base")
                    new = _State(SNAPSHOT_VERSION, self._url, [{"file": name, "rows": rows}])
                    kind, rows_read = "cold", rows
                else:
                    assert state.high_water is not None
                    high_water = dt.datetime.fromisoformat(state.high_water)
                    delta = list(_stream(conn, self._changed(dialect, state, high_water)))
                    rows_read = sum(t.num_rows for t in delta)
                    new = _State(**{**state.__dict__, "parts": list(state.parts)})
                    kind = "incremental" if rows_read else "none"
                    if rows_read:
                        name, rows = self._write_part(iter(delta), "delta")
                        new.parts.append({"file": name, "rows": rows})
            new.max_mark_id, new.max_change_id = max_mark, max_change
            new.fingerprint = fingerprint
            margin = SERIAL_WRITER_MARGIN if dialect == "sqlite" else SAFETY_MARGIN
            new.high_water = _iso(started - margin)
            compacted = False
            if len(new.parts) > COMPACT_PARTS or new.delta_rows > COMPACT_SHARE * max(
                new.base_rows, 1
            ):
                merged = self._read_merged(new)
                name, rows = self._write_part(iter([merged]), "base")
                new.parts = [{"file": name, "rows": rows}]
                compacted = True
            self._write_state(new)
            self._remove_unlisted(new)
            total = new.base_rows + new.delta_rows
            return RefreshStats(kind, rows_read, total, compacted, len(new.parts))

    # -- reading -------------------------------------------------------------------------------

    def _read_part(self, name: str, columns: list[str] | None) -> pa.Table:
        path = self.directory / name
        return pq.read_table(
            path,
            columns=columns,
            read_dictionary=[c for c in DICTIONARY_COLUMNS if columns is None or c in columns],
            use_threads=True,
        )

    def _read_merged(self, state: _State, columns: list[str] | None = None) -> pa.Table:
        if not state.parts:
            return _empty() if columns is None else _empty().select(columns)
        if len(state.parts) == 1:
            return self._read_part(state.parts[0]["file"], columns)
        wanted = None if columns is None else list(dict.fromkeys(["id", *columns]))
        tables = [self._read_part(p["file"], wanted) for p in state.parts]
        merged = merge_parts(tables[0], tables[1:])
        return merged if columns is None else merged.select(columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The snapshot's rows (tombstones included), sorted by mark id.

        Parameters
        ----------
        columns
            Columns to read (all of :data:`SNAPSHOT_SCHEMA` by default); fewer is faster.
        """
        state = self._read_state()
        if state is None:
            raise FileNotFoundError(f"no snapshot in {self.directory}: refresh() first")
        return self._read_merged(state, columns)


def live_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """Drop tombstones; return the live rows and how many were dropped."""
    if "deleted" not in table.column_names:
        return table, 0
    deleted = table.column("deleted")
    n_deleted = int(pc.sum(deleted).as_py() or 0)
    if n_deleted:
        table = table.filter(pc.invert(deleted))
    return table.drop_columns(["deleted"]), n_deleted
