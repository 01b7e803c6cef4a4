"""Atlas hit testing: one tap, and bulk classification, against plain Shapely.

Run with ``make bench`` (or ``python -m bench atlas``).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import shapely

from bench._work import isolate
from tpmap import load_atlas
from tpmap.atlas import MUSCLE_LAYERS

VIEW = "anterior"
STRUCTURES = "structures"
# Where the structures layer has its regions: both knees (and little else) of the view.
KNEES = (-15.0, 40.0, 15.0, 63.0)


def _median_time(fn, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shapely_loop(atlas, view, xs, ys, layers=("deep", "superficial")):
    """The obvious alternative: `shapely.intersects_xy` per polygon, superficial first."""
    out = np.full(len(xs), -1, dtype=np.int32)
    for layer in layers:
        for r in reversed(atlas.regions_in(view, layer)):
            out[shapely.intersects_xy(r.polygon, xs, ys)] = r.index
    return out


def _tap_us(atlas, taps, layer=None) -> float:
    per = []
    for x, y in taps:
        t = time.perf_counter_ns()
        atlas.region_at(VIEW, x, y, layer=layer)
        per.append(time.perf_counter_ns() - t)
    return statistics.median(per) / 1000


def _base_tap_us(regions, taps) -> float:
    base = []
    for x, y in taps:
        t = time.perf_counter_ns()
        next((r for r in regions if shapely.intersects_xy(r.polygon, x, y)), None)
        base.append(time.perf_counter_ns() - t)
    return statistics.median(base) / 1000


def _rows(label, tap_us, base_us, n, fast, slow):
    return [
        (f"{label}: one tap", f"{tap_us:.2f} us", f"{base_us:.1f} us", f"{base_us / tap_us:.0f}x"),
        (
            f"{label}: 10^6 points",
            f"{n / fast / 1e6:.0f} M points/s",
            f"{n / slow / 1e6:.1f} M points/s",
            f"{slow / fast:.0f}x",
        ),
    ]


def main() -> list[tuple[str, str, str, str]]:
    isolate()  # writes nothing today; any cache a library adds lands in the work folder
    atlas = load_atlas()
    rng = np.random.default_rng(0)
    n = 1_000_000
    atlas.warm()  # build the indexes outside the timing
    for r in atlas.regions:
        shapely.prepare(r.polygon)

    # Muscles: taps and points uniform over the view, both muscle layers (the default).
    xmin, ymin, xmax, ymax = atlas.bounds(VIEW)
    xs, ys = rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n)
    taps = list(zip(xs[:20000].tolist(), ys[:20000].tolist(), strict=True))
    muscles = [r for lay in MUSCLE_LAYERS for r in atlas.regions_in(VIEW, lay)]
    tap_us, base_us = _tap_us(atlas, taps), _base_tap_us(muscles, taps[:2000])
    fast = _median_time(lambda: atlas.classify(VIEW, xs, ys))
    slow = _median_time(lambda: shapely_loop(atlas, VIEW, xs, ys), repeat=3)
    assert (atlas.classify(VIEW, xs, ys) == shapely_loop(atlas, VIEW, xs, ys)).all()
    rows = _rows("muscles", tap_us, base_us, n, fast, slow)

    # Structures: their own layer, taps and points uniform over both knees.
    kx0, ky0, kx1, ky1 = KNEES
    kxs, kys = rng.uniform(kx0, kx1, n), rng.uniform(ky0, ky1, n)
    ktaps = list(zip(kxs[:20000].tolist(), kys[:20000].tolist(), strict=True))
    structures = atlas.regions_in(VIEW, STRUCTURES)
    tap_us = _tap_us(atlas, ktaps, STRUCTURES)
    base_us = _base_tap_us(structures, ktaps[:2000])
    fast = _median_time(lambda: atlas.classify(VIEW, kxs, kys, layer=STRUCTURES))
    slow = _median_time(lambda: shapely_loop(atlas, VIEW, kxs, kys, (STRUCTURES,)), repeat=3)
    got = atlas.classify(VIEW, kxs, kys, layer=STRUCTURES)
    assert (got == shapely_loop(atlas, VIEW, kxs, kys, (STRUCTURES,))).all()
    rows += _rows("structures", tap_us, base_us, n, fast, slow)

    print(f"\natlas hit testing ({VIEW} view, exact)")
    print(f"{'case':<26} {'tpmap':>16} {'shapely loop':>16} {'speed-up':>9}")
    for row in rows:
        print(f"{row[0]:<26} {row[1]:>16} {row[2]:>16} {row[3]:>9}")
    return rows


if __name__ == "__main__":
    main()
