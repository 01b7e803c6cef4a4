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

Several processes
-----------------
Refreshes are serialised by an advisory lock on the directory. Every file is written under
a temporary name and renamed into place (atomic), ``state.json`` last, so a reader sees the
old snapshot or the new one, never half of either. A part that a refresh no longer lists is
removed only after :data:`GRACE` (a reader that read the old state may still be opening
it); a reader that loses that race reads the state again. Snapshot directories not used for
:data:`STALE_AFTER` are evicted by the next refresh in the same root.

Where
-----
:func:`default_snapshot_dir`: ``$TPMAP_SNAPSHOT_DIR`` when set (the server's settings and
the tests set it), else the user cache directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
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
    "GRACE",
    "SAFETY_MARGIN",
    "SERIAL_WRITER_MARGIN",
    "SNAPSHOT_ENV",
    "SNAPSHOT_SCHEMA",
    "SNAPSHOT_VERSION",
    "STALE_AFTER",
    "MarkSnapshot",
    "RefreshStats",
    "default_snapshot_dir",
    "evict_stale",
    "live_rows",
    "merge_parts",
    "read_marks_table",
    "session_days",
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
#: An unlisted part (or a temporary file) is removed only when older than this.
GRACE = dt.timedelta(minutes=10)
#: A snapshot directory whose state was not touched for this long is removed.
STALE_AFTER = dt.timedelta(days=30)
#: Environment variable naming the root directory of snapshots.
SNAPSHOT_ENV = "TPMAP_SNAPSHOT_DIR"
#: Times a reader retries when a refresh removed a part it was about to open.
_READ_ATTEMPTS = 5
#: Compact the parts into a new base when the deltas exceed this share of the base rows...
COMPACT_SHARE = 0.02
#: ... or when there are more parts than this.
COMPACT_PARTS = 8

_m: Table = MarkRow.__table__
_s: Table = SessionRow.__table__
_e: Table = EpisodeRow.__table__
_c: Table = MarkChangeRow.__table__

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


def session_days(dialect: str) -> Any:
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
            session_days(dialect).label("session_date"),
            _s.c.clinician,
            _m.c.atlas_version,
            _m.c.deleted_at.is_not(None).label("deleted"),
        )
        .select_from(_m.join(_s, _s.c.id == _m.c.session_id).join(_e, _e.c.id == _s.c.episode_id))
        .order_by(_m.c.id)
    )


def _to_batch(rows: Sequence[Any]) -> pa.Table:
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
    """Snapshot directory for a database: ``$TPMAP_SNAPSHOT_DIR`` or the user cache dir,
    in a folder keyed by a hash of the URL.

    Examples
    --------
    >>> default_snapshot_dir("sqlite:///x.db").name[:6]
    'marks-'
    """
    key = hashlib.sha256(_url_text(url).encode()).hexdigest()[:20]
    root = os.environ.get(SNAPSHOT_ENV, "").strip()
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("tpmap", appauthor=False)
    return Path(root) / f"marks-{key}"


def evict_stale(root: Path, *, keep: Path | None = None, now: dt.datetime | None = None) -> int:
    """Remove snapshot directories under ``root`` unused for :data:`STALE_AFTER`.

    A directory counts as used when its ``state.json`` (rewritten by every refresh) is
    recent. Directories being refreshed (locked) are left alone. Returns how many went.
    """
    import shutil

    now = now or dt.datetime.now(dt.UTC)
    removed = 0
    if not root.is_dir():
        return 0
    for directory in root.glob("marks-*"):
        if keep is not None and directory.resolve() == keep.resolve():
            continue
        state = directory / "state.json"
        try:
            touched = dt.datetime.fromtimestamp(state.stat().st_mtime, dt.UTC)
        except OSError:
            touched = dt.datetime.fromtimestamp(directory.stat().st_mtime, dt.UTC)
        if now - touched < STALE_AFTER:
            continue
        with _try_lock(directory) as locked:
            if locked:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
    return removed


@contextlib.contextmanager
def _try_lock(directory: Path) -> Iterator[bool]:
    """An exclusive lock on ``directory`` if nobody holds it (no waiting)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    try:
        handle = open(directory / ".lock", "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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

    def _read_state(self, *, check_parts: bool = True) -> _State | None:
        try:
            raw = json.loads(self._state_path.read_text())
            state = _State(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if state.version != SNAPSHOT_VERSION or state.url != self._url:
            return None
        if check_parts and not all((self.directory / p["file"]).exists() for p in state.parts):
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

    def _remove_unlisted(self, state: _State, now: dt.datetime | None = None) -> None:
        """Remove parts no longer listed, and stray temporary files, once older than GRACE.

        Not at once: a reader in another process may have read the previous state and be
        about to open one of its parts.
        """
        now = now or dt.datetime.now(dt.UTC)
        listed = {p["file"] for p in state.parts}
        for path in [*self.directory.glob("*.parquet"), *self.directory.glob(".*.tmp")]:
            if path.name in listed:
                continue
            with contextlib.suppress(OSError):
                modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
                if now - modified >= GRACE:
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
        evict_stale(self.directory.parent, keep=self.directory)
        return RefreshStats(kind, rows_read, total, compacted, len(new.parts))

    # -- reading -------------------------------------------------------------------------------

    def _read_part(self, source: Any, columns: list[str] | None) -> pa.Table:
        return pq.read_table(
            source,
            columns=columns,
            read_dictionary=[c for c in DICTIONARY_COLUMNS if columns is None or c in columns],
            use_threads=True,
        )

    def _read_merged(self, state: _State, columns: list[str] | None = None) -> pa.Table:
        if not state.parts:
            return _empty() if columns is None else _empty().select(columns)
        # Open every part first: an open file stays readable even if a refresh in another
        # process removes it afterwards.
        with contextlib.ExitStack() as stack:
            handles = [
                stack.enter_context(open(self.directory / p["file"], "rb")) for p in state.parts
            ]
            if len(handles) == 1:
                return self._read_part(handles[0], columns)
            wanted = None if columns is None else list(dict.fromkeys(["id", *columns]))
            tables = [self._read_part(h, wanted) for h in handles]
        merged = merge_parts(tables[0], tables[1:])
        return merged if columns is None else merged.select(columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The snapshot's rows (tombstones included), sorted by mark id.

        Parameters
        ----------
        columns
            Columns to read (all of :data:`SNAPSHOT_SCHEMA` by default); fewer is faster.
        """
        for _attempt in range(_READ_ATTEMPTS):
            state = self._read_state(check_parts=False)
            if state is None:
                raise FileNotFoundError(f"no snapshot in {self.directory}: refresh() first")
            try:
                return self._read_merged(state, columns)
            except FileNotFoundError:
                continue  # a refresh replaced the parts meanwhile: read the new state
        raise FileNotFoundError(f"the snapshot in {self.directory} kept changing while read")


def live_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """Drop tombstones; return the live rows and how many were dropped."""
    if "deleted" not in table.column_names:
        return table, 0
    deleted = table.column("deleted")
    n_deleted = int(pc.sum(deleted).as_py() or 0)
    if n_deleted:
        table = table.filter(pc.invert(deleted))
    return table.drop_columns(["deleted"]), n_deleted
