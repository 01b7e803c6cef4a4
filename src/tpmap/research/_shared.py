"""One research data set, loaded off the event loop, shared by every tab.

A :class:`SharedDataset` holds the data set in this process and computes on its own worker
thread (notebooks, tests, and the research process of a server: :mod:`._process`). The
first page to need it starts the load on that worker; every other page waits for the same
load. Afterwards pages read the same frames (read-only), so memory stays at about 32 bytes a
mark however many tabs are open. When a page asks again after ``max_age`` seconds, the
worker checks the database for changes (reading only changed marks, through the snapshot)
and swaps in a new data set only if something changed.

Pages compute with :meth:`SharedDataset.run`: ``fn(shared, *args)`` runs where the data set
lives, with ``shared.data``, ``shared.cell_key`` and ``shared.memo`` to hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from tpmap.research._density import GridSpec, single_threaded, view_cells
from tpmap.research._disclosure import CellKey
from tpmap.research._frames import stable_order
from tpmap.research._loading import Dataset, load_dataset, snapshot_dir

__all__ = ["SharedDataset", "cell_key_bytes"]

log = logging.getLogger("tpmap.research")
T = TypeVar("T")
P = ParamSpec("P")


class SharedDataset:
    """A data set held in this process: loaded, refreshed and computed on one worker thread.

    Parameters
    ----------
    source
        A :class:`~tpmap.store.Store`, a database URL or an engine.
    snapshot
        As in :func:`load_dataset` (the server passes its settings' snapshot directory).
    max_age
        Seconds after which a page's request checks the database for changes.
    grids
        The page's density grid per view (:func:`view_grids`): each mark's cell is computed
        once at load (2 bytes a mark) so that maps need no index arithmetic.
    refresh_in_child
        Read changed marks from the database in a child process (see
        :meth:`_refresh_elsewhere`); False where this already is a child process.

    Examples
    --------
    >>> shared = SharedDataset(store)  # doctest: +SKIP
    >>> data = shared.ensure().result()  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        *,
        snapshot: str | Path | bool | None = None,
        max_age: float = 30.0,
        grids: dict[str, GridSpec] | None = None,
        refresh_in_child: bool = True,
    ) -> None:
        self._source = source
        self._grids = grids
        self._refresh_in_child = refresh_in_child
        self._memo: dict[Any, Any] = {}
        self._snapshot = snapshot
        self.max_age = float(max_age)
        # One worker: loads, refreshes and every page's recomputation queue on it, so the
        # event loop never computes, and memory for intermediate results stays bounded.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tpmap-research")
        self._lock = threading.Lock()
        self._data: Dataset | None = None
        self._job: Future[Dataset] | None = None
        self._checked = 0.0
        self._progress = "not loaded yet"
        self._cell_key: CellKey | None = None
        self.loads = 0  # full loads done (tests and benchmarks read it)

    @classmethod
    def of(
        cls,
        data: Dataset,
        *,
        cell_key: CellKey | None = None,
        grids: dict[str, GridSpec] | None = None,
    ) -> SharedDataset:
        """A shared data set holding ``data`` as it is (never reloaded): for notebooks,
        tests and benchmarks that loaded the data themselves."""
        shared = cls(None, snapshot=False, max_age=float("inf"), grids=grids)
        data = shared._prepare(data)
        shared._data = data
        shared._checked = time.monotonic()
        shared._progress = "ready"
        shared._cell_key = cell_key or CellKey()
        return shared

    # ---------------------------------------------------------------- state
    @property
    def data(self) -> Dataset | None:
        """The current data set, or None before the first load finished."""
        return self._data

    @property
    def progress(self) -> str:
        """What the worker is doing, in words ("reading 1 000 000 marks ...")."""
        return self._progress

    @property
    def cell_key(self) -> CellKey:
        """The perturbation key, kept next to the snapshot so it survives restarts."""
        with self._lock:
            if self._cell_key is None:
                self._cell_key = CellKey(self._key_bytes())
            return self._cell_key

    def _engine(self) -> Any:
        from sqlalchemy import Engine

        from tpmap.store import Store, make_engine

        if isinstance(self._source, Store):
            return self._source.engine
        if isinstance(self._source, Engine):
            return self._source
        if not hasattr(self, "_own_engine"):
            self._own_engine = make_engine(self._source)
        return self._own_engine

    def _key_bytes(self) -> bytes | None:
        return cell_key_bytes(self._engine(), self._snapshot)

    def memo(self, key: Any, make: Callable[[], T]) -> T:
        """``make()``, computed once per data set (for instance a responder rule's statuses).

        Call it from :meth:`run`'s function: the cache is emptied when the data set is
        replaced, and only the worker touches it.
        """
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ---------------------------------------------------------------- work
    def ensure(self) -> Future[Dataset]:
        """The data set, loaded the first time and checked for changes after ``max_age``.

        Returns a future; several callers get the same one while a load is under way.
        """
        with self._lock:
            if self._job is not None and not self._job.done():
                return self._job
            fresh = time.monotonic() - self._checked < self.max_age
            if self._data is not None and fresh:
                done: Future[Dataset] = Future()
                done.set_result(self._data)
                return done
            self._job = self.executor.submit(self._load_or_refresh)
            return self._job

    def run(
        self, fn: Callable[Concatenate[SharedDataset, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Compute ``fn(self, *args)`` on the research worker (after any load under way).

        ``fn`` reads ``shared.data``; the worker computes on one core, so the other stays
        free for the event loop.
        """

        def work() -> T:
            with single_threaded():
                return fn(self, *args, **kwargs)

        return self.executor.submit(work)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args)`` on a worker thread of this process (database writes, files)."""
        return self.executor.submit(fn, *args, **kwargs)

    def _say(self, message: str) -> None:
        self._progress = message

    def _load_or_refresh(self) -> Dataset:
        try:
            if self._data is not None and not self._changed():
                self._checked = time.monotonic()
                return self._data
            started = time.perf_counter()
            if self._refresh_in_child:
                self._refresh_elsewhere()
            data = load_dataset(self._source, snapshot=self._snapshot, progress=self._say)
            self._say(f"sorting {len(data.marks):,} marks ...".replace(",", " "))
            data = self._prepare(data)
            marks = data.marks
            self._fingerprint = self._tables_fingerprint()
            self._memo = {}
            self._data = data
            self.loads += 1
            self._checked = time.monotonic()
            self._say("ready")
            log.info(
                "research data loaded: %d marks, %d episodes in %.2f s",
                len(marks),
                len(data.cohort),
                time.perf_counter() - started,
            )
            return data
        except Exception:
            self._say("failed")
            log.exception("loading the research data failed")
            raise

    def _prepare(self, data: Dataset) -> Dataset:
        """Marks in patient order (density maps then fill their bitmaps without sorting),
        with each mark's cell in its view's grid."""
        order = stable_order(data.marks["patient_id"].to_numpy())
        marks = data.marks
        if (np.diff(order) < 0).any():
            marks = marks.take(order)
        marks = marks.reset_index(drop=True)
        cells = view_cells(marks, self._grids) if self._grids else None
        return dataclasses.replace(data, marks=marks, grids=self._grids, cells=cells)

    def _refresh_elsewhere(self) -> None:
        """Bring the snapshot up to date in a child process.

        Reading marks from the database is Python work that holds the GIL for most of its
        time (row objects, conversions): in this process it would slow every clinician's tap
        by milliseconds at a time, for the seconds a cold read of 10^6 marks takes. The
        snapshot is safe with several processes, so a child refreshes it and this process
        then only reads Parquet (which releases the GIL). Any failure falls back to the
        refresh inside :func:`load_dataset`, which reports it in words.
        """
        engine = self._engine()
        directory = snapshot_dir(engine, self._snapshot)
        if directory is None:
            return
        self._say("reading changed marks from the database ...")
        url = engine.url.render_as_string(hide_password=False)
        try:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded server
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                pool.submit(_refresh_snapshot, url, str(directory)).result()
        except Exception:
            log.debug("refreshing the snapshot in a child process failed", exc_info=True)

    def _tables_fingerprint(self) -> tuple[object, ...]:
        """Counts, highest ids and last session edit of the tables besides the marks."""
        from sqlalchemy import func, select

        from tpmap.store.schema import EpisodeRow, OutcomeMeasureRow, PatientRow, SessionRow

        out: list[object] = []
        with self._engine().connect() as conn:
            for row in (PatientRow, EpisodeRow, SessionRow, OutcomeMeasureRow):
                t = row.__table__
                out.extend(conn.execute(select(func.count(), func.max(t.c.id))).one())
            s = SessionRow.__table__
            out.append(conn.execute(select(func.max(s.c.updated_at))).scalar())
        return tuple(out)

    def _changed(self) -> bool:
        """Whether marks or the other tables changed since the data set was loaded."""
        from tpmap import _snapshot

        self._say("checking for changes ...")
        if self._tables_fingerprint() != getattr(self, "_fingerprint", None):
            return True
        directory = snapshot_dir(self._engine(), self._snapshot)
        if directory is None:
            return True  # no snapshot to compare with: read again
        stats = _snapshot.MarkSnapshot(directory, self._engine()).refresh()
        return stats.kind != "none"

    def close(self) -> None:
        """Stop the worker (pending jobs are cancelled)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        engine = getattr(self, "_own_engine", None)
        if engine is not None:
            engine.dispose()


def cell_key_bytes(engine: Any, snapshot: str | Path | bool | None) -> bytes | None:
    """The perturbation key kept in the snapshot directory (made the first time).

    None without a snapshot directory (the key is then random per process).
    """
    directory = snapshot_dir(engine, snapshot)
    if directory is None:
        return None
    path = directory / "cellkey.bin"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    try:
        # O_EXCL: of two processes starting together, one writes and both read its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _refresh_snapshot(url: str, directory: str) -> None:
    """Refresh the marks snapshot of ``url`` in ``directory`` (run in a child process)."""
    from tpmap import _snapshot
    from tpmap.store import make_engine

    engine = make_engine(url)
    try:
        _snapshot.MarkSnapshot(Path(directory), engine).refresh()
    finally:
        engine.dispose()
