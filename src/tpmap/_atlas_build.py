"""Build step for the atlas: smooth the compact source into polygons.

The source (``assets/atlas_source.toml``) holds a few control points per muscle; this module
turns them into Shapely polygons and writes ``assets/atlas.json``, which is committed and
loaded at run time by :mod:`tpmap.atlas`. Run it with ``tpmap atlas --build``; a test checks
that the committed JSON is what the source builds to.

The geometry pipeline, per view and layer:

1. each shape is smoothed (centripetal Catmull-Rom) into a polygon;
2. it is clipped to the body outline minus bare areas (the patella); structures (ligaments,
   tendons, periosteal sites: the ``structures`` layer) lie on bone and are clipped to the
   outline only;
3. it keeps only what earlier shapes of the same view and layer left, so regions never
   overlap, and neighbours authored to overlap meet exactly along a shared edge;
4. the authored side is mirrored to make the other side exactly symmetric.

All overlay operations run on a 0.001 cm precision grid (snap rounding), which keeps the
output valid, compact and reproducible.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from tpmap.model import KINDS, LAYERS, Kind, Layer

__all__ = ["GRID", "build_atlas", "source_path", "write_atlas"]

#: Precision grid of the generated geometry, in centimetres.
GRID = 0.001
#: Samples per spline segment between two control points.
SAMPLES = 12


def source_path() -> Path:
    """Return the path of the atlas source in the repository's ``assets/`` folder."""
    from tpmap.atlas import assets_dir

    return assets_dir() / "atlas_source.toml"


def catmull_rom(
    points: Sequence[Sequence[float]], *, closed: bool, samples: int = SAMPLES
) -> np.ndarray:
    """Sample a centripetal Catmull-Rom spline through ``points``.

    Centripetal parametrisation (alpha = 0.5) never overshoots into cusps or loops, so a
    few control points give a smooth, well-behaved outline.

    Parameters
    ----------
    points : sequence of (x, y)
        Control points; the curve passes through each.
    closed : bool
        Close the curve (a ring) or leave it open (a centreline).
    samples : int
        Samples per segment.

    Returns
    -------
    numpy.ndarray of shape (n, 2)

    Examples
    --------
    >>> catmull_rom([(0, 0), (1, 0), (1, 1)], closed=False, samples=2).shape
    (5, 2)
    """
    p = np.asarray(points, dtype=float)
    if closed:
        ext = np.vstack([p[-1], p, p[0], p[1]])
    else:
        # Reflect the end points so the curve starts and ends at the first and last point.
        ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(len(ext) - 3):
        p0, p1, p2, p3 = ext[i : i + 4]
        t0 = 0.0
        t1 = t0 + max(float(np.linalg.norm(p1 - p0)) ** 0.5, 1e-9)
        t2 = t1 + max(float(np.linalg.norm(p2 - p1)) ** 0.5, 1e-9)
        t3 = t2 + max(float(np.linalg.norm(p3 - p2)) ** 0.5, 1e-9)
        t = np.linspace(t1, t2, samples, endpoint=False)[:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    if not closed:
        out.append(p[-1:])
    return np.vstack(out)


def _strap(points: Sequence[Sequence[float]], widths: Sequence[float]) -> BaseGeometry:
    """A strap or fusiform belly: a smoothed centreline with a varying half-width."""
    if len(points) != len(widths):
        raise ValueError("a strap needs one width per centreline point")
    centre = catmull_rom(points, closed=False)
    n_seg = len(points) - 1
    # Widths are interpolated along the spline parameter, segment by segment.
    t = np.concatenate([np.linspace(i, i + 1, SAMPLES, endpoint=False) for i in range(n_seg)])
    half = np.interp(np.append(t, n_seg), np.arange(len(widths)), widths)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    left = centre + normal * half[:, None]
    right = centre - normal * half[:, None]
    ring = np.vstack([left, right[::-1]])
    # Round the ends and iron out the corners of the straight closing edges.
    return shapely.make_valid(Polygon(ring)).buffer(0.3, quad_segs=4).buffer(-0.3, quad_segs=4)


def make_shape(spec: dict[str, Any]) -> BaseGeometry:
    """Turn one shape description of the source into a polygon (not yet clipped).

    Typed as any geometry: shapely types what make_valid and buffer return so.
    """
    kind = spec["kind"]
    if kind == "blob":
        return shapely.make_valid(Polygon(catmull_rom(spec["points"], closed=True)))
    if kind == "strap":
        return _strap(spec["points"], spec["widths"])
    if kind == "polygon":
        return Polygon(spec["points"])
    if kind == "ellipse":
        (cx, cy), (rx, ry) = spec["center"], spec["radii"]
        return affinity.scale(Point(cx, cy).buffer(1.0, quad_segs=16), rx, ry)
    if kind == "circle":
        return Point(*spec["center"]).buffer(spec["radius"], quad_segs=8)
    raise ValueError(f"unknown shape kind {kind!r}")


def _landmark_geometry(spec: dict[str, Any]) -> BaseGeometry:
    kind = spec["kind"]
    if kind == "point":
        return Point(*spec["at"])
    if kind == "line":
        return LineString(spec["points"])
    return make_shape(spec)


def _largest(geom: BaseGeometry) -> Polygon:
    """Keep the largest polygon of an overlay result (drops slivers of a few grid cells)."""
    if isinstance(geom, Polygon):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]
    if not polys:
        return Polygon()
    return max(polys, key=lambda g: g.area)


def _snap(geom: BaseGeometry) -> BaseGeometry:
    return shapely.set_precision(geom, GRID)


@dataclass(frozen=True)
class _Placement:
    """How authored coordinates map onto each side of a view."""

    view: str
    side: str
    x_sign: float


def _placements(name: str, spec: dict[str, Any]) -> list[_Placement]:
    authored = spec["authored_side"]
    other = "right" if authored == "left" else "left"
    sign = float(spec.get("x_sign", 1))
    if "mirror_view" in spec:  # lateral views: one side each, mirror images of each other
        return [_Placement(name, authored, sign), _Placement(spec["mirror_view"], other, -sign)]
    return [_Placement(name, authored, sign), _Placement(name, other, -sign)]


def _place(geom: BaseGeometry, sign: float) -> BaseGeometry:
    # Scaling by +-1 about x = 0 is exact in floating point, so sides mirror exactly.
    return geom if sign == 1 else affinity.scale(geom, -1.0, 1.0, origin=(0.0, 0.0))


def _rounded(coords: Any) -> list[Any]:
    if isinstance(coords, tuple | list) and coords and isinstance(coords[0], float | int):
        return [round(float(c), 3) for c in coords]
    return [_rounded(c) for c in coords]


def _geojson(geom: BaseGeometry) -> dict[str, Any]:
    m = mapping(geom)
    return {"type": m["type"], "coordinates": _rounded(m["coordinates"])}


def _region_id(spec: dict[str, Any]) -> str:
    """The region a shape draws: ``muscle = "..."`` or ``structure = "..."``."""
    return spec["structure"] if "structure" in spec else spec["muscle"]


def _layer_of(spec: dict[str, Any]) -> str:
    if "structure" in spec:
        return Layer.STRUCTURES.value
    layer = spec.get("layer", Layer.SUPERFICIAL.value)
    if layer not in (Layer.SUPERFICIAL, Layer.DEEP):
        raise ValueError(
            f"{spec['muscle']}: a muscle's layer is superficial or deep, not {layer!r}"
        )
    return layer


def _region_meta(
    muscles: dict[str, dict[str, Any]], structures: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Names and kinds of every region id, checked: ids are unique, kinds known."""
    both = set(muscles) & set(structures)
    if both:
        raise ValueError(f"ids used for a muscle and a structure: {sorted(both)}")
    out: dict[str, dict[str, Any]] = {}
    for rid, meta in muscles.items():
        kind = meta.get("kind", Kind.MUSCLE.value)
        if kind not in (Kind.MUSCLE, Kind.FASCIA):
            raise ValueError(f"{rid}: a region of the muscle layers is a muscle or fascia")
        out[rid] = {**meta, "kind": kind}
    for rid, meta in structures.items():
        kind = meta.get("kind")
        allowed = [k for k in KINDS if k != Kind.MUSCLE]
        if kind not in allowed:
            raise ValueError(f"{rid}: a structure's kind is one of {', '.join(allowed)}")
        out[rid] = meta
    return out


def build_atlas(source: Path | None = None) -> dict[str, Any]:
    """Build the atlas geometry from its source description.

    Parameters
    ----------
    source : Path, optional
        The TOML source; defaults to ``assets/atlas_source.toml``.

    Returns
    -------
    dict
        JSON-ready: ``version``, ``views`` (outline and bounds), ``regions``, ``landmarks``.
    """
    source = source or source_path()
    raw = source.read_bytes()
    spec = tomllib.loads(raw.decode("utf-8"))
    digest = hashlib.sha256(raw).hexdigest()
    muscles: dict[str, dict[str, Any]] = spec["muscles"]
    structures: dict[str, dict[str, Any]] = spec.get("structures", {})
    meta_of = _region_meta(muscles, structures)
    landmark_names: dict[str, str] = spec["landmark_names"]

    views_out: dict[str, Any] = {}
    regions_out: list[dict[str, Any]] = []
    landmarks_out: list[dict[str, Any]] = []

    for view_name, vspec in spec["views"].items():
        clip = box(*vspec["clip"])
        outline = _snap(
            shapely.intersection(
                shapely.make_valid(Polygon(catmull_rom(vspec["outline"], closed=True))),
                clip,
                grid_size=GRID,
            )
        )
        bare = shapely.union_all([make_shape(b) for b in vspec.get("bare", [])], grid_size=GRID)
        # Muscles stop at bare bone (the patella); structures lie on it.
        muscle_area = shapely.difference(outline, bare, grid_size=GRID)
        raw_shapes = {(_region_id(s), _layer_of(s)): make_shape(s) for s in vspec["shapes"]}

        authored: list[tuple[str, str, Polygon]] = []
        for layer in LAYERS:
            available = outline if layer == Layer.STRUCTURES else muscle_area
            taken: BaseGeometry = Polygon()
            for s in vspec["shapes"]:
                if _layer_of(s) != layer:
                    continue
                rid = _region_id(s)
                shape = raw_shapes[(rid, layer)]
                if "within" in s:
                    shape = shapely.intersection(shape, raw_shapes[(s["within"], layer)])
                region = shapely.intersection(shape, available, grid_size=GRID)
                region = _largest(shapely.difference(region, taken, grid_size=GRID))
                if region.is_empty:
                    raise ValueError(f"{view_name}: {rid} is empty after clipping")
                taken = shapely.union(taken, region, grid_size=GRID)
                authored.append((rid, layer, region))

        placements = _placements(view_name, vspec)
        for pl in placements:
            if pl.view not in views_out:
                views_out[pl.view] = {"outline": []}
        for pl in placements:
            for rid, layer, region in authored:
                meta = meta_of[rid]
                regions_out.append(
                    {
                        "muscle": rid,
                        "name": meta["name"],
                        "short": meta.get("short", meta["name"]),
                        "kind": meta["kind"],
                        "side": pl.side,
                        "view": pl.view,
                        "layer": layer,
                        "parent": meta.get("parent"),
                        "uberon": meta.get("uberon"),
                        "fma": meta.get("fma"),
                        "geometry": _geojson(shapely.normalize(_place(region, pl.x_sign))),
                    }
                )
            for lid, lspec in vspec.get("landmarks", {}).items():
                landmarks_out.append(
                    {
                        "id": lid,
                        "name": landmark_names[lid],
                        "view": pl.view,
                        "side": pl.side,
                        "geometry": _geojson(_place(_landmark_geometry(lspec), pl.x_sign)),
                    }
                )
            views_out[pl.view]["outline"].append(_place(outline, pl.x_sign))

    for name, v in views_out.items():
        merged = _snap(shapely.union_all(v.pop("outline"), grid_size=GRID))
        views_out[name] = {
            "outline": _geojson(shapely.normalize(merged)),
            "bounds": [round(b, 3) for b in merged.bounds],
        }

    return {
        "version": f"{spec['version']}+{digest[:8]}",
        "source_sha256": digest,
        "grid": GRID,
        "views": views_out,
        "regions": regions_out,
        "landmarks": landmarks_out,
    }


def write_atlas(out: Path | None = None, source: Path | None = None) -> Path:
    """Build the atlas and write it as JSON (``assets/atlas.json`` by default)."""
    from tpmap.atlas import assets_dir

    out = out or assets_dir() / "atlas.json"
    data = build_atlas(source)
    out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    return out
