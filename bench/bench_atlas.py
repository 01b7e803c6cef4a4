"""Atlas hit testing: one tap, and bulk classification, against plain Shapely.

Run with ``make bench`` (or ``python -m bench atlas``).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import shapely

from tpmap import load_atlas

VIEW = "anterior"


def _median_time(fn, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shapely_loop(atlas, view, xs, ys):
    """The obvious alternative: `shapely.contains_xy` per polygon, superficial first."""
    out = np.full(len(xs), -1, dtype=np.int32)
    for layer in ("deep", "superficial"):
        for r in reversed(atlas.regions_in(view, layer)):
            out[shapely.intersects_xy(r.polygon, xs, ys)] = r.index
    return out


def main() -> list[tuple[str, str, str, str]]:
    atlas = load_atlas()
    rng = np.random.default_rng(0)
    xmin, ymin, xmax, ymax = atlas.bounds(VIEW)
    n = 1_000_000
    xs = rng.uniform(xmin, xmax, n)
    ys = rng.uniform(ymin, ymax, n)
    atlas.classify(VIEW, xs[:10], ys[:10])  # build the index outside the timing
    for r in atlas.regions:
        shapely.prepare(r.polygon)

    # One tap: median over many taps at random points of the body.
    taps = list(zip(xs[:20000].tolist(), ys[:20000].tolist(), strict=True))
    per = []
    for x, y in taps:
        t = time.perf_counter_ns()
        atlas.region_at(VIEW, x, y)
        per.append(time.perf_counter_ns() - t)
    tap_us = statistics.median(per) / 1000
    base = []
    regions = atlas.regions_in(VIEW)
    for x, y in taps[:2000]:
        t = time.perf_counter_ns()
        next((r for r in regions if shapely.intersects_xy(r.polygon, x, y)), None)
        base.append(time.perf_counter_ns() - t)
    base_us = statistics.median(base) / 1000

    fast = _median_time(lambda: atlas.classify(VIEW, xs, ys))
    slow = _median_time(lambda: shapely_loop(atlas, VIEW, xs, ys), repeat=3)
    assert (atlas.classify(VIEW, xs, ys) == shapely_loop(atlas, VIEW, xs, ys)).all()
    rows = [
        ("one tap, median", f"{tap_us:.2f} us", f"{base_us:.1f} us", f"{base_us / tap_us:.0f}x"),
        (
            "bulk, 10^6 points",
            f"{n / fast / 1e6:.0f} M points/s",
            f"{n / slow / 1e6:.1f} M points/s",
            f"{slow / fast:.0f}x",
        ),
    ]
    print(f"\natlas hit testing ({VIEW} view, both layers, exact)")
    print(f"{'case':<20} {'tpmap':>16} {'shapely loop':>16} {'speed-up':>9}")
    for row in rows:
        print(f"{row[0]:<20} {row[1]:>16} {row[2]:>16} {row[3]:>9}")
    return rows


if __name__ == "__main__":
    main()
