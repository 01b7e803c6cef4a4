"""Loading research data from a tpmap database: :func:`load_dataset` and the :class:`Dataset`.

The marks come through an incrementally refreshed Parquet snapshot (:mod:`tpmap._snapshot`);
the smaller tables (episodes, sessions, outcomes) are read from the database each time.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tpmap import model
from tpmap.research._density import GridSpec
from tpmap.research._filters import Filters
from tpmap.research._frames import (
    DATASET_MARK_COLUMNS,
    EPOCH,
    LAYERS,
    SESSION_COLUMNS,
    SIDES,
    VIEWS,
    day_to_date,
)
from tpmap.research._outcomes import INSTRUMENTS, OUTCOME_SOURCES, status_columns

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL, Connection
    from sqlalchemy.sql import Executable

    from tpmap._snapshot import RefreshStats
    from tpmap.store import Store

__all__ = ["Dataset", "load_dataset"]

_FIXED_VOCABULARIES = {"view": VIEWS, "layer": LAYERS, "side": SIDES}
_OPEN_CATEGORIES = ("muscle", "technique", "ltr_grade", "tp_status", "clinician")
_SOURCE_DTYPE = pd.CategoricalDtype(list(OUTCOME_SOURCES))

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Everything the explore page or a notebook analyses, loaded by :func:`load_dataset`.

    Attributes
    ----------
    marks
        One row per visible (not soft-deleted) mark, sorted by mark id: the compact layout
        of :func:`compact_marks` plus ``clinician`` (categorical) and ``episode_id`` (int32,
        the episode of the mark's own session): 32 bytes a mark with fewer than 128
        muscles, clinicians and other category values per column.
    cohort
        One row per patient *episode* (the unit of analysis), with or without sessions and
        marks: ``patient_id``, ``episode_id``, ``sex``, ``birth_year`` (float, NaN when
        unknown), ``condition``, ``affected_side``, ``start_date``, ``first_session`` (date
        of the episode's first session, NaT without one), ``n_sessions`` and one
        ``responder_<instrument>`` column per instrument with data (status under the
        default :class:`ResponderRule`). Percentages count distinct patients over it, so a
        patient with two episodes in a selection counts once; each mark counts with its own
        episode (``marks.episode_id``).
    sessions
        One row per session, with or without marks: ``session_id``, ``episode_id``,
        ``patient_id``, ``session_date`` (days since 1970) and ``clinician``. Session
        filters (dates, clinicians) choose episodes through it.
    outcomes
        One row per score: ``patient_id``, ``episode_id``, ``instrument``, ``score``,
        ``date`` and ``source``: ``"outcome_measures"``, or ``"session_before"`` for the
        NPRS a session records before needling (the NPRS after needling is not a follow-up
        and is not loaded).
    loaded_at
        When the data was read (UTC).
    n_deleted_excluded
        Soft-deleted marks left out.
    atlas_versions
        Atlas versions the visible marks were placed with (sorted).
    grids, cells
        Set by :class:`SharedDataset`: the page's grid of each view, and each mark's cell in
        its view's grid (:func:`view_cells`; aligned with the rows of ``marks``).
    """

    marks: pd.DataFrame
    cohort: pd.DataFrame
    outcomes: pd.DataFrame
    loaded_at: _dt.datetime
    n_deleted_excluded: int
    atlas_versions: tuple[str, ...]
    sessions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SESSION_COLUMNS))
    snapshot: Path | None = None
    refresh: RefreshStats | None = field(default=None, repr=False)
    grids: dict[str, GridSpec] | None = field(default=None, repr=False)
    cells: np.ndarray | None = field(default=None, repr=False)

    def filter(self, filters: Filters) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(cohort, marks)`` after ``filters`` (see :meth:`Filters.apply`)."""
        return filters.apply(self.cohort, self.marks, sessions=self.sessions)

    @property
    def n_patients(self) -> int:
        """Patients with at least one episode."""
        return int(self.cohort["patient_id"].nunique())

    @property
    def clinicians(self) -> tuple[str, ...]:
        """Clinicians with at least one session, sorted (for a filter widget)."""
        values = self.sessions["clinician"] if len(self.sessions) else self.marks["clinician"]
        return tuple(sorted(str(c) for c in pd.unique(values.dropna())))

    @property
    def date_range(self) -> tuple[_dt.date, _dt.date] | None:
        """First and last session date; None without sessions."""
        days = self.sessions["session_date"].to_numpy() if len(self.sessions) else np.array([])
        if not len(days):
            days = self.marks["session_date"].to_numpy()
        if not len(days):
            return None
        return day_to_date(int(days.min())), day_to_date(int(days.max()))

    @property
    def instruments(self) -> tuple[str, ...]:
        """Instruments with a ``responder_<instrument>`` column in the cohort."""
        prefix = "responder_"
        return tuple(c[len(prefix) :] for c in self.cohort.columns if c.startswith(prefix))


def load_dataset(
    source: Store | str | URL | Engine,
    *,
    snapshot: str | Path | bool | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load marks, episodes, sessions and outcomes from a tpmap database for analysis.

    Parameters
    ----------
    source
        A :class:`~tpmap.store.Store`, a database URL, or an engine. Only read from.
    snapshot
        Where to keep the Parquet snapshot of the marks (see :mod:`tpmap._snapshot`), which
        is refreshed incrementally on every call: only marks that changed since are read
        from the database. ``None`` or ``True``: ``$TPMAP_SNAPSHOT_DIR``, else the user
        cache directory, keyed by a hash of the URL (an in-memory SQLite database gets
        none). A path: that directory (for instance next to the database file).
        ``False``: read every mark from the database.
    progress
        Called with a short message at each step ("reading 1 000 000 marks ...").

    Returns
    -------
    Dataset
        See :class:`Dataset` for the frames and how patients with several episodes and
        deleted marks are handled.

    Examples
    --------
    >>> ds = load_dataset("sqlite:///tpmap.db")  # doctest: +SKIP
    >>> cohort, marks = ds.filter(Filters(conditions=["patellofemoral_pain"]))  # doctest: +SKIP
    >>> muscle_table(marks, cohort)  # doctest: +SKIP
    """
    from sqlalchemy import Engine as _Engine
    from sqlalchemy import inspect as sa_inspect

    from tpmap import _snapshot
    from tpmap.store import Store as _Store
    from tpmap.store import make_engine

    say = progress or (lambda _message: None)
    if isinstance(source, _Store):
        engine, owned = source.engine, False
    elif isinstance(source, _Engine):
        engine, owned = source, False
    else:
        engine, owned = make_engine(source), True
    try:
        missing = {"patients", "episodes", "sessions", "marks"} - set(
            sa_inspect(engine).get_table_names()
        )
        if missing:
            raise ValueError(
                f"{engine.url.render_as_string(hide_password=True)} is not a tpmap database "
                f"(no {', '.join(sorted(missing))} table): check the URL, or open it once "
                "with tpmap serve or tpmap demo to create the tables"
            )
        loaded_at = _dt.datetime.now(_dt.UTC)
        directory = snapshot_dir(engine, snapshot)
        stats = None
        columns = [*DATASET_MARK_COLUMNS, "atlas_version", "deleted"]
        say("checking for changed marks ...")
        if directory is None:
            say("reading every mark from the database ...")
            table = _snapshot.read_marks_table(engine).select(columns)
        else:
            snap = _snapshot.MarkSnapshot(directory, engine)
            stats = snap.refresh()
            say(f"reading {_thousands(stats.rows_total)} marks ...")
            table = snap.read(columns)
        table, n_deleted = _snapshot.live_rows(table)
        atlas_versions = tuple(_unique_strings(table.column("atlas_version")))
        marks = marks_from_arrow(table.drop_columns(["atlas_version"]))
        del table
        say(f"reading episodes and sessions for {_thousands(len(marks))} marks ...")
        # The cohort is read after the marks: a patient added meanwhile only widens it.
        with engine.connect() as conn:
            episodes = _read_episodes(conn)
            sessions, before = _read_sessions(conn)
            outcomes = _read_outcomes(conn, before)
        cohort = _cohort(episodes, sessions, outcomes)
    finally:
        if owned:
            engine.dispose()
    return Dataset(
        marks=marks,
        cohort=cohort,
        outcomes=outcomes,
        loaded_at=loaded_at,
        n_deleted_excluded=n_deleted,
        atlas_versions=atlas_versions,
        sessions=sessions,
        snapshot=directory,
        refresh=stats,
    )


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _unique_strings(column: pa.ChunkedArray) -> list[str]:
    """Distinct non-null values of an Arrow dictionary-encoded string column.

    Counts the dictionary indices in use per chunk (a bincount), without decoding strings.
    """
    found: set[str] = set()
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        indices = chunk.indices.to_numpy(zero_copy_only=False)
        if chunk.null_count:
            indices = indices[chunk.is_valid().to_numpy(zero_copy_only=False)]
        used = np.flatnonzero(np.bincount(indices, minlength=len(chunk.dictionary)))
        found.update(str(chunk.dictionary[int(i)]) for i in used)
    return sorted(found)


def snapshot_dir(engine: Engine, snapshot: str | Path | bool | None) -> Path | None:
    """Where :func:`load_dataset` keeps the snapshot for ``engine`` (None: no snapshot)."""
    from tpmap import _snapshot

    if snapshot is False:
        return None
    if snapshot is None or snapshot is True:
        url = engine.url
        if url.get_backend_name() == "sqlite" and (url.database or ":memory:") == ":memory:":
            return None  # every in-memory database would share one cache key
        return _snapshot.default_snapshot_dir(url)
    return Path(snapshot)


def marks_from_arrow(table: pa.Table) -> pd.DataFrame:
    """The :attr:`Dataset.marks` frame from snapshot columns (no per-row Python work).

    Dictionary columns become categoricals by remapping their indices with one numpy take:
    fixed vocabularies (view, layer, side) keep the model's order; the others keep the values
    in use, sorted, so that the frame does not depend on the snapshot's history.
    """
    table = table.unify_dictionaries()
    out: dict[str, object] = {}
    for name in DATASET_MARK_COLUMNS:
        column = table.column(name)
        if name not in _FIXED_VOCABULARIES and name not in _OPEN_CATEGORIES:
            out[name] = column.to_numpy()
            continue
        dictionary = [] if not column.num_chunks else column.chunk(0).dictionary.to_pylist()
        # Per chunk (a row group: cache-sized), with nulls as the extra last index.
        chunks = [
            (c.indices.fill_null(len(dictionary)) if c.null_count else c.indices).to_numpy()
            for c in column.chunks
            if len(c)
        ]
        used = np.zeros(len(dictionary) + 1, dtype=np.int64)
        for chunk in chunks:
            used += np.bincount(chunk, minlength=len(dictionary) + 1)
        present = [v for v, n in zip(dictionary, used[:-1], strict=True) if n]
        if name in _FIXED_VOCABULARIES:
            categories = list(_FIXED_VOCABULARIES[name])
            unknown = set(present) - set(categories)
            if unknown:
                raise ValueError(f"unknown {name} values in the database: {sorted(unknown)}")
        else:
            categories = sorted(present)
        position = {v: i for i, v in enumerate(categories)}
        width = (
            np.int8 if len(categories) < 128 else np.int16 if len(categories) < 2**15 else np.int32
        )
        # Old index -> new code; the last slot maps nulls to -1.
        mapping = np.array([position.get(v, -1) for v in dictionary] + [-1], dtype=width)
        codes: np.ndarray[Any, np.dtype[np.signedinteger[Any]]] = np.empty(
            sum(len(c) for c in chunks), dtype=width
        )
        start = 0
        for chunk in chunks:
            np.take(mapping, chunk, out=codes[start : start + len(chunk)])
            start += len(chunk)
        dtype = pd.CategoricalDtype(pd.Index(categories, dtype=str))
        out[name] = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return pd.DataFrame(out)


#: Rows fetched per batch from the database driver.
_BATCH = 20_000


def _rows(conn: Connection, stmt: Executable) -> list[tuple[object, ...]]:
    """All rows of ``stmt``, fetched in batches.

    A driver's fetchall builds every row in one C call that holds the GIL; on a server with
    10^5 sessions that stalls every other thread (the clinicians' taps) for ~100 ms.
    Batches let the event loop in between.
    """
    result = conn.execution_options(yield_per=_BATCH).execute(stmt)
    out: list[tuple[object, ...]] = []
    for batch in result.partitions():
        out.extend(tuple(r) for r in batch)
    return out


def _read_episodes(conn: Connection) -> pd.DataFrame:
    from sqlalchemy import select

    from tpmap.store.schema import EpisodeRow, PatientRow

    e, p = EpisodeRow.__table__, PatientRow.__table__
    stmt = select(
        e.c.patient_id,
        e.c.id.label("episode_id"),
        p.c.sex,
        p.c.birth_year,
        e.c.condition,
        e.c.affected_side,
        e.c.start_date,
    ).join_from(e, p, p.c.id == e.c.patient_id)
    rows = _rows(conn, stmt)
    columns = ["patient_id", "episode_id", "sex", "birth_year", "condition", "affected_side"]
    return pd.DataFrame.from_records(rows, columns=[*columns, "start_date"])


def _read_sessions(conn: Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every session, and the NPRS each recorded before needling."""
    from tpmap import _snapshot
    from tpmap.store.schema import EpisodeRow, SessionRow

    e, s = EpisodeRow.__table__, SessionRow.__table__
    from sqlalchemy import select

    dialect = conn.dialect.name
    stmt = (
        select(
            s.c.id,
            s.c.episode_id,
            e.c.patient_id,
            _snapshot.session_days(dialect).label("session_date"),
            s.c.clinician,
            s.c.nprs_before,
        )
        .join_from(s, e, e.c.id == s.c.episode_id)
        .order_by(s.c.id)
    )
    rows = _rows(conn, stmt)
    raw = pd.DataFrame.from_records(
        rows, columns=["session_id", "episode_id", "patient_id", "day", "clinician", "before"]
    )
    day = raw["day"]
    if len(raw) and not pd.api.types.is_integer_dtype(day.dtype):
        stamps = pd.to_datetime(day).to_numpy(dtype="datetime64[D]")
        day = pd.Series((stamps - EPOCH).astype(np.int32))
    sessions = pd.DataFrame(
        {
            "session_id": raw["session_id"].to_numpy(dtype=np.int32),
            "episode_id": raw["episode_id"].to_numpy(dtype=np.int32),
            "patient_id": raw["patient_id"].to_numpy(dtype=np.int32),
            "session_date": day.to_numpy(dtype=np.int32),
            "clinician": pd.Categorical(raw["clinician"]),
        }
    )
    before = raw.loc[raw["before"].notna().to_numpy()]
    before_rows = pd.DataFrame(
        {
            "patient_id": before["patient_id"].to_numpy(dtype=np.int32),
            "episode_id": before["episode_id"].to_numpy(dtype=np.int32),
            "instrument": "nprs",
            "score": before["before"].to_numpy(dtype=float),
            "date": (
                sessions.loc[raw["before"].notna().to_numpy(), "session_date"]
                .to_numpy()
                .astype("timedelta64[D]")
                + EPOCH
            ).astype("datetime64[s]"),
            "source": "session_before",
        }
    )
    return sessions, before_rows


def _read_outcomes(conn: Connection, before: pd.DataFrame) -> pd.DataFrame:
    from sqlalchemy import select

    from tpmap.store.schema import EpisodeRow, OutcomeMeasureRow

    e, o = EpisodeRow.__table__, OutcomeMeasureRow.__table__
    measured = select(e.c.patient_id, o.c.episode_id, o.c.instrument, o.c.score, o.c.date)
    # A score removed as entered by mistake (soft deletion) is not an outcome.
    measured = measured.join_from(o, e, e.c.id == o.c.episode_id).where(o.c.deleted_at.is_(None))
    rows = [(*r, "outcome_measures") for r in _rows(conn, measured)]
    columns = ["patient_id", "episode_id", "instrument", "score", "date", "source"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    # Dates to datetime64 before concatenating: mixing them with the sessions' datetime64
    # column would box every value into a Python object (slow, and holding the GIL).
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[s]")
    frame = frame.astype({"patient_id": np.int32, "episode_id": np.int32, "score": float})
    frame = pd.concat([frame, before[columns]], ignore_index=True) if len(before) else frame
    frame["instrument"] = frame["instrument"].astype(str)
    frame["source"] = pd.Categorical(frame["source"], dtype=_SOURCE_DTYPE)
    return frame.sort_values(["patient_id", "episode_id", "instrument", "date"]).reset_index(
        drop=True
    )


def _cohort(episodes: pd.DataFrame, sessions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per patient episode, with its first session and a responder column per
    instrument."""
    ordered = episodes.sort_values(["patient_id", "start_date", "episode_id"], kind="stable")
    ordered = ordered.reset_index(drop=True)
    first = sessions.groupby("episode_id")["session_date"].agg(["min", "size"])
    ep_ids = ordered["episode_id"].to_numpy()
    first_day = first["min"].reindex(ep_ids).to_numpy()
    first_session = np.where(
        np.isnan(first_day.astype(float)),
        np.datetime64("NaT"),
        (np.nan_to_num(first_day.astype(float)).astype(np.int64).astype("timedelta64[D]") + EPOCH),
    ).astype("datetime64[s]")
    cohort = pd.DataFrame(
        {
            "patient_id": ordered["patient_id"].to_numpy(dtype=np.int32),
            "episode_id": ep_ids.astype(np.int32),
            "sex": pd.Categorical(ordered["sex"], dtype=pd.CategoricalDtype(list(model.SEXES))),
            "birth_year": pd.to_numeric(ordered["birth_year"]).astype(float).to_numpy(),
            "condition": pd.Categorical(
                ordered["condition"], dtype=pd.CategoricalDtype(list(model.CONDITIONS))
            ),
            "affected_side": pd.Categorical(
                ordered["affected_side"], dtype=pd.CategoricalDtype(list(model.AFFECTED_SIDES))
            ),
            "start_date": pd.to_datetime(ordered["start_date"]).astype("datetime64[s]"),
            "first_session": first_session,
            "n_sessions": first["size"].reindex(ep_ids).fillna(0).to_numpy(dtype=np.int32),
        }
    )
    instruments = sorted(set(outcomes["instrument"]) & set(INSTRUMENTS))
    for name, column in status_columns(outcomes, cohort, instruments).items():
        cohort[name] = column
    return cohort
