"""The server's research data set, in a process of its own at low CPU priority.

A server keeps its research data set in one child process: loading, refreshing and every
researcher page's computation run there, and only results (tables, grids: numbers) come
back. The server's event loop then shares neither the GIL nor its CPU priority with
research work: a clinician tapping while a researcher loads 10^6 marks or changes a filter
waits for neither. The child runs under Linux's ``SCHED_IDLE`` policy (and ``nice``
:data:`NICENESS` where that policy is missing): it computes only on a core that nothing
else wants, so the operating system always gives the clinician's request the core first.

:class:`ResearchProcess` has the interface a page uses of :class:`SharedDataset` (``ensure``,
``run``, ``submit``, ``progress``, ``cell_key``, ``close``); the functions given to
:meth:`ResearchProcess.run` and their arguments cross a process boundary, so they must be
picklable (module-level functions, or methods of picklable objects).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from tpmap.research._density import GridSpec, single_threaded
from tpmap.research._disclosure import CellKey
from tpmap.research._loading import Dataset
from tpmap.research._shared import SharedDataset, cell_key_bytes

__all__ = ["NICENESS", "DatasetSummary", "ResearchProcess"]

log = logging.getLogger("tpmap.research")
T = TypeVar("T")
P = ParamSpec("P")

#: How much lower the research process's CPU priority is (``nice``; 0 to 19), besides
#: ``SCHED_IDLE``. Alone, at 10 the kernel would give it about a tenth of a core that a
#: clinician's request also wants.
NICENESS = 10
_PROGRESS_BYTES = 200


@dataclass(frozen=True)
class DatasetSummary:
    """What a page needs of the data set besides computations: its filter options.

    Attributes
    ----------
    clinicians, date_range, instruments
        As the :class:`Dataset` properties of these names.
    n_marks, n_episodes
        Sizes, for the log and for tests.
    loads
        Full loads the research process has done (tests and benchmarks read it).
    """

    clinicians: tuple[str, ...]
    date_range: Any
    instruments: tuple[str, ...]
    n_marks: int
    n_episodes: int
    loads: int = 0

    @classmethod
    def of(cls, data: Dataset, *, loads: int = 0) -> DatasetSummary:
        """The summary of ``data``."""
        return cls(
            clinicians=data.clinicians,
            date_range=data.date_range,
            instruments=data.instruments,
            n_marks=len(data.marks),
            n_episodes=len(data.cohort),
            loads=loads,
        )


class ResearchProcess:
    """The research data set of a server, held and computed on in a child process.

    Parameters
    ----------
    url
        The database URL (the child opens its own connections).
    snapshot, max_age, grids
        As in :class:`SharedDataset`.
    niceness
        Added to the child's ``nice`` value (:data:`NICENESS`); the child also runs under
        ``SCHED_IDLE`` where the platform has it.

    Examples
    --------
    >>> research = ResearchProcess("sqlite:///tpmap.db")  # doctest: +SKIP
    >>> research.ensure().result().n_marks  # doctest: +SKIP
    1000000
    >>> research.run(lambda shared: len(shared.data.marks))  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        snapshot: str | Path | bool | None = None,
        max_age: float = 30.0,
        grids: dict[str, GridSpec] | None = None,
        niceness: int = NICENESS,
    ) -> None:
        self._url = url
        self._snapshot = snapshot
        self._grids = grids
        self._niceness = int(niceness)
        self.max_age = float(max_age)
        self._context = multiprocessing.get_context("spawn")  # never fork a threaded server
        # The child writes what it is doing here; the parent reads it without a round trip.
        self._progress = self._context.Array("c", _PROGRESS_BYTES)
        self._pool: ProcessPoolExecutor | None = None
        # Database writes and files of this process (export records) stay off the event loop.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tpmap-research")
        self._lock = threading.Lock()
        self._job: Future[DatasetSummary] | None = None
        self._summary: DatasetSummary | None = None
        self._checked = 0.0
        self._cell_key: CellKey | None = None
        self._closed = False

    # ---------------------------------------------------------------- state
    @property
    def summary(self) -> DatasetSummary | None:
        """The data set's summary, or None before the first load finished."""
        return self._summary

    @property
    def loads(self) -> int:
        """Full loads the research process has done."""
        return self._summary.loads if self._summary is not None else 0

    @property
    def progress(self) -> str:
        """What the research process is doing, in words ("reading 1 000 000 marks ...")."""
        with self._progress.get_lock():
            said = bytes(self._progress.value).decode("utf-8", "replace")  # type: ignore[attr-defined]
        return said or "starting the research process ..."

    @property
    def cell_key(self) -> CellKey:
        """The perturbation key, kept next to the snapshot (the child reads the same one)."""
        with self._lock:
            if self._cell_key is None:
                from tpmap.store import make_engine

                engine = make_engine(self._url)
                try:
                    self._cell_key = CellKey(cell_key_bytes(engine, self._snapshot))
                finally:
                    engine.dispose()
            return self._cell_key

    # ---------------------------------------------------------------- work
    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("the research process was closed")
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=self._context,
                initializer=_child_start,
                initargs=(
                    self._url,
                    self._snapshot,
                    self._grids,
                    self._progress,
                    self._niceness,
                    os.getpid(),
                ),
            )
        return self._pool

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            pool = self._executor()
            try:
                return pool.submit(fn, *args)
            except BrokenProcessPool:
                # The child died (killed, out of memory): start a new one, which reloads.
                log.warning("the research process stopped; starting a new one")
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                self._summary = None
                return self._executor().submit(fn, *args)

    def ensure(self) -> Future[DatasetSummary]:
        """The data set's summary, loaded the first time and checked for changes after
        ``max_age``. Several callers get the same future while a load is under way."""
        with self._lock:
            if self._job is not None and not self._job.done():
                return self._job
            fresh = time.monotonic() - self._checked < self.max_age
            if self._summary is not None and fresh:
                done: Future[DatasetSummary] = Future()
                done.set_result(self._summary)
                return done
        job = self._submit(_child_ensure)
        with self._lock:
            self._job = job
        job.add_done_callback(self._loaded)
        return job

    def _loaded(self, job: Future[DatasetSummary]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        self._summary = job.result()
        self._checked = time.monotonic()

    def run(
        self, fn: Callable[Concatenate[SharedDataset, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Compute ``fn(shared, *args)`` in the research process, where ``shared`` is the
        child's :class:`SharedDataset` (after any load under way); ``fn``, its arguments and
        its result must be picklable."""
        return self._submit(_child_run, fn, args, kwargs)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args)`` on a worker thread of this process (database writes, files)."""
        return self.executor.submit(fn, *args, **kwargs)

    def close(self) -> None:
        """Stop the research process and the worker thread (pending jobs are cancelled)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ in the child process
_CHILD: SharedDataset | None = None


def _child_start(
    url: str,
    snapshot: str | Path | bool | None,
    grids: dict[str, GridSpec] | None,
    progress: Any,
    niceness: int,
    parent: int,
) -> None:
    """Set up the research process: lowest priority, its data set, a watch on the parent."""
    global _CHILD
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(OSError, AttributeError):
        # Linux: run only on a core nothing else wants (threads started later inherit it).
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    _watch_parent(parent)

    def say(message: str) -> None:
        data = message.encode("utf-8")[: _PROGRESS_BYTES - 1]
        with progress.get_lock():
            progress.value = data

    # Already a child process: the marks are read from the database right here.
    _CHILD = SharedDataset(url, snapshot=snapshot, max_age=0.0, grids=grids, refresh_in_child=False)
    _CHILD._say = say  # type: ignore[method-assign]  # progress goes to the parent


def _watch_parent(parent: int) -> None:
    """Exit when the server process is gone (killed without closing its pool): the child
    is then re-parented. (``PR_SET_PDEATHSIG`` would fire when the *thread* that started
    the child ends, which in a server is any thread.)"""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="tpmap-research-parent", daemon=True).start()


def _child_ensure() -> DatasetSummary:
    assert _CHILD is not None
    data = _CHILD._load_or_refresh()
    return DatasetSummary.of(data, loads=_CHILD.loads)


def _child_run(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    assert _CHILD is not None
    if _CHILD.data is None:
        _child_ensure()
    with single_threaded():
        return fn(_CHILD, *args, **kwargs)
