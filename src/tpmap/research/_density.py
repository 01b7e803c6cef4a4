"""Density maps of marks on one view: what each weighting means, and how it is computed.

Weightings
----------
``"patients"`` (the default)
    The share of patients with a mark within ``radius`` (1.5 cm) of each spot: every patient
    counts at most once per spot, so the map reads "x % of the patients were needled within
    1.5 cm of here", and no value exceeds 100 %. This is a count, so small-cell suppression
    applies to it directly: a spot is shown only if at least ``min_patients`` patients were
    needled within the radius.
``"marks"``
    Marks per cm², smoothed with a Gaussian of ``sigma``.
``"patient_normalised"``
    Each patient's marks on the view share a weight of one, smoothed: patients per cm²,
    integrating to the number of patients (as a percentage of the cohort: to 100 %).

The smoothed weightings are edge corrected at the body outline by normalised convolution
(smooth the masked weights, divide by the smoothed mask): no weight is smoothed out of the
body, and spots at the edge are not diluted. They are shown only where at least
``min_patients`` patients have a mark within ``2 * sigma`` and no single patient gives more
than ``dominance`` of the weight around the spot (the dominance rule).

How
---
Distinct patients within a radius are counted on bitmaps: patients are bits, 64 to a word,
words for one cell contiguous; a patient's marks set its bit in their cells, the bitmaps are
dilated by the disc (bitwise OR of shifted copies) and the set bits counted. Marks sorted by
patient (as the server keeps them) fill the bitmaps without sorting; others are sorted first.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

from tpmap.research._frames import VIEWS, stable_order

__all__ = [
    "DEFAULT_CELL",
    "WEIGHTINGS",
    "DensityGrid",
    "DifferenceGrid",
    "GridSpec",
    "bin_counts",
    "count_cells",
    "density_grid",
    "difference_grid",
    "view_cells",
    "view_grids",
]

Weighting = Literal["patients", "marks", "patient_normalised"]
WEIGHTINGS: tuple[str, ...] = ("patients", "marks", "patient_normalised")


@dataclass(frozen=True)
class GridSpec:
    """A regular grid of square cells: ``nx`` by ``ny`` cells of ``cell`` cm from (x0, y0).

    Arrays on the grid have shape ``(ny, nx)``: row 0 is the bottom row (smallest y), the
    layout Bokeh's ``image`` glyph expects.

    Examples
    --------
    >>> g = GridSpec.from_bounds((-25, 0, 25, 120), cell=0.5)
    >>> g.nx, g.ny, g.extent
    (100, 240, (-25.0, 0.0, 25.0, 120.0))
    """

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int

    @classmethod
    def from_bounds(cls, bounds: tuple[float, float, float, float], cell: float) -> GridSpec:
        """Cover ``bounds=(xmin, ymin, xmax, ymax)``; the far edges round up to whole cells."""
        xmin, ymin, xmax, ymax = map(float, bounds)
        if not (xmax > xmin and ymax > ymin and cell > 0):
            raise ValueError("bounds must be (xmin, ymin, xmax, ymax) with positive size")
        # The small tolerance stops 50 / 0.5 computed as 100.00000000001 adding a cell.
        nx = math.ceil((xmax - xmin) / cell - 1e-9)
        ny = math.ceil((ymax - ymin) / cell - 1e-9)
        return cls(xmin, ymin, float(cell), nx, ny)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the whole grid."""
        return (self.x0, self.y0, self.x0 + self.nx * self.cell, self.y0 + self.ny * self.cell)

    @property
    def x_edges(self) -> np.ndarray:
        return self.x0 + self.cell * np.arange(self.nx + 1)

    @property
    def y_edges(self) -> np.ndarray:
        return self.y0 + self.cell * np.arange(self.ny + 1)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates as two ``(ny, nx)`` arrays."""
        xs = self.x0 + self.cell * (np.arange(self.nx) + 0.5)
        ys = self.y0 + self.cell * (np.arange(self.ny) + 0.5)
        return np.meshgrid(xs, ys)


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------

# Points per block of the binning loop: the float64 scratch (1 MB) stays in cache, which
# makes the loop about three times faster than whole-array temporaries (measured).
_BLOCK = 1 << 17
# Above this many points the work is split between threads (numpy releases the GIL).
_PARALLEL = 1 << 21
_POOL: ThreadPoolExecutor | None = None
_LOCAL = threading.local()


def _threads() -> int:
    if getattr(_LOCAL, "single", False):
        return 1
    return max(1, min(2, os.cpu_count() or 1))


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Compute density maps on the calling thread only (the server's research worker does,
    so that a core stays free for the event loop and the clinicians' taps)."""
    previous = getattr(_LOCAL, "single", False)
    _LOCAL.single = True
    try:
        yield
    finally:
        _LOCAL.single = previous


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_threads(), thread_name_prefix="tpmap-density")
    return _POOL


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


_T = TypeVar("_T")


def _parallel(fn: Callable[[int, int], _T], n: int) -> list[_T]:
    """Run ``fn(start, stop)`` over ``range(n)`` split between threads when ``n`` is large."""
    parts = _threads() if n >= _PARALLEL else 1
    if parts == 1:
        return [fn(0, n)]
    futures = [_pool().submit(fn, a, b) for a, b in _split(n, parts)]
    return [f.result() for f in futures]


def _in_bounds(
    x: np.ndarray, y: np.ndarray, spec: GridSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop NaN and outside points; the mask is None when all are inside (the usual case).

    The usual case is recognised from the coordinates' min and max, which skips per-point
    bounds tests; NaN makes min/max NaN and so falls to the checked path.
    """
    # np.float64 bounds: a Python float would be compared in float32 with float32 data.
    xmin, ymin, xmax, ymax = map(np.float64, spec.extent)
    x = np.asarray(x)
    y = np.asarray(y)
    if not len(x) or (x.min() >= xmin and x.max() < xmax and y.min() >= ymin and y.max() < ymax):
        return x, y, None
    # The far edge is inside, as in numpy.histogram2d.
    mask = (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    return x[mask], y[mask], mask


def _block_cells(
    x: np.ndarray,
    y: np.ndarray,
    spec: GridSpec,
    out: np.ndarray,
    scratch: tuple[np.ndarray, np.ndarray],
    clip: bool = True,
) -> None:
    """Write the flat cell index ``iy * nx + ix`` of in-bounds points ``x, y`` into ``out``.

    float64 even for float32 coordinates: float32 arithmetic rounds points within a few
    micrometres below an edge into the next cell (15.499999 + 25 is 40.5 in float32). The
    multiply writes straight into the integer output (truncation is floor, the values being
    non-negative).
    """
    inv = 1.0 / spec.cell
    ix = scratch[1][: len(x)]
    fx = scratch[0][: len(x)]
    # dtype=float64 forces the float64 loop: with float32 input and a Python float, numpy
    # would subtract in float32 and only then widen.
    np.subtract(y, spec.y0, out=fx, dtype=np.float64)
    np.multiply(fx, inv, out=out, casting="unsafe")
    if clip:
        np.minimum(out, spec.ny - 1, out=out)  # the far edge, and rounding just below it
    out *= spec.nx
    np.subtract(x, spec.x0, out=fx, dtype=np.float64)
    np.multiply(fx, inv, out=ix, casting="unsafe")
    if clip:
        np.minimum(ix, spec.nx - 1, out=ix)
    out += ix


def _needs_clip(x: np.ndarray, y: np.ndarray, spec: GridSpec) -> bool:
    """False when no point can land past the last cell, so the clamp can be skipped.

    Subtraction and multiplication round monotonically, so if the largest coordinate maps
    below the grid's far edge, every coordinate does.
    """
    if not len(x):
        return False
    inv = 1.0 / spec.cell
    fx = (np.float64(x.max()) - spec.x0) * inv
    fy = (np.float64(y.max()) - spec.y0) * inv
    return not (fx < spec.nx and fy < spec.ny)


def _scratch(n: int, index: type = np.intp) -> tuple[np.ndarray, np.ndarray]:
    size = min(n, _BLOCK)
    return np.empty(size, dtype=np.float64), np.empty(size, dtype=index)


def _cells_into(x: np.ndarray, y: np.ndarray, spec: GridSpec, cells: np.ndarray) -> None:
    """Cell index of every (in-bounds) point into ``cells``, threads sharing the work."""
    clip = _needs_clip(x, y, spec)

    def work(start: int, stop: int) -> None:
        scratch = _scratch(stop - start, cells.dtype.type)
        for a in range(start, stop, _BLOCK):
            b = min(a + _BLOCK, stop)
            _block_cells(x[a:b], y[a:b], spec, cells[a:b], scratch, clip)

    _parallel(work, len(x))


def _cell_index(
    x: np.ndarray, y: np.ndarray, spec: GridSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat cell index (intp) of each in-bounds point, and the in-bounds mask (or None)."""
    x, y, mask = _in_bounds(x, y, spec)
    cells = np.empty(len(x), dtype=np.intp)
    _cells_into(x, y, spec, cells)
    return cells, mask


def bin_counts(
    x: np.ndarray, y: np.ndarray, spec: GridSpec, weights: np.ndarray | None = None
) -> np.ndarray:
    """Count (or sum ``weights`` of) points per grid cell, shape ``(ny, nx)``.

    Same answer as ``numpy.histogram2d(x, y, bins=[spec.x_edges, spec.y_edges]).T`` away
    from float ties on cell edges, many times faster: index arithmetic and ``bincount`` on
    cache-sized blocks, no per-point search, no index array for the whole input, and two
    threads sharing a large input.

    Examples
    --------
    >>> g = GridSpec.from_bounds((0, 0, 2, 1), cell=1)
    >>> bin_counts(np.array([0.5, 1.5, 1.7]), np.array([0.5, 0.2, 0.9]), g).tolist()
    [[1.0, 2.0]]
    """
    x, y, mask = _in_bounds(x, y, spec)
    if weights is not None:
        weights = np.asarray(weights, dtype=float)
        if mask is not None:
            weights = weights[mask]
    ncells = spec.nx * spec.ny
    clip = _needs_clip(x, y, spec)

    def work(start: int, stop: int) -> np.ndarray:
        counts = np.zeros(ncells, dtype=np.int64 if weights is None else np.float64)
        scratch = _scratch(stop - start)
        block = np.empty(len(scratch[0]), dtype=np.intp)  # intp: bincount takes it as is
        for a in range(start, stop, _BLOCK):
            b = min(a + _BLOCK, stop)
            cells = block[: b - a]
            _block_cells(x[a:b], y[a:b], spec, cells, scratch, clip)
            w = None if weights is None else weights[a:b]
            counts += np.bincount(cells, weights=w, minlength=ncells)
        return counts

    parts = _parallel(work, len(x))
    total = parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])
    return total.astype(float).reshape(spec.shape)


# --------------------------------------------------------------------------------------------
# Distinct patients within a disc, on bitmaps
# --------------------------------------------------------------------------------------------

#: Words (of 64 patients) per cell in one chunk of the bitmap: 16 words x 24,000 cells is
#: 3 MB, which stays in cache through the dozen passes of the dilation.
_WORDS = 16


#: Marks per chunk in :func:`count_cells`: their ``intp`` copy (2 MB) stays in cache
#: (measured: 2^18 is fastest on 2^14 .. 2^20).
_COUNT_CHUNK = 1 << 18


def count_cells(cells: np.ndarray, n_cells: int, selection: np.ndarray | None = None) -> np.ndarray:
    """Marks per cell from precomputed cell indexes (:func:`view_cells`), ``(n_cells,)``.

    ``np.bincount`` first copies its whole input to ``intp`` (8 bytes a mark, 80 MB at 10^7
    marks); counting 2-byte cell indexes a cache-sized chunk at a time skips that trip
    through memory and takes about half the time. Indexes ``>= n_cells`` (marks off the
    grid) are not counted.

    Parameters
    ----------
    cells
        Flat cell index of every mark.
    n_cells
        Cells in the grid.
    selection
        The marks to count, as ``cells[selection]`` would pick them: positions, or a
        boolean mask aligned with ``cells``. None counts every mark.

    Examples
    --------
    >>> count_cells(np.array([0, 2, 2, 9], dtype=np.uint16), 3)
    array([1, 0, 2])
    >>> count_cells(np.array([0, 2, 2], dtype=np.uint16), 3, np.array([True, False, True]))
    array([1, 0, 1])
    """
    mask = selection is not None and selection.dtype == bool
    n = len(cells) if selection is None or mask else len(selection)

    def work(start: int, stop: int) -> np.ndarray:
        counts = np.zeros(n_cells, dtype=np.int64)
        for lo in range(start, stop, _COUNT_CHUNK):
            hi = min(lo + _COUNT_CHUNK, stop)
            if selection is None:
                part = cells[lo:hi]
            elif mask:
                part = cells[lo:hi][selection[lo:hi]]
            else:
                part = cells[selection[lo:hi]]
            counts += np.bincount(part, minlength=n_cells)[:n_cells]
        return counts

    # Two threads on large inputs, as bin_counts (numpy's bincount releases the GIL).
    parts = _parallel(work, n)
    return parts[0] if len(parts) == 1 else np.sum(parts, axis=0)


def disc_half_widths(radius_cells: float) -> list[int]:
    """Half-width in cells of each row ``dy = 0, 1, ...`` of a disc of ``radius_cells``.

    A cell belongs to the disc when the distance between cell centres is at most the radius.

    Examples
    --------
    >>> disc_half_widths(3)
    [3, 2, 2, 0]
    """
    r = float(radius_cells)
    return [math.floor(math.sqrt(r * r - dy * dy) + 1e-9) for dy in range(int(r) + 1)]


def _dilate(bm: np.ndarray, rows: Sequence[int], work: dict[object, np.ndarray]) -> np.ndarray:
    """OR of ``bm`` (ny, nx, words) over a disc given by its half-widths per row.

    Separable by rows: horizontal dilations for each half-width the disc needs (each built
    from the previous one), then every row offset ORs in the one its half-width asks for.
    """
    horizontal: dict[int, np.ndarray] = {0: bm}
    current, src = 0, bm
    for h in sorted(set(rows) - {0}):
        dst = work[h]
        np.copyto(dst, src)
        for d in range(current + 1, h + 1):
            dst[:, d:] |= bm[:, :-d]
            dst[:, :-d] |= bm[:, d:]
        horizontal[h] = dst
        current, src = h, dst
    out = work["out"]
    np.copyto(out, horizontal[rows[0]])
    for dy in range(1, len(rows)):
        source = horizontal[rows[dy]]
        out[dy:] |= source[:-dy]
        out[:-dy] |= source[dy:]
    return out


def _patient_codes(patient: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Patient codes in ascending order (0 .. n-1), and the sorting order (None if sorted).

    Database ids are dense, so sorted ids minus the smallest are codes already (a few unused
    codes cost a few unused bits); sparse ids are renumbered.
    """
    if not len(patient):
        return np.zeros(0, dtype=np.int32), None, 0
    if (patient[1:] >= patient[:-1]).all():
        low, high = int(patient[0]), int(patient[-1])
        change = np.count_nonzero(patient[1:] != patient[:-1]) + 1
        if high - low < 2 * change + 64:
            return (patient - low).astype(np.int32, copy=False), None, high - low + 1
        first = np.empty(len(patient), dtype=bool)
        first[0] = True
        np.not_equal(patient[1:], patient[:-1], out=first[1:])
        codes = np.cumsum(first, dtype=np.int32) - 1
        return codes, None, int(codes[-1]) + 1
    factor_codes, uniques = pd.factorize(patient, sort=True)
    order = stable_order(factor_codes)
    return factor_codes[order].astype(np.int32), order, len(uniques)


def patients_within(
    codes: np.ndarray,
    cells: np.ndarray,
    n_patients: int,
    shape: tuple[int, int],
    radius_cells: float,
) -> np.ndarray:
    """Distinct patients with a point within ``radius_cells`` of each cell, ``(ny, nx)``.

    ``codes`` are dense patient codes in ascending order (0 .. n_patients-1) and ``cells``
    the flat cell index of each point. ``radius_cells=0`` counts distinct patients per cell.
    """
    ny, nx = shape
    rows = disc_half_widths(radius_cells)
    words = _WORDS
    per_chunk = 64 * words
    # Points of word-round r (patients r*words .. r*words+words-1) are contiguous.
    starts = np.searchsorted(codes, np.arange(0, n_patients + words, words), side="left")
    n_rounds = len(starts) - 1
    n_chunks = -(-n_patients // per_chunk)
    # Flat bitmap index of every point: cell * words + the patient's word within the round.
    index_type = np.int32 if ny * nx * words < 2**31 else np.int64
    flat_index: np.ndarray = cells.astype(index_type) * words
    flat_index += (codes & (words - 1)).astype(index_type, copy=False)

    def work(chunks: range) -> np.ndarray:
        total = np.zeros((ny, nx), dtype=np.int32)
        bm = np.empty((ny, nx, words), dtype=np.uint64)
        scratch: dict[object, np.ndarray] = {h: np.empty_like(bm) for h in set(rows) - {0}}
        scratch["out"] = np.empty_like(bm)
        flat = bm.reshape(-1)
        for c in chunks:
            bm.fill(0)
            for b in range(64):
                r = c * 64 + b
                if r >= n_rounds:
                    break
                lo, hi = starts[r], starts[r + 1]
                if lo < hi:
                    flat[flat_index[lo:hi]] |= np.uint64(1) << np.uint64(b)
            out = _dilate(bm, rows, scratch) if len(rows) > 1 or rows[0] else bm
            total += np.bitwise_count(out).sum(axis=2, dtype=np.int32)
        return total

    parts = _threads() if len(codes) >= _PARALLEL and n_chunks > 1 else 1
    if parts == 1:
        return work(range(n_chunks))
    futures = [_pool().submit(work, range(i, n_chunks, parts)) for i in range(parts)]
    results = [f.result() for f in futures]
    return sum(results[1:], results[0])


#: The page's density grid: cells of 0.5 cm over each view's bounds.
DEFAULT_CELL = 0.5


class ViewBounds(Protocol):
    """What :func:`view_grids` needs of an atlas: its views and each one's bounds."""

    @property
    def views(self) -> Sequence[str]: ...

    def bounds(self, view: str) -> tuple[float, float, float, float]: ...


class GridPerturbation(Protocol):
    """Noise for a density grid's shown cells (the disclosure policy's cell key)."""

    def perturb_grid(
        self, values: np.ndarray, weighting: str, sigma_cells: float, *, floor: int
    ) -> np.ndarray: ...


def view_grids(atlas: ViewBounds, cell: float = DEFAULT_CELL) -> dict[str, GridSpec]:
    """The grid of each view of ``atlas`` (anything with ``views`` and ``bounds(view)``)."""
    return {view: GridSpec.from_bounds(atlas.bounds(view), cell) for view in atlas.views}


def view_cells(marks: pd.DataFrame, grids: dict[str, GridSpec]) -> np.ndarray:
    """Each mark's flat cell index in the grid of its own view, computed once.

    A shared data set keeps this (2 bytes a mark): every density map of the page then bins
    its marks with one ``bincount``, without index arithmetic. Marks off their view's grid,
    or of a view without one, get the largest value of the dtype (``OFF_GRID``).
    """
    top = max((g.nx * g.ny for g in grids.values()), default=0)
    dtype = np.uint16 if top < np.iinfo(np.uint16).max else np.uint32
    off = np.iinfo(dtype).max
    out = np.full(len(marks), off, dtype=dtype)
    if not len(marks):
        return out
    codes = (
        marks["view"].cat.codes.to_numpy()
        if isinstance(marks["view"].dtype, pd.CategoricalDtype)
        else None
    )
    names = list(marks["view"].cat.categories) if codes is not None else []
    x_all, y_all = marks["x"].to_numpy(), marks["y"].to_numpy()
    for view, spec in grids.items():
        if codes is not None:
            if view not in names:
                continue
            rows = np.flatnonzero(codes == names.index(view))
        else:
            rows = np.flatnonzero((marks["view"] == view).to_numpy())
        x, y, inside = _in_bounds(x_all[rows], y_all[rows], spec)
        if inside is not None:
            rows = rows[inside]
        cells = np.empty(len(rows), dtype=np.intp)
        _cells_into(x, y, spec, cells)
        out[rows] = cells.astype(dtype)
    return out


# --------------------------------------------------------------------------------------------
# Density grids
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DensityGrid:
    """A density map of one view (see the module docstring for the weightings).

    ``values`` (shape ``spec.shape``): for ``"patients"``, the number of patients with a
    mark within ``radius`` cm; for ``"marks"``, smoothed marks per cell; for
    ``"patient_normalised"``, smoothed patients per cell. NaN marks cells outside the body
    outline and hidden cells (small-cell suppression, dominance).

    ``total_weight`` is the weight binned before smoothing (marks, or patients for the
    normalised weighting; for ``"patients"`` the number of patients);
    ``n_suppressed`` and ``n_dominated`` count the cells hidden by each rule that would
    otherwise have shown a value. ``perturbed`` says whether displayed values carry the
    consistent noise of :class:`~tpmap.research.CellKey`.
    """

    spec: GridSpec
    values: np.ndarray
    weighting: str
    n_marks: int
    n_patients: int
    total_weight: float
    min_patients: int
    radius: float
    sigma: float
    support_radius: float
    dominance: float
    n_out_of_bounds: int = 0
    n_suppressed: int = 0
    n_dominated: int = 0
    perturbed: bool = False

    def display(self, n_cohort: int | None = None) -> tuple[np.ndarray, str]:
        """Values as drawn and their label, true for each weighting.

        ``"patients"``: percent of the cohort's ``n_cohort`` patients with a mark within the
        radius. ``"patient_normalised"``: percent of the cohort's patients per cm² (the map
        integrates to 100 % over the body). ``"marks"``: marks per cm².
        """
        if self.weighting == "patients":
            if n_cohort:
                return (
                    100.0 * self.values / n_cohort,
                    f"% of {n_cohort} patients with a mark within {self.radius:g} cm",
                )
            return self.values, f"patients with a mark within {self.radius:g} cm"
        per_cm2 = self.values / self.spec.cell**2
        if self.weighting == "marks":
            return per_cm2, "marks per cm² (smoothed)"
        if n_cohort:
            return 100.0 * per_cm2 / n_cohort, f"% of {n_cohort} patients per cm² (smoothed)"
        return per_cm2, "patients per cm² (smoothed)"


def density_grid(
    marks: pd.DataFrame,
    view: str,
    *,
    bounds: tuple[float, float, float, float],
    cell: float = 0.5,
    weighting: Weighting = "patients",
    radius: float = 1.5,
    sigma: float = 1.5,
    mask: np.ndarray | shapely.Geometry | None = None,
    min_patients: int = 5,
    dominance: float = 0.5,
    support_radius: float | None = None,
    perturbation: GridPerturbation | None = None,
    cells: np.ndarray | None = None,
) -> DensityGrid:
    """The density map of the marks of one ``view`` on a grid over ``bounds`` (cm).

    Parameters
    ----------
    marks
        Marks in the compact layout (at least ``patient_id``, ``view``, ``x``, ``y``).
    view
        Only marks of this view are used.
    bounds, cell
        The grid (:class:`GridSpec`).
    weighting
        ``"patients"``, ``"marks"`` or ``"patient_normalised"`` (module docstring).
    radius
        For ``"patients"``: the distance (cm, between cell centres) within which a
        patient's mark counts for a spot.
    sigma
        For the smoothed weightings: the Gaussian's standard deviation (cm).
    mask
        The body outline: a boolean ``(ny, nx)`` array or a shapely geometry tested at cell
        centres. Cells outside are NaN; the smoothed weightings are edge corrected on it.
    min_patients
        Small-cell threshold k: a spot is shown only if at least k patients have a mark
        within ``radius`` (``"patients"``) or ``support_radius`` (default ``2 * sigma``,
        the smoothed weightings). 0 turns suppression off (analysis with direct database
        access only; a warning says so).
    dominance
        Hide a spot where one patient gives more than this share of the value (for
        ``"patients"``, where every patient counts once, that means fewer than
        ``1 / dominance`` patients). 1 turns the rule off.
    perturbation
        A :class:`~tpmap.research.CellKey`: shown values carry its consistent noise.
    cells
        Precomputed flat cell indexes of ``marks`` in this grid (:func:`view_cells`, rows
        aligned with ``marks``): the binning is then one ``bincount``.

    Examples
    --------
    >>> g = density_grid(marks, "anterior", bounds=(-25, 0, 25, 120))  # doctest: +SKIP
    >>> g.values.shape  # doctest: +SKIP
    (240, 100)
    """
    from tpmap.research._disclosure import check_min_patients

    check_min_patients(min_patients)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}")
    if not 0 < dominance <= 1:
        raise ValueError("dominance must be a share in (0, 1]")
    spec = GridSpec.from_bounds(bounds, cell)
    smooth_support = 2.0 * sigma if support_radius is None else float(support_radius)

    views = marks["view"]
    in_view = (views == view).to_numpy() if len(views) else np.zeros(0, dtype=bool)
    sub = marks if in_view.all() else marks.loc[in_view]
    pid = sub["patient_id"].to_numpy()
    if cells is not None:
        given = np.asarray(cells)
        if len(given) != len(marks):
            raise ValueError("cells must have one entry per row of marks")
        if not in_view.all():
            given = given[in_view]
        on_grid = given < spec.nx * spec.ny
        n_out = int((~on_grid).sum())
        if n_out:
            given, pid = given[on_grid], pid[on_grid]
        cells = given  # 2-byte indexes: each use below widens only what it needs
        n_marks = len(cells)
    else:
        x, y, inside = _in_bounds(sub["x"].to_numpy(), sub["y"].to_numpy(), spec)
        n_out = len(sub) - len(x)
        if inside is not None:
            pid = pid[inside]
        cells = np.empty(len(x), dtype=np.intp)
        _cells_into(x, y, spec, cells)
        n_marks = len(x)
    codes, order, n_patients = _patient_codes(pid)
    if order is not None:
        cells = cells[order]
    outside = _outside_mask(mask, spec)
    body = None if outside is None else ~outside

    n_dominated = 0
    support: np.ndarray | None
    if weighting == "patients":
        counts = patients_within(codes, cells, n_patients, spec.shape, radius / cell)
        values = counts.astype(float)
        total = float(n_patients)
        support = counts
        # Every patient counts once per spot: one of c patients gives 1/c of the value.
        dominated = (counts > 0) & (1.0 / np.maximum(counts, 1) > dominance)
    else:
        if weighting == "marks":
            weights = None
        else:
            per_patient = np.bincount(codes, minlength=n_patients).astype(float)
            weights = 1.0 / per_patient[codes]
        if weights is None:
            binned = count_cells(cells, spec.nx * spec.ny).astype(float)
        else:
            binned = np.bincount(cells, weights=weights, minlength=spec.nx * spec.ny)
        binned = binned.reshape(spec.shape)
        total = float(binned.sum())
        values = _smooth(binned, sigma / cell, body)
        support = (
            patients_within(codes, cells, n_patients, spec.shape, smooth_support / cell)
            if min_patients > 0 or dominance < 1
            else None
        )
        dominated = (
            _dominated(codes, cells, weights, n_patients, spec, smooth_support, dominance)
            if dominance < 1 and len(codes)
            else np.zeros(spec.shape, dtype=bool)
        )

    if outside is not None:
        values[outside] = np.nan
    visible = ~np.isnan(values)
    n_suppressed = 0
    if min_patients > 0:
        assert support is not None  # computed whenever there is a floor
        small = (support < min_patients) & visible
        n_suppressed = int((small & (values > 0)).sum())
        values[small] = np.nan
        visible &= ~small
    hide = dominated & visible
    n_dominated = int(hide.sum())
    values[hide] = np.nan
    perturbed = False
    if perturbation is not None:
        values = perturbation.perturb_grid(values, weighting, sigma / cell, floor=min_patients)
        perturbed = True
    return DensityGrid(
        spec=spec,
        values=values,
        weighting=weighting,
        n_marks=n_marks,
        n_patients=n_patients,
        total_weight=total,
        min_patients=min_patients,
        radius=radius,
        sigma=sigma,
        support_radius=smooth_support if weighting != "patients" else radius,
        dominance=dominance,
        n_out_of_bounds=n_out,
        n_suppressed=n_suppressed,
        n_dominated=n_dominated,
        perturbed=perturbed,
    )


def _smooth(binned: np.ndarray, sigma_cells: float, body: np.ndarray | None) -> np.ndarray:
    """Gaussian smoothing; with a body mask, normalised convolution on it.

    Normalised convolution: smooth the masked weights and divide by the smoothed mask, so
    that a spot near the outline, whose kernel partly falls outside the body, is not diluted
    by the empty outside. Weight binned in a cell whose centre lies just outside the outline
    (a mark on the edge) is first moved to the nearest cell inside, so none is lost.
    """
    if body is None:
        # No outline: the grid edge reflects (the reflection method), keeping all weight.
        return ndimage.gaussian_filter(binned, sigma=sigma_cells, mode="reflect")
    stray = ~body & (binned != 0)
    weights = np.where(body, binned, 0.0)
    if stray.any() and body.any():
        nearest = ndimage.distance_transform_edt(~body, return_distances=False, return_indices=True)
        np.add.at(weights, (nearest[0][stray], nearest[1][stray]), binned[stray])
    num = ndimage.gaussian_filter(weights, sigma=sigma_cells, mode="constant")
    den = ndimage.gaussian_filter(body.astype(float), sigma=sigma_cells, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(body & (den > 1e-12), num / den, np.nan)


#: Cells per side of a dominance block (2 cm at 0.5 cm cells).
_DOMINANCE_BLOCK = 4


def _dominated(
    codes: np.ndarray,
    cells: np.ndarray,
    weights: np.ndarray | None,
    n_patients: int,
    spec: GridSpec,
    window: float,
    share: float,
) -> np.ndarray:
    """Cells where one patient gives more than ``share`` of the weight around them.

    Evaluated on blocks of ``_DOMINANCE_BLOCK`` cells: for each block, the weight of every
    patient within the square of blocks reaching ``window`` cm around it is compared with
    the total there. Patients are processed in chunks so that memory stays small.
    """
    block = _DOMINANCE_BLOCK
    ny, nx = spec.shape
    nby, nbx = -(-ny // block), -(-nx // block)
    half = max(1, math.ceil(window / (block * spec.cell) - 1e-9))
    iy, ix = np.divmod(cells.astype(np.intp, copy=False), nx)  # 2-byte cells: no overflow
    bcell = (iy // block) * nbx + (ix // block)
    nblocks = nby * nbx
    w = np.ones(len(codes)) if weights is None else weights

    k = 2 * half + 1
    chunk = max(1, (1 << 21) // nblocks)
    buffer = np.zeros((chunk, nby + k, nbx + k))  # float64: summed-area tables stay exact

    def box(a: np.ndarray) -> np.ndarray:
        # Sum over the (2 half + 1)^2 square of blocks around each block, for a stack of
        # (p, nby, nbx) arrays: summed-area table in one reused, zero-padded buffer.
        buf = buffer[: len(a)]
        buf[:, : half + 1, :] = 0
        buf[:, :, : half + 1] = 0
        buf[:, half + 1 : half + 1 + nby, half + 1 : half + 1 + nbx] = a
        buf[:, half + 1 + nby :, :] = 0
        buf[:, :, half + 1 + nbx :] = 0
        np.cumsum(buf, axis=1, out=buf)
        np.cumsum(buf, axis=2, out=buf)
        out = buf[:, k:, k:] - buf[:, :-k, k:]
        out -= buf[:, k:, :-k]
        out += buf[:, :-k, :-k]
        return out

    total = box(np.bincount(bcell, weights=w, minlength=nblocks).reshape(1, nby, nbx))[0]
    # Only a patient whose whole weight exceeds the share of the smallest total in reach of
    # one of their marks can dominate anywhere: the others need no per-patient pass.
    reach = ndimage.minimum_filter(total, size=2 * half + 1, mode="nearest").ravel()[bcell]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    weight = np.add.reduceat(w, starts)
    lowest = np.minimum.reduceat(reach, starts)
    candidate = np.zeros(n_patients, dtype=bool)
    candidate[codes[starts][weight > share * lowest]] = True
    keep = candidate[codes]
    codes, bcell, w = codes[keep], bcell[keep], w[keep]
    top = np.zeros((nby, nbx))
    if not len(codes):
        return np.zeros(spec.shape, dtype=bool)
    # Renumber the candidates densely so that the chunks hold only them.
    first = np.r_[True, codes[1:] != codes[:-1]]
    codes = np.cumsum(first) - 1
    n_candidates = int(codes[-1]) + 1
    bounds = np.searchsorted(codes, np.arange(0, n_candidates + chunk, chunk))
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j], bounds[j + 1]
        if lo == hi:
            continue
        local = (codes[lo:hi] - j * chunk) * nblocks + bcell[lo:hi]
        per = np.bincount(local, weights=w[lo:hi], minlength=chunk * nblocks)
        n_here = -(-len(per) // nblocks)
        top = np.maximum(top, box(per.reshape(n_here, nby, nbx)).max(axis=0))
    dominated = top > share * total * (1 + 1e-9) + 1e-12
    full = np.repeat(np.repeat(dominated, block, axis=0), block, axis=1)
    return full[:ny, :nx]


def _outside_mask(mask: np.ndarray | shapely.Geometry | None, spec: GridSpec) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, shapely.Geometry):
        xs, ys = spec.centres()
        return ~shapely.contains_xy(mask, xs, ys)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spec.shape:
        raise ValueError(f"mask has shape {mask.shape}, the grid is {spec.shape}")
    return ~mask


@dataclass(frozen=True)
class DifferenceGrid:
    """Group A minus group B, each as a percentage of its own cohort (see difference_grid)."""

    spec: GridSpec
    values: np.ndarray
    a: DensityGrid
    b: DensityGrid
    n_cohort_a: int
    n_cohort_b: int

    @property
    def label(self) -> str:
        """What the values mean (percentage points of each group's own patients)."""
        if self.a.weighting == "patients":
            return f"% points of patients with a mark within {self.a.radius:g} cm"
        if self.a.weighting == "marks":
            return "marks per cm² per 100 patients"
        return "% points of patients per cm²"


def difference_grid(
    marks_a: pd.DataFrame,
    cohort_a: pd.DataFrame,
    marks_b: pd.DataFrame,
    cohort_b: pd.DataFrame,
    view: str,
    *,
    n_cohort_a: int | None = None,
    n_cohort_b: int | None = None,
    **kwargs: Any,
) -> DifferenceGrid:
    """Density of A minus density of B, each in percent of its own cohort's patients.

    Dividing each group's map by the number of patients in its cohort (with or without
    marks) lets groups of different size compare honestly: with ``"patients"`` a value
    reads "percentage points more of A's patients than of B's were needled within the
    radius here". Cells hidden in either group, or outside the mask, are NaN. Keyword
    arguments go to :func:`density_grid`; ``n_cohort_a``/``n_cohort_b`` replace the
    cohorts' patient counts (the page passes its perturbed counts).

    Examples
    --------
    >>> d = difference_grid(ma, ca, mb, cb, "posterior", bounds=b)  # doctest: +SKIP
    """
    from tpmap.research._frames import patient_count
    from tpmap.research._proportions import counted_marks

    grid_a = density_grid(counted_marks(marks_a, cohort_a), view, **kwargs)
    grid_b = density_grid(counted_marks(marks_b, cohort_b), view, **kwargs)
    n_a = patient_count(cohort_a) if n_cohort_a is None else int(n_cohort_a)
    n_b = patient_count(cohort_b) if n_cohort_b is None else int(n_cohort_b)
    if n_a == 0 or n_b == 0:
        raise ValueError("both cohorts need at least one patient")
    values = 100.0 * grid_a.values / n_a - 100.0 * grid_b.values / n_b  # NaN propagates
    return DifferenceGrid(grid_a.spec, values, grid_a, grid_b, n_a, n_b)
