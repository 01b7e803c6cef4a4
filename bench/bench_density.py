"""Benchmark: tpmap density maps against datashader, numpy and the previous implementation.

Run by hand (``python -m bench density``); prints Markdown tables for docs/benchmarks.md.
Synthetic marks are clustered around 20 trigger-point sites on the anterior view (x -25..25
cm, y 0..120 cm), cells of 0.5 cm (a 100 x 240 grid), a heavy-tailed number of marks per
patient. Times are medians of several runs (``time.perf_counter``), all cases of a row in
the same run.

- binning: :func:`tpmap.research.bin_counts` against datashader's ``Canvas.points`` count
  (the bench extra installs it), ``numpy.histogram2d``, and a plain ``np.bincount`` on a
  precomputed cell index (the floor: no index arithmetic at all);
- the page's default map, patients with a mark within 1.5 cm and small-cell suppression
  (k = 5), on marks ordered by patient as the server keeps them, and unordered; side by
  side with the unweighted map and with the previous implementation (patient-cell
  weighting: a bitmap filled with ``np.bitwise_or.at`` and a square support window);
- the smoothed maps with suppression and the dominance rule;
- the smoothed map against ``scipy.stats.gaussian_kde``.
"""

from __future__ import annotations

import importlib.util
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from bench._work import isolate
from tpmap.research import VIEWS, GridSpec, bin_counts, count_cells, density_grid, view_cells
from tpmap.research._density import _cell_index
from tpmap.research._frames import stable_order

BOUNDS = (-25.0, 0.0, 25.0, 120.0)
CELL = 0.5
SIGMA = 1.5


def synthetic_marks(n: int, n_patients: int, seed: int = 0) -> pd.DataFrame:
    """``n`` anterior marks in the compact layout, clustered like real needling sites."""
    rng = np.random.default_rng(seed)
    sites = np.column_stack([rng.uniform(-18, 18, 20), rng.uniform(10, 110, 20)])
    site = rng.integers(0, len(sites), n)
    xy = sites[site] + rng.normal(0, 1.5, (n, 2))
    # Heavy-tailed treatment: a few patients get many more marks than the rest.
    weights = rng.pareto(1.5, n_patients) + 1
    patient = rng.choice(n_patients, n, p=weights / weights.sum()).astype(np.int32) + 1
    cat = pd.Categorical.from_codes
    return pd.DataFrame(
        {
            "patient_id": patient,
            "session_id": rng.integers(1, 10 * n_patients, n, dtype=np.int32),
            "view": cat(np.zeros(n, np.int8), categories=list(VIEWS)),
            "layer": cat(np.zeros(n, np.int8), categories=["superficial", "deep"]),
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
            "muscle": cat(site.astype(np.int8), categories=[f"m{i}" for i in range(20)]),
            "side": cat((xy[:, 0] > 0).astype(np.int8), categories=["left", "right"]),
            "technique": cat(np.zeros(n, np.int8), categories=["static"]),
            "ltr_grade": cat(np.zeros(n, np.int8), categories=["none"]),
            "tp_status": cat(np.zeros(n, np.int8), categories=["active"]),
            "session_date": np.full(n, 19723, dtype=np.int32),
        }
    )


def by_patient(marks: pd.DataFrame) -> pd.DataFrame:
    """The marks in patient order, as the server's shared data set holds them."""
    return marks.take(stable_order(marks["patient_id"].to_numpy())).reset_index(drop=True)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _histogram2d(x: np.ndarray, y: np.ndarray, spec: GridSpec) -> np.ndarray:
    xmin, ymin, xmax, ymax = spec.extent
    counts, _, _ = np.histogram2d(x, y, bins=[spec.nx, spec.ny], range=[[xmin, xmax], [ymin, ymax]])
    return counts.T


def _kde_grid(x: np.ndarray, y: np.ndarray, spec: GridSpec) -> np.ndarray:
    # Fixed bandwidth equal to SIGMA, to match the grid smoothing.
    data = np.vstack([x, y]).astype(float)
    kde = stats.gaussian_kde(data, bw_method=SIGMA / float(np.sqrt(np.cov(data).diagonal().mean())))
    xs, ys = spec.centres()
    return kde(np.vstack([xs.ravel(), ys.ravel()])).reshape(spec.shape)


def _datashader_canvas(spec: GridSpec):
    import datashader

    xmin, ymin, xmax, ymax = spec.extent
    return datashader.Canvas(
        plot_width=spec.nx, plot_height=spec.ny, x_range=(xmin, xmax), y_range=(ymin, ymax)
    )


def _previous_patient_cell(marks: pd.DataFrame, spec: GridSpec, k: int = 5) -> np.ndarray:
    """The previous default map: each patient once per cell, support in a square window of
    2 sigma, bitmap filled by ``np.bitwise_or.at`` (the implementation this replaced)."""
    x, y = marks["x"].to_numpy(), marks["y"].to_numpy()
    cells, _ = _cell_index(x, y, spec)
    codes, uniques = pd.factorize(marks["patient_id"].to_numpy())
    ny, nx = spec.shape
    ncells = nx * ny
    n_words = -(-len(uniques) // 64)
    chunk = max(1, (1 << 25) // (8 * ncells))
    half = math.ceil(2 * SIGMA / spec.cell)
    word = codes >> 6
    bit = np.left_shift(np.uint64(1), (codes & 63).astype(np.uint64))
    distinct = np.zeros(ncells, dtype=np.int64)
    support = np.zeros(ncells, dtype=np.int64)
    chunk_of = (word // chunk).astype(np.int32)
    order = np.argsort(chunk_of, kind="stable")
    n_chunks = -(-n_words // chunk)
    starts = np.concatenate(([0], np.cumsum(np.bincount(chunk_of, minlength=n_chunks))))
    for j in range(n_chunks):
        idx = order[starts[j] : starts[j + 1]]
        size = min(chunk, n_words - j * chunk)
        bitmap = np.zeros(size * ncells, dtype=np.uint64)
        np.bitwise_or.at(
            bitmap, (word[idx] - j * chunk).astype(np.int64) * ncells + cells[idx], bit[idx]
        )
        cube = bitmap.reshape(size, ny, nx)
        distinct += np.bitwise_count(cube).sum(axis=0, dtype=np.int64).ravel()
        for axis in (2, 1):
            out = cube.copy()
            n = cube.shape[axis]
            for d in range(1, min(half, n - 1) + 1):
                hi = [slice(None)] * 3
                lo = [slice(None)] * 3
                hi[axis], lo[axis] = slice(d, None), slice(None, n - d)
                out[tuple(hi)] |= cube[tuple(lo)]
                out[tuple(lo)] |= cube[tuple(hi)]
            cube = out
        support += np.bitwise_count(cube).sum(axis=0, dtype=np.int64).ravel()
    values = ndimage.gaussian_filter(distinct.reshape(spec.shape).astype(float), SIGMA / CELL)
    values[support.reshape(spec.shape) < k] = np.nan
    return values


def main() -> None:
    isolate()  # datashader's numba (and any library cache) writes into the work folder
    warnings.simplefilter("ignore")  # min_patients=0 rows: direct-access analysis on purpose
    spec = GridSpec.from_bounds(BOUNDS, CELL)
    coarse = GridSpec.from_bounds(BOUNDS, 2.0)
    has_datashader = importlib.util.find_spec("datashader") is not None
    binning: list[tuple[int, dict[str, float]]] = []
    maps: list[tuple[str, int, float, str, float | None]] = []

    print(f"grid {spec.nx} x {spec.ny} cells of {CELL} cm; running...", flush=True)
    for n, n_patients, repeats in ((10**6, 5_000, 7), (10**7, 20_000, 5)):
        marks = synthetic_marks(n, n_patients)
        x, y = marks["x"].to_numpy(), marks["y"].to_numpy()
        reference = bin_counts(x, y, spec)
        np.testing.assert_array_equal(reference, _histogram2d(x, y, spec))
        index = _cell_index(x, y, spec)[0]
        # The page's path: cells computed once per data set (2 bytes a mark), then for each
        # map the selection's cells are gathered and counted a cache-sized chunk at a time
        # (research.count_cells, as density_grid does with cells given).
        cells = view_cells(marks, {"anterior": spec})
        selection = np.arange(len(marks))

        def page_binning(cells=cells, selection=selection) -> np.ndarray:
            return count_cells(cells, spec.nx * spec.ny, selection)

        np.testing.assert_array_equal(page_binning().reshape(spec.shape), reference)
        times: dict[str, list[float]] = {
            "tpmap": [],
            "page": [],
            "datashader": [],
            "bincount": [],
        }
        if has_datashader:
            import datashader

            canvas = _datashader_canvas(spec)
            frame = marks[["x", "y"]]
            counts = canvas.points(frame, "x", "y", agg=datashader.count()).values
            np.testing.assert_array_equal(counts, reference)  # compiled (numba), and equal
        # Interleaved, several times, so that a busy machine slows every method alike.
        for _ in range(repeats):
            times["tpmap"].append(median_time(partial(bin_counts, x, y, spec), 1))
            times["page"].append(median_time(page_binning, 1))
            if has_datashader:
                count = partial(canvas.points, frame, "x", "y", agg=datashader.count())
                times["datashader"].append(median_time(count, 1))
            floor = partial(np.bincount, index, minlength=spec.nx * spec.ny)
            times["bincount"].append(median_time(floor, 1))
        row = {key: statistics.median(v) for key, v in times.items() if v}
        row["histogram2d"] = median_time(partial(_histogram2d, x, y, spec), 3)
        binning.append((n, row))
        print(
            f"  binning {n:>10,}: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in row.items()),
            flush=True,
        )

        ordered = by_patient(marks)
        ordered_cells = view_cells(ordered, {"anterior": spec})
        page = lambda m=ordered, c=ordered_cells: density_grid(  # noqa: E731
            m, "anterior", bounds=BOUNDS, cells=c
        )
        default = lambda m=ordered: density_grid(m, "anterior", bounds=BOUNDS)  # noqa: E731
        unsorted = lambda m=marks: density_grid(m, "anterior", bounds=BOUNDS)  # noqa: E731
        plain = lambda m=ordered: density_grid(  # noqa: E731
            m, "anterior", bounds=BOUNDS, weighting="marks", min_patients=0, dominance=1
        )
        previous = lambda m=marks: _previous_patient_cell(m, spec)  # noqa: E731
        t_page = median_time(page, repeats)
        t_plain = median_time(plain, repeats)
        maps.append(("patients within 1.5 cm, k=5, as the page (patient order, cells kept)",
                     n, t_page, "unweighted smoothed map, no suppression", t_plain))  # fmt: skip
        maps.append(("patients within 1.5 cm, k=5 (patient order)", n,
                     median_time(default, repeats), "", None))  # fmt: skip
        maps.append(("patients within 1.5 cm, k=5 (any order)", n, median_time(unsorted, 3),
                     "previous patient-cell map, k=5", median_time(previous, 3)))  # fmt: skip
        for weighting in ("marks", "patient_normalised"):
            smoothed = lambda m=ordered, w=weighting: density_grid(  # noqa: E731
                m, "anterior", bounds=BOUNDS, weighting=w
            )
            maps.append((f"{weighting}, k=5 + dominance", n, median_time(smoothed, 3), "", None))
        for case in maps[-5:]:
            print(f"  {case[0]:<46} {n:>10,} {1000 * case[2]:8.1f} ms", flush=True)

    for n, grid, label, repeats in (
        (10**4, spec, "0.5 cm grid", 3),
        (10**5, coarse, "2 cm grid", 1),
    ):
        marks = synthetic_marks(n, 500, seed=1)
        x, y = marks["x"].to_numpy(), marks["y"].to_numpy()

        def ours(marks=marks, grid=grid) -> object:
            return density_grid(
                marks, "anterior", bounds=BOUNDS, cell=grid.cell, sigma=SIGMA, weighting="marks",
                min_patients=0, dominance=1,
            )  # fmt: skip

        base = median_time(lambda x=x, y=y, grid=grid: _kde_grid(x, y, grid), repeats)
        maps.append((f"smoothed map vs KDE ({label})", n, median_time(ours, 5),
                     f"gaussian_kde on {grid.nx}x{grid.ny}", base))  # fmt: skip

    print()
    print(f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print()
    print(
        "| marks | tpmap page (cells kept) | tpmap `bin_counts` (from x, y) "
        "| datashader `Canvas.points` | `np.bincount`, precomputed index | `numpy.histogram2d` |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, row in binning:
        keys = ("page", "tpmap", "datashader", "bincount", "histogram2d")
        cells = [f"{1000 * row[key]:.1f} ms" if key in row else "-" for key in keys]
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print()
    print("| map | marks | tpmap | baseline | baseline time |")
    print("|---|---:|---:|---|---:|")
    for case, n, ours, baseline, base in maps:
        base_s = f"{1000 * base:.1f} ms" if base is not None else "-"
        print(f"| {case} | {n:,} | {1000 * ours:.1f} ms | {baseline or '-'} | {base_s} |")
    if not has_datashader:
        print("\ndatashader is not installed (pip install -e '.[bench]'): its column is empty.")


if __name__ == "__main__":
    main()
