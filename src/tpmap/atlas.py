"""The body diagram: muscle regions as Shapely polygons, and exact hit testing.

Coordinates are centimetres on a reference adult (y up from the floor; x = 0 on the
midline of the anterior and posterior views). Anatomical sides are the patient's: on the
anterior view the patient's right is at negative x, on the posterior view at positive x.

Regions lie in three layers: ``superficial`` and ``deep`` muscles, and ``structures``: the
ligaments, tendons and periosteal sites around the knee and hip that are needled too (the
MPFL, the joint line, ...). Every region has a ``kind`` (:data:`tpmap.model.KINDS`). A
region's id is :attr:`Region.muscle`, whatever its kind: it is the id a mark stores.

Examples
--------
>>> from tpmap import load_atlas
>>> atlas = load_atlas()
>>> atlas.region_at("anterior", 5.6, 53.4).muscle
'vmo'
>>> atlas.region_at("anterior", 5.6, 53.4, layer="structures").muscle  # the MPFL, deep to VMO
'mpfl'
>>> atlas.region_at("anterior", 30.0, 59.0) is None
True
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import shapely
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from tpmap import model

__all__ = [
    "LAYERS",
    "MUSCLE_LAYERS",
    "VIEWS",
    "Atlas",
    "Landmark",
    "Region",
    "assets_dir",
    "load_atlas",
    "mirror_view",
]

VIEWS: tuple[str, ...] = model.VIEWS
#: Every layer of the diagram (the stored ``marks.layer`` values).
LAYERS: tuple[str, ...] = model.LAYERS
#: The layers of muscles (and fascia): what a tap looks in when no layer is given.
MUSCLE_LAYERS: tuple[str, ...] = (model.Layer.SUPERFICIAL.value, model.Layer.DEEP.value)

# Raster cell codes (non-negative codes are region indices).
_EMPTY = -1  # no region anywhere in the cell
_SEGMENT = -2  # exactly one boundary segment crosses the cell: a side-of-line test decides
_COMPLEX = -3  # several boundary segments: exact Shapely test on the cell's candidates
_DEFER = -4  # merged raster of both layers: not settled by the cell alone
_PAIR = -5  # exactly two boundary segments: two side-of-line tests pick one of four labels
# Shewchuk's error bound for the floating-point orientation determinant: when |det| exceeds
# it, the sign is exact, so the fast path never disagrees with GEOS's robust predicate.
_ORIENT_ERRBOUND = (3.0 + 16.0 * 2.0**-53) * 2.0**-53
_CELL = 0.1  # cm; about 2 % of cells hold a boundary at this size
_CHUNK = 1 << 17  # points per chunk of bulk classification (1 MB scratch: fits the L2 cache)
_PAIR_SAMPLES = 6  # per axis: a 6 x 6 grid of sample points labels a two-segment cell


def _orient(seg: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Side of each point relative to its segment ``(x1, y1, x2, y2)``, and whether it is sure.

    ``det > 0`` on one side, ``< 0`` on the other; ``sure`` is False where rounding could
    have flipped the sign (then an exact test must decide).
    """
    dl = (seg[:, 0] - x) * (seg[:, 3] - y)
    dr = (seg[:, 1] - y) * (seg[:, 2] - x)
    det = dl - dr
    return det, np.abs(det) > _ORIENT_ERRBOUND * (np.abs(dl) + np.abs(dr))


def assets_dir() -> Path:
    """Return the folder holding the atlas assets (inside the wheel, or the repository)."""
    packaged = resources.files("tpmap") / "assets"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "assets"


def mirror_view(view: str) -> str:
    """Return the view that shows the mirror image of ``view``.

    Examples
    --------
    >>> mirror_view("lateral_left"), mirror_view("anterior")
    ('lateral_right', 'anterior')
    """
    return {"lateral_left": "lateral_right", "lateral_right": "lateral_left"}.get(view, view)


@dataclass(frozen=True, slots=True)
class Region:
    """One muscle (or muscle part, or needled structure) on one side, in one view and layer.

    ``muscle`` is the region's stable id whatever its ``kind`` (``"vmo"``, ``"mpfl"``,
    ``"medial_joint_line"``): the id a mark stores.
    """

    index: int
    muscle: str
    name: str
    side: str
    view: str
    layer: str
    polygon: Polygon = field(repr=False, compare=False)
    parent: str | None = None
    uberon: str | None = None
    fma: str | None = None
    short: str = ""
    kind: str = model.Kind.MUSCLE.value

    @property
    def label(self) -> str:
        """A display label such as ``"Vastus medialis obliquus (left)"``."""
        return f"{self.name} ({self.side})"


@dataclass(frozen=True, slots=True)
class Landmark:
    """A bony or ligamentous landmark shown for orientation (a point, line or small shape)."""

    id: str
    name: str
    view: str
    side: str
    geometry: BaseGeometry = field(repr=False, compare=False)


class _LayerIndex:
    """Exact point location for the regions of one view and layer.

    A raster of 1 mm cells labels every cell that no region boundary crosses with the region
    covering it; a cell crossed by a single boundary segment is decided by which side of that
    segment the point lies on; a cell crossed by two (most often a polygon's vertex) by which
    side of each: the two lines cut the cell into at most four convex parts, and no boundary
    runs inside any of them, so each part has one label, sampled at build time. Only cells
    with more segments (junctions), parts no sample fell in, and points on a segment within
    rounding error fall back to Shapely. All paths give the answer of the rule "the first
    region, in atlas order, whose closed polygon holds the point".
    """

    def __init__(self, regions: list[Region], bounds: tuple[float, float, float, float]):
        self.regions = regions
        self.polygons = {r.index: r.polygon for r in regions}
        for p in self.polygons.values():
            shapely.prepare(p)
        xmin, ymin, xmax, ymax = bounds
        self.cell = _CELL
        self.inv = 1.0 / _CELL
        self.x0 = xmin - 2 * _CELL
        self.y0 = ymin - 2 * _CELL
        self.nx = int(np.ceil((xmax - self.x0) / _CELL)) + 2
        self.ny = int(np.ceil((ymax - self.y0) / _CELL)) + 2
        self._build()

    # -------------------------------------------------------------- building
    def _locate_slow(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Region index (or -1) of each point, by Shapely alone (build time only)."""
        out = np.full(len(xs), -1, dtype=np.int32)
        for r in reversed(self.regions):  # the first region in atlas order wins: write it last
            # Only points in the region's (closed) bounding box can touch it: test just those.
            x0, y0, x1, y1 = r.polygon.bounds
            near = np.flatnonzero((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
            out[near[shapely.intersects_xy(r.polygon, xs[near], ys[near])]] = r.index
        return out

    def _build(self) -> None:
        nx, ny, c, x0, y0 = self.nx, self.ny, self.cell, self.x0, self.y0
        if not self.regions:  # e.g. no deep muscle is drawn on the anterior view
            self.labels = np.full(nx * ny, _EMPTY, dtype=np.int32)
            self._labels_py = array("i", self.labels.tolist())
            return
        # Every boundary segment of every region, and which region it belongs to.
        seg_parts, owner_parts = [], []
        for r in self.regions:
            for ring in [r.polygon.exterior, *r.polygon.interiors]:
                xy = np.asarray(ring.coords)
                seg_parts.append(np.hstack([xy[:-1], xy[1:]]))
                owner_parts.append(np.full(len(xy) - 1, r.index, dtype=np.int32))
        segs = np.vstack(seg_parts)
        owner = np.concatenate(owner_parts)
        # Shared edges appear once in each neighbour: one canonical id per geometric segment.
        swap = (segs[:, 0] > segs[:, 2]) | ((segs[:, 0] == segs[:, 2]) & (segs[:, 1] > segs[:, 3]))
        canon = np.where(swap[:, None], segs[:, [2, 3, 0, 1]], segs)
        uniq, seg_id = np.unique(canon, axis=0, return_inverse=True)
        seg_id = seg_id.ravel()

        # Candidate cells of each segment: its bounding box, widened by a tolerance so that a
        # segment touching a cell's edge or corner counts as crossing it (conservative).
        tol = 1e-7
        ix0 = np.floor((np.minimum(segs[:, 0], segs[:, 2]) - tol - x0) / c).astype(np.int64)
        ix1 = np.floor((np.maximum(segs[:, 0], segs[:, 2]) + tol - x0) / c).astype(np.int64)
        iy0 = np.floor((np.minimum(segs[:, 1], segs[:, 3]) - tol - y0) / c).astype(np.int64)
        iy1 = np.floor((np.maximum(segs[:, 1], segs[:, 3]) + tol - y0) / c).astype(np.int64)
        wx, wy = ix1 - ix0 + 1, iy1 - iy0 + 1
        counts = wx * wy
        rep = np.repeat(np.arange(len(segs)), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cix = ix0[rep] + offs % wx[rep]
        ciy = iy0[rep] + offs // wx[rep]
        # Keep a (segment, cell) pair unless all four widened corners lie strictly on one side.
        sx1, sy1, sx2, sy2 = (segs[rep, j] for j in range(4))
        side = []
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            qx = x0 + (cix + dx) * c + (tol if dx else -tol)
            qy = y0 + (ciy + dy) * c + (tol if dy else -tol)
            side.append(np.sign((sx2 - sx1) * (qy - sy1) - (sy2 - sy1) * (qx - sx1)))
        side_arr = np.vstack(side)
        keep = ~((side_arr > 0).all(axis=0) | (side_arr < 0).all(axis=0))
        cell_of_pair = (ciy * nx + cix)[keep]
        sid_of_pair = seg_id[rep][keep]
        own_of_pair = owner[rep][keep]

        # Segments per cell (distinct geometric segments).
        cs = np.unique(np.column_stack([cell_of_pair, sid_of_pair]), axis=0)
        bcells, nseg = np.unique(cs[:, 0], return_counts=True)

        labels = np.full(nx * ny, _EMPTY, dtype=np.int32)
        # Interior cells: the region holding the cell's centre.
        interior = np.ones(nx * ny, dtype=bool)
        interior[bcells] = False
        centres = np.flatnonzero(interior)
        cx = x0 + (centres % nx + 0.5) * c
        cy = y0 + (centres // nx + 0.5) * c
        labels[centres] = self._locate_slow(cx, cy)

        # Single-segment cells: label each side of the segment from a corner on that side.
        single = bcells[nseg == 1]
        first = np.searchsorted(cs[:, 0], single)
        s_of = cs[first, 1]
        u = uniq[s_of]
        sx = single % nx
        sy = single // nx
        best_pos = np.full((len(single), 2), np.nan)
        best_neg = np.full((len(single), 2), np.nan)
        vpos = np.zeros(len(single))
        vneg = np.zeros(len(single))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            qx = x0 + (sx + dx) * c
            qy = y0 + (sy + dy) * c
            o = (u[:, 0] - qx) * (u[:, 3] - qy) - (u[:, 1] - qy) * (u[:, 2] - qx)
            bp, bn = o > vpos, o < vneg
            best_pos[bp] = np.column_stack([qx, qy])[bp]
            vpos[bp] = o[bp]
            best_neg[bn] = np.column_stack([qx, qy])[bn]
            vneg[bn] = o[bn]
        two_sided = (vpos > 0) & (vneg < 0)
        pos_lab = np.full(len(single), _EMPTY, dtype=np.int32)
        neg_lab = np.full(len(single), _EMPTY, dtype=np.int32)
        pos_lab[two_sided] = self._locate_slow(best_pos[two_sided, 0], best_pos[two_sided, 1])
        neg_lab[two_sided] = self._locate_slow(best_neg[two_sided, 0], best_neg[two_sided, 1])
        seg_cells = single[two_sided]
        labels[bcells] = _COMPLEX
        labels[seg_cells] = _SEGMENT
        # cell_seg: the row of seg_table (single-segment cells) or pair_table (pair cells).
        self.cell_seg = np.full(nx * ny, -1, dtype=np.int32)
        self.cell_seg[seg_cells] = np.arange(len(seg_cells), dtype=np.int32)
        self.seg_table = np.column_stack([u[two_sided]]).astype(np.float64)
        self.seg_pos = pos_lab[two_sided]
        self.seg_neg = neg_lab[two_sided]
        self._build_pairs(bcells[nseg == 2], cs, uniq, labels)

        # Candidates of each boundary cell for the exact fallback: regions whose boundary
        # touches the cell, plus the region holding its centre (sorted: atlas order).
        co = np.unique(np.column_stack([cell_of_pair, own_of_pair]), axis=0)
        bx = x0 + (bcells % nx + 0.5) * c
        by = y0 + (bcells // nx + 0.5) * c
        centre_lab = self._locate_slow(bx, by)
        has = centre_lab >= 0
        co = np.unique(
            np.vstack([co, np.column_stack([bcells[has], centre_lab[has]])]), axis=0
        )  # sorted by cell, then region
        self.cell_slot = np.full(nx * ny, -1, dtype=np.int32)
        self.cell_slot[bcells] = np.arange(len(bcells), dtype=np.int32)
        self.cand_ptr = np.searchsorted(co[:, 0], np.append(bcells, nx * ny)).astype(np.int64)
        self.cand = co[:, 1].astype(np.int32)

        self.labels = labels
        # Plain-Python copies for the one-tap path: indexing an array.array is ~5x faster
        # than indexing a NumPy array with Python ints.
        self._labels_py = array("i", labels.tolist())
        self._cell_seg_py = array("i", self.cell_seg.tolist())
        self._cell_slot_py = array("i", self.cell_slot.tolist())
        self._segs_py = [tuple(r) for r in self.seg_table.tolist()]
        self._seg_lab_py = list(zip(self.seg_pos.tolist(), self.seg_neg.tolist(), strict=True))
        self._pairs_py = [tuple(r) for r in self.pair_table.tolist()]
        self._pair_lab_py = [tuple(r) for r in self.pair_lab.tolist()]

    def _build_pairs(
        self, pair: np.ndarray, cs: np.ndarray, uniq: np.ndarray, labels: np.ndarray
    ) -> None:
        """Label the (up to) four parts of every cell that exactly two segments cross.

        A part is the set of points on one given side of each segment's line; a sample point
        whose sides are both sure names its part's region (Shapely, at build time). Parts no
        sample fell in stay ``_COMPLEX``: a query landing there takes the exact fallback.
        """
        nx, c = self.nx, self.cell
        first = np.searchsorted(cs[:, 0], pair)
        seg_a, seg_b = uniq[cs[first, 1]], uniq[cs[first + 1, 1]]
        frac = (np.arange(_PAIR_SAMPLES) + 0.5) / _PAIR_SAMPLES
        fx, fy = (g.ravel() for g in np.meshgrid(frac, frac))
        k = len(fx)
        sx = (self.x0 + (np.repeat(pair % nx, k) + np.tile(fx, len(pair))) * c).reshape(-1, k)
        sy = (self.y0 + (np.repeat(pair // nx, k) + np.tile(fy, len(pair))) * c).reshape(-1, k)
        da, sure_a = _orient(np.repeat(seg_a, k, axis=0), sx.ravel(), sy.ravel())
        db, sure_b = _orient(np.repeat(seg_b, k, axis=0), sx.ravel(), sy.ravel())
        part = (2 * (da > 0) + (db > 0)).reshape(-1, k)
        sure = (sure_a & sure_b).reshape(-1, k)
        table = np.full((len(pair), 4), _COMPLEX, dtype=np.int32)
        for q in range(4):
            hit = sure & (part == q)
            has = hit.any(axis=1)
            j = hit.argmax(axis=1)[has]
            table[has, q] = self._locate_slow(sx[has, j], sy[has, j])
        self.pair_table = np.hstack([seg_a, seg_b]).astype(np.float64)
        self.pair_lab = table
        labels[pair] = _PAIR
        self.cell_seg[pair] = np.arange(len(pair), dtype=np.int32)

    # -------------------------------------------------------------- queries
    def locate(self, x: float, y: float) -> int:
        """Local region number holding (x, y), or -1."""
        fx = (x - self.x0) * self.inv
        fy = (y - self.y0) * self.inv
        if not (0.0 <= fx < self.nx and 0.0 <= fy < self.ny):
            return -1  # also NaN
        cell = int(fy) * self.nx + int(fx)
        lab = self._labels_py[cell]
        if lab >= _EMPTY:
            return lab
        if lab == _SEGMENT:
            s = self._cell_seg_py[cell]
            x1, y1, x2, y2 = self._segs_py[s]
            dl = (x1 - x) * (y2 - y)
            dr = (y1 - y) * (x2 - x)
            det = dl - dr
            if abs(det) > _ORIENT_ERRBOUND * (abs(dl) + abs(dr)):
                pos, neg = self._seg_lab_py[s]
                return pos if det > 0 else neg
        elif lab == _PAIR:
            s = self._cell_seg_py[cell]
            ax1, ay1, ax2, ay2, bx1, by1, bx2, by2 = self._pairs_py[s]
            al = (ax1 - x) * (ay2 - y)
            ar = (ay1 - y) * (ax2 - x)
            bl = (bx1 - x) * (by2 - y)
            br = (by1 - y) * (bx2 - x)
            da, db = al - ar, bl - br
            if abs(da) > _ORIENT_ERRBOUND * (abs(al) + abs(ar)) and abs(db) > _ORIENT_ERRBOUND * (
                abs(bl) + abs(br)
            ):
                k = self._pair_lab_py[s][2 * (da > 0) + (db > 0)]
                if k != _COMPLEX:
                    return k
        slot = self._cell_slot_py[cell]
        for k in self.cand[self.cand_ptr[slot] : self.cand_ptr[slot + 1]].tolist():
            if shapely.intersects_xy(self.polygons[k], x, y):
                return k
        return -1

    def cells_into(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        fx: np.ndarray,
        fy: np.ndarray,
        ix: np.ndarray,
        cell: np.ndarray,
    ) -> None:
        """Write the raster cell of each point into ``cell`` (scratch: fx, fy, ix).

        Points off the raster (or NaN) land in its empty border.
        """
        np.subtract(xs, self.x0, out=fx)
        fx *= self.inv
        np.subtract(ys, self.y0, out=fy)
        fy *= self.inv
        # Clipping is cheaper than masking; the raster's outer cells never hold a region.
        np.clip(fx, 0.0, self.nx - 0.5, out=fx)
        np.clip(fy, 0.0, self.ny - 0.5, out=fy)
        if np.isnan(fx.sum() + fy.sum()):
            np.nan_to_num(fx, copy=False, nan=0.0)
            np.nan_to_num(fy, copy=False, nan=0.0)
        np.copyto(cell, fy, casting="unsafe")  # truncation = floor: both are >= 0
        cell *= self.nx
        np.copyto(ix, fx, casting="unsafe")
        cell += ix

    def cells(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Raster cell of each point (see :meth:`cells_into`)."""
        n = len(xs)
        cell = np.empty(n, dtype=np.intp)
        self.cells_into(xs, ys, np.empty(n), np.empty(n), np.empty(n, dtype=np.intp), cell)
        return cell

    def locate_many(
        self, xs: np.ndarray, ys: np.ndarray, cell: np.ndarray | None = None
    ) -> np.ndarray:
        """Region indices of many points (-1 where none), the same answers as `locate`."""
        if cell is None:
            cell = self.cells(xs, ys)
        out = self.labels[cell]
        bad = np.flatnonzero(out < _EMPTY)
        if len(bad) == 0:
            return out
        bcell = cell[bad]
        bx, by = xs[bad], ys[bad]
        kind = out[bad]
        fallback = (kind != _SEGMENT) & (kind != _PAIR)
        si = np.flatnonzero(kind == _SEGMENT)
        if len(si):
            s = self.cell_seg[bcell[si]]
            det, sure = _orient(self.seg_table[s], bx[si], by[si])
            res = np.where(det > 0, self.seg_pos[s], self.seg_neg[s])
            out[bad[si[sure]]] = res[sure]
            fallback[si[~sure]] = True
        pi = np.flatnonzero(kind == _PAIR)
        if len(pi):
            s = self.cell_seg[bcell[pi]]
            t = self.pair_table[s]
            da, sure_a = _orient(t[:, :4], bx[pi], by[pi])
            db, sure_b = _orient(t[:, 4:], bx[pi], by[pi])
            res = self.pair_lab[s, 2 * (da > 0) + (db > 0)]
            sure = sure_a & sure_b & (res != _COMPLEX)
            out[bad[pi[sure]]] = res[sure]
            fallback[pi[~sure]] = True
        fb = np.flatnonzero(fallback)
        if len(fb):
            out[bad[fb]] = self._fallback(bcell[fb], bx[fb], by[fb])
        return out

    def _fallback(self, cells: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        slot = self.cell_slot[cells]
        start, stop = self.cand_ptr[slot], self.cand_ptr[slot + 1]
        n = stop - start
        pt = np.repeat(np.arange(len(cells)), n)
        cand = self.cand[
            np.repeat(start, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        ]
        res = np.full(len(cells), -1, dtype=np.int32)
        for k in np.unique(cand):  # ascending: the first region in atlas order wins
            p = pt[cand == k]
            p = p[res[p] < 0]
            if len(p):
                hit = shapely.intersects_xy(self.polygons[k], xs[p], ys[p])
                res[p[hit]] = k
        return res


class Atlas:
    """The body diagram: regions, landmarks and exact hit testing.

    Use :func:`load_atlas` rather than building one yourself.
    """

    def __init__(self, data: dict[str, Any]):
        self.version: str = data["version"]
        self.grid: float = data["grid"]
        regions = []
        for i, r in enumerate(data["regions"]):
            kind = r.get("kind", model.Kind.MUSCLE.value)  # atlases before 2026.12 had no kind
            if kind not in model.KINDS or r["layer"] not in LAYERS:
                raise ValueError(f"atlas region {r['muscle']}: unknown kind or layer")
            regions.append(
                Region(
                    index=i,
                    muscle=r["muscle"],
                    name=r["name"],
                    side=r["side"],
                    view=r["view"],
                    layer=r["layer"],
                    # One polygon per region: the build keeps each region's largest part.
                    polygon=cast(Polygon, shape(r["geometry"])),
                    parent=r.get("parent"),
                    uberon=r.get("uberon"),
                    fma=r.get("fma"),
                    short=r.get("short", r["name"]),
                    kind=kind,
                )
            )
        self.regions: tuple[Region, ...] = tuple(regions)
        self.landmarks: tuple[Landmark, ...] = tuple(
            Landmark(lm["id"], lm["name"], lm["view"], lm["side"], shape(lm["geometry"]))
            for lm in data["landmarks"]
        )
        self._outlines = {v: shape(d["outline"]) for v, d in data["views"].items()}
        self._bounds: dict[str, tuple[float, float, float, float]] = {
            v: tuple(d["bounds"]) for v, d in data["views"].items()
        }
        self.views: tuple[str, ...] = tuple(v for v in VIEWS if v in self._outlines)
        #: Every region id (muscles and structures), in atlas order.
        self.muscles: tuple[str, ...] = tuple(dict.fromkeys(r.muscle for r in regions))
        self._names = {r.muscle: r.name for r in regions}
        self._kinds = {r.muscle: r.kind for r in regions}
        self._indexes: dict[tuple[str, str], _LayerIndex] = {}
        self._merged: dict[str, tuple[_LayerIndex, _LayerIndex, np.ndarray, array]] = {}

    def __repr__(self) -> str:
        return f"<Atlas {self.version}: {len(self.regions)} regions in {len(self.views)} views>"

    # -------------------------------------------------------------- lookup
    def outline(self, view: str) -> BaseGeometry:
        """The body silhouette of ``view`` (a Polygon or MultiPolygon)."""
        return self._outlines[self._check_view(view)]

    def bounds(self, view: str) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the silhouette of ``view``, in centimetres."""
        return self._bounds[self._check_view(view)]

    def muscle_name(self, muscle: str) -> str:
        """Display name of a region id, e.g. ``"vmo"`` -> ``"Vastus medialis obliquus"``.

        Every region has one, structures too: ``"mpfl"`` -> ``"Medial patellofemoral
        ligament"``. KeyError for an id the atlas does not draw.
        """
        return self._names[muscle]

    def kind(self, region_id: str) -> str:
        """The kind of a region id (one of :data:`tpmap.model.KINDS`).

        Examples
        --------
        >>> atlas = load_atlas()
        >>> atlas.kind("vmo"), atlas.kind("mpfl"), atlas.kind("iliotibial_band")
        ('muscle', 'ligament', 'fascia')
        """
        return self._kinds[region_id]

    def ids_of_kind(self, *kinds: str) -> tuple[str, ...]:
        """Region ids of the given kinds, in atlas order (e.g. every periosteal site)."""
        unknown = set(kinds) - set(model.KINDS)
        if unknown:
            raise ValueError(f"unknown kind {sorted(unknown)[0]!r}; choose from {model.KINDS}")
        return tuple(m for m in self.muscles if self._kinds[m] in kinds)

    def regions_in(self, view: str, layer: str | None = None) -> list[Region]:
        """Regions of one view (and layer, if given), in atlas order."""
        self._check_view(view)
        return [r for r in self.regions if r.view == view and layer in (None, r.layer)]

    def region(self, view: str, muscle: str, side: str, layer: str | None = None) -> Region:
        """The region of ``muscle`` on ``side`` in ``view``; KeyError if it is not drawn there."""
        for r in self.regions_in(view, layer):
            if r.muscle == muscle and r.side == side:
                return r
        raise KeyError(f"{muscle} ({side}) is not drawn on the {view} view")

    def landmark(self, id: str, view: str, side: str) -> Landmark:
        """One landmark by id, view and side; KeyError if it is not shown there."""
        for lm in self.landmarks:
            if (lm.id, lm.view, lm.side) == (id, view, side):
                return lm
        raise KeyError(f"landmark {id} ({side}) is not shown on the {view} view")

    def _check_view(self, view: str) -> str:
        if view not in self._outlines:
            raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
        return view

    def warm(self) -> None:
        """Build the hit-testing indexes of every view now (about a second in all).

        They are otherwise built on the first tap in each view; a server calls this in the
        background at start so that no clinician's first tap waits for it.
        """
        for view in self.views:
            self._both(view)
            self._index(view, model.Layer.STRUCTURES.value)

    def _index(self, view: str, layer: str) -> _LayerIndex:
        key = (view, layer)
        idx = self._indexes.get(key)
        if idx is None:
            if layer not in LAYERS:
                raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(LAYERS)}")
            idx = _LayerIndex(self.regions_in(view, layer), self.bounds(view))
            self._indexes[key] = idx
        return idx

    def _both(self, view: str) -> tuple[_LayerIndex, _LayerIndex, np.ndarray, array]:
        """Indexes of both layers and a merged raster answering "superficial, else deep".

        Cells settled in both layers carry the answer; the rest carry ``_DEFER`` and go
        through the superficial index and then, if they miss, the deep one.
        """
        both = self._merged.get(view)
        if both is None:
            sup, deep = self._index(view, "superficial"), self._index(view, "deep")
            merged = np.where(sup.labels >= 0, sup.labels, deep.labels)
            unsettled = (sup.labels < _EMPTY) | ((sup.labels == _EMPTY) & (deep.labels < _EMPTY))
            merged[unsettled] = _DEFER
            both = (sup, deep, merged, array("i", merged.tolist()))
            self._merged[view] = both
        return both

    # -------------------------------------------------------------- hit testing
    def region_at(self, view: str, x: float, y: float, layer: str | None = None) -> Region | None:
        """The region under one tap, or None off every region.

        Parameters
        ----------
        view : str
            One of :data:`VIEWS`.
        x, y : float
            Diagram coordinates in centimetres.
        layer : {"superficial", "deep", "structures"}, optional
            Look in one layer only; by default the superficial muscle, else the deep one
            (structures are looked up only on their own layer: they lie on bone under the
            muscles, so a tap on the muscle diagram names the muscle).

        Notes
        -----
        A point on a region's edge belongs to it; on an edge shared by two regions, to the
        one that comes first in atlas order. :meth:`classify` gives the same answers.
        """
        self._check_view(view)
        if layer is not None:
            k = self._index(view, layer).locate(x, y)
            return self.regions[k] if k >= 0 else None
        sup, deep, _, merged = self._both(view)
        fx = (x - sup.x0) * sup.inv
        fy = (y - sup.y0) * sup.inv
        if not (0.0 <= fx < sup.nx and 0.0 <= fy < sup.ny):
            return None  # also NaN
        k = merged[int(fy) * sup.nx + int(fx)]
        if k == _DEFER:
            k = sup.locate(x, y)
            if k < 0:
                k = deep.locate(x, y)
        return self.regions[k] if k >= 0 else None

    def classify(
        self, view: str, xs: Iterable[float], ys: Iterable[float], layer: str | None = None
    ) -> np.ndarray:
        """Exact, vectorised :meth:`region_at` for many points.

        Returns
        -------
        numpy.ndarray of int32
            For each point the index into :attr:`regions`, or -1 off every region (of
            ``layer``; by default of the muscle layers).

        Examples
        --------
        >>> atlas = load_atlas()
        >>> idx = atlas.classify("anterior", [5.0, 30.0], [54.0, 54.0])
        >>> [atlas.regions[i].muscle if i >= 0 else None for i in idx]
        ['vmo', None]
        """
        xs = np.asarray(xs, dtype=np.float64).ravel()
        ys = np.asarray(ys, dtype=np.float64).ravel()
        if xs.shape != ys.shape:
            raise ValueError("xs and ys must have the same length")
        self._check_view(view)
        if layer is None:
            sup, deep, table, _ = self._both(view)
        else:
            sup = deep = self._index(view, layer)
            table = sup.labels
        n = len(xs)
        out = np.empty(n, dtype=np.int32)
        # Work in chunks that stay in the CPU cache, with scratch buffers allocated once:
        # fresh million-element temporaries cost more in page faults than the arithmetic.
        size = min(n, _CHUNK)
        fx, fy = np.empty(size), np.empty(size)
        ix, cell = np.empty(size, dtype=np.intp), np.empty(size, dtype=np.intp)
        todo_parts, cell_parts = [], []
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            k = stop - start
            sup.cells_into(xs[start:stop], ys[start:stop], fx[:k], fy[:k], ix[:k], cell[:k])
            chunk = out[start:stop]
            np.take(table, cell[:k], out=chunk)
            # Merged raster: -4 defers; one layer: -2 and -3 need the exact tests.
            late = np.flatnonzero(chunk == _DEFER if layer is None else chunk < _EMPTY)
            if len(late):
                todo_parts.append(late + start)
                cell_parts.append(cell[late])
        if todo_parts:
            todo = np.concatenate(todo_parts)
            pc = np.concatenate(cell_parts)
            px, py = xs[todo], ys[todo]
            res = sup.locate_many(px, py, pc)
            if layer is None:
                miss = res < 0
                if miss.any():
                    res[miss] = deep.locate_many(px[miss], py[miss], pc[miss])
            out[todo] = res
        return out

    def mirror(self, view: str, x: float, y: float) -> tuple[str, float, float]:
        """Mirror a diagram position to the other side of the body.

        Anterior and posterior positions flip x about the midline; lateral positions move
        to the other lateral view, which is the exact mirror image.
        """
        return mirror_view(self._check_view(view)), -x, y


@cache
def load_atlas(path: str | None = None) -> Atlas:
    """Load the body atlas (cached).

    Parameters
    ----------
    path : str, optional
        A JSON file written by ``tpmap atlas --build``; by default the packaged atlas.

    Examples
    --------
    >>> atlas = load_atlas()
    >>> sorted(atlas.views)
    ['anterior', 'lateral_left', 'lateral_right', 'posterior']
    """
    file = Path(path) if path else assets_dir() / "atlas.json"
    return Atlas(json.loads(file.read_text()))
