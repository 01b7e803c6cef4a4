"""The body atlas: geometry quality, anatomy, and exact hit testing."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import affinity

from tpmap import load_atlas
from tpmap._atlas_build import build_atlas
from tpmap.atlas import LAYERS, VIEWS, assets_dir

# Every muscle of shared/ANATOMY.md section 1, and where it must at least be drawn.
REQUIRED = {
    "anterior": {
        "superficial": {
            "vmo",
            "vastus_medialis",
            "vastus_lateralis",
            "rectus_femoris",
            "sartorius",
            "adductors",
            "tensor_fasciae_latae",
            "tibialis_anterior",
            "fibularis_longus",
            "gastrocnemius_medial",
            "soleus",
        },
    },
    "posterior": {
        "superficial": {
            "gluteus_maximus",
            "gluteus_medius",
            "quadratus_lumborum",
            "erector_spinae",
            "biceps_femoris",
            "semitendinosus_semimembranosus",
            "adductors",
            "gastrocnemius_medial",
            "gastrocnemius_lateral",
            "soleus",
        },
        "deep": {"piriformis", "gluteus_minimus", "popliteus"},
    },
    "lateral_right": {
        "superficial": {
            "iliotibial_band",
            "gluteus_medius",
            "gluteus_maximus",
            "tensor_fasciae_latae",
            "vastus_lateralis",
            "biceps_femoris",
            "fibularis_longus",
            "tibialis_anterior",
            "gastrocnemius_lateral",
            "soleus",
        },
        "deep": {"gluteus_minimus"},
    },
}
REQUIRED["lateral_left"] = REQUIRED["lateral_right"]
DEEP = {"gluteus_minimus", "piriformis", "popliteus"}
# The MPFL is a region of the structures layer now, no longer a landmark.
LANDMARKS = {
    "patella",
    "joint_line",
    "fibular_head",
    "greater_trochanter",
    "iliac_crest",
    "asis",
    "psis",
    "rib_12",
}

# Muscles drawn side by side that must share an edge (no gap between them).
NEIGHBOURS = {
    "anterior": [
        ("vmo", "vastus_medialis"),
        ("rectus_femoris", "vastus_lateralis"),
        ("rectus_femoris", "vastus_medialis"),
        ("sartorius", "adductors"),
        ("sartorius", "vastus_medialis"),
        ("tensor_fasciae_latae", "vastus_lateralis"),
        ("tibialis_anterior", "fibularis_longus"),
        ("gastrocnemius_medial", "soleus"),
    ],
    "posterior": [
        ("erector_spinae", "quadratus_lumborum"),
        ("gluteus_medius", "gluteus_maximus"),
        ("biceps_femoris", "semitendinosus_semimembranosus"),
        ("gastrocnemius_medial", "gastrocnemius_lateral"),
        ("gastrocnemius_medial", "soleus"),
        ("piriformis", "gluteus_minimus"),
    ],
    "lateral_right": [
        ("gluteus_medius", "tensor_fasciae_latae"),
        ("gluteus_medius", "gluteus_maximus"),
        ("iliotibial_band", "vastus_lateralis"),
        ("iliotibial_band", "biceps_femoris"),
        ("fibularis_longus", "tibialis_anterior"),
        ("fibularis_longus", "soleus"),
    ],
}


@pytest.fixture(scope="module")
def atlas():
    return load_atlas()


def centroid(atlas, view, muscle, side, layer=None):
    return atlas.region(view, muscle, side, layer).polygon.centroid


def test_committed_geometry_is_built_from_the_current_source():
    committed = json.loads((assets_dir() / "atlas.json").read_text())
    rebuilt = json.loads(json.dumps(build_atlas()))
    assert committed["source_sha256"] == rebuilt["source_sha256"], (
        "assets/atlas.json is stale: run `tpmap atlas --build`"
    )
    assert committed == rebuilt


def test_version_names_the_source(atlas):
    data = json.loads((assets_dir() / "atlas.json").read_text())
    assert atlas.version.endswith(data["source_sha256"][:8])


def test_every_polygon_is_valid_non_empty_and_inside_the_body(atlas):
    for r in atlas.regions:
        assert r.polygon.geom_type == "Polygon", r
        assert r.polygon.is_valid and not r.polygon.is_empty, r
        assert r.polygon.area > 1.0, r  # at least 1 cm2: tappable on a tablet
        outline = atlas.outline(r.view)
        outside = shapely.difference(r.polygon, outline).area
        assert outside <= 1e-4 * r.polygon.area, r  # snap rounding on the 0.01 mm grid


def test_no_overlaps_within_a_view_side_and_layer(atlas):
    for view, layer in itertools.product(VIEWS, LAYERS):
        regions = atlas.regions_in(view, layer)
        for a, b in itertools.combinations(regions, 2):
            if a.side != b.side:
                continue
            overlap = shapely.intersection(a.polygon, b.polygon).area
            assert overlap <= 0.001 * min(a.polygon.area, b.polygon.area), (a, b)


@pytest.mark.parametrize("view", NEIGHBOURS)
def test_neighbouring_muscles_meet_without_a_gap(atlas, view):
    for m1, m2 in NEIGHBOURS[view]:
        for side in ("left", "right"):
            if view.startswith("lateral") and side != view.split("_")[1]:
                continue
            layer = "deep" if m1 in DEEP else "superficial"
            a = atlas.region(view, m1, side, layer).polygon
            b = atlas.region(view, m2, side, layer).polygon
            shared = shapely.intersection(a.boundary, b.boundary).length
            assert shared > 1.0, f"{m1} and {m2} ({side}) share only {shared:.2f} cm of edge"


def test_every_required_muscle_is_drawn_on_both_sides_in_its_layer(atlas):
    for view, layers in REQUIRED.items():
        for layer, muscles in layers.items():
            for side in ("left", "right"):
                if view.startswith("lateral") and side != view.split("_")[1]:
                    continue
                drawn = {r.muscle for r in atlas.regions_in(view, layer) if r.side == side}
                assert muscles <= drawn, (view, layer, side, muscles - drawn)


def test_region_metadata(atlas):
    vmo = atlas.region("anterior", "vmo", "left")
    assert vmo.parent == "vastus_medialis" and vmo.name == "Vastus medialis obliquus"
    assert atlas.region("posterior", "gluteus_medius", "right").uberon == "UBERON:0001371"
    assert atlas.region("posterior", "quadratus_lumborum", "right").fma == "FMA:15569"
    for r in atlas.regions:
        if r.layer != "structures":
            assert r.layer == ("deep" if r.muscle in DEEP else "superficial"), r
    assert atlas.muscle_name("gluteus_medius") == "Gluteus medius"


def test_landmarks_are_named_and_placed(atlas):
    assert {lm.id for lm in atlas.landmarks} == LANDMARKS
    patella = atlas.landmark("patella", "anterior", "left").geometry
    joint_line = atlas.landmark("joint_line", "anterior", "left").geometry
    # The joint line is about level with the lower pole of the patella.
    assert abs(patella.bounds[1] - joint_line.coords[0][1]) < 1.0
    rib = atlas.landmark("rib_12", "posterior", "left").geometry
    crest = atlas.landmark("iliac_crest", "posterior", "left").geometry
    assert min(y for _, y in rib.coords) > max(y for _, y in crest.coords)


@pytest.mark.parametrize("view", ["anterior", "posterior"])
def test_left_is_the_exact_mirror_of_right(atlas, view):
    for r in atlas.regions_in(view):
        if r.side != "left":
            continue
        twin = atlas.region(view, r.muscle, "right", r.layer)
        mirrored = affinity.scale(twin.polygon, -1, 1, origin=(0, 0))
        assert shapely.equals_exact(shapely.normalize(mirrored), r.polygon, tolerance=1e-9)
    outline = atlas.outline(view)
    mirrored = affinity.scale(outline, -1, 1, origin=(0, 0))
    assert shapely.symmetric_difference(outline, mirrored).area < 1e-6


def test_lateral_views_are_mirror_images(atlas):
    for r in atlas.regions_in("lateral_left"):
        assert r.side == "left"
        twin = atlas.region("lateral_right", r.muscle, "right", r.layer)
        mirrored = affinity.scale(twin.polygon, -1, 1, origin=(0, 0))
        assert shapely.equals_exact(shapely.normalize(mirrored), r.polygon, tolerance=1e-9)


def test_anterior_relations(atlas):
    for side in ("left", "right"):
        medial = -1 if side == "left" else 1  # patient's left is at +x on the anterior view
        vmo = centroid(atlas, "anterior", "vmo", side)
        rf = centroid(atlas, "anterior", "rectus_femoris", side)
        vl = centroid(atlas, "anterior", "vastus_lateralis", side)
        vm = centroid(atlas, "anterior", "vastus_medialis", side)
        assert vmo.y < rf.y, "VMO lies distal to rectus femoris"
        assert (vmo.x - rf.x) * medial > 0, "VMO lies medial to rectus femoris"
        assert (vl.x - rf.x) * medial < 0, "vastus lateralis lies lateral to rectus femoris"
        assert vmo.y < vm.y, "VMO is the distal part of vastus medialis"
        patella = atlas.landmark("patella", "anterior", side).geometry.centroid
        assert (vmo.x - patella.x) * medial > 0 and vmo.y > patella.y
    # Patient's right is on the viewer's left.
    assert centroid(atlas, "anterior", "vmo", "right").x < 0


def test_vmo_is_carved_out_of_vastus_medialis(atlas):
    vmo = atlas.region("anterior", "vmo", "left").polygon
    vm = atlas.region("anterior", "vastus_medialis", "left").polygon
    share = vmo.area / (vmo.area + vm.area)
    assert 0.15 < share < 0.45, f"VMO is {share:.0%} of vastus medialis"
    # Its upper edge runs obliquely (30-60 degrees from the vertical) to the patella.
    edge = shapely.intersection(vmo.boundary, vm.boundary)
    x0, y0, x1, y1 = edge.bounds
    angle = np.degrees(np.arctan2(x1 - x0, y1 - y0))
    assert 30 <= angle <= 60


def test_posterior_relations(atlas):
    for side in ("left", "right"):
        lateral = -1 if side == "left" else 1  # patient's left is at -x on the posterior view
        gmed = centroid(atlas, "posterior", "gluteus_medius", side)
        gmax = centroid(atlas, "posterior", "gluteus_maximus", side)
        assert gmed.y > gmax.y, "gluteus medius lies above gluteus maximus"
        ql = atlas.region("posterior", "quadratus_lumborum", side).polygon
        es = centroid(atlas, "posterior", "erector_spinae", side)
        rib = atlas.landmark("rib_12", "posterior", side).geometry
        crest = atlas.landmark("iliac_crest", "posterior", side).geometry
        assert crest.centroid.y < ql.centroid.y < rib.centroid.y
        assert ql.bounds[3] <= max(y for _, y in rib.coords) + 0.5
        assert ql.bounds[1] >= min(y for _, y in crest.coords) - 0.5
        assert (ql.centroid.x - es.x) * lateral > 0, "QL lies lateral to erector spinae"
        bf = centroid(atlas, "posterior", "biceps_femoris", side)
        semi = centroid(atlas, "posterior", "semitendinosus_semimembranosus", side)
        assert (bf.x - semi.x) * lateral > 0, "biceps femoris lies lateral to medial hamstrings"
        head = atlas.landmark("fibular_head", "posterior", side).geometry
        bf_poly = atlas.region("posterior", "biceps_femoris", side).polygon
        assert bf_poly.distance(head) < 1.5, "biceps femoris runs to the fibular head"
        gm = centroid(atlas, "posterior", "gastrocnemius_medial", side)
        gl = centroid(atlas, "posterior", "gastrocnemius_lateral", side)
        assert (gl.x - gm.x) * lateral > 0
        sol = centroid(atlas, "posterior", "soleus", side)
        assert sol.y < gm.y


def test_lateral_relations(atlas):
    itb = atlas.region("lateral_right", "iliotibial_band", "right").polygon
    assert itb.bounds[3] - itb.bounds[1] > 35, "the ITB runs from the hip to below the knee"
    tfl = centroid(atlas, "lateral_right", "tensor_fasciae_latae", "right")
    gmax = centroid(atlas, "lateral_right", "gluteus_maximus", "right")
    gmed = centroid(atlas, "lateral_right", "gluteus_medius", "right")
    assert tfl.x > gmed.x > gmax.x, "TFL in front, gluteus medius between, maximus behind"
    gmin = atlas.region("lateral_right", "gluteus_minimus", "right", "deep").polygon
    gmed_poly = atlas.region("lateral_right", "gluteus_medius", "right").polygon
    assert shapely.intersection(gmin, gmed_poly).area > 0.5 * gmin.area, "minimus under medius"


def test_taps_outside_the_body_return_nothing(atlas):
    for view in VIEWS:
        xmin, _, xmax, ymax = atlas.bounds(view)
        for x, y in [(xmax + 1, 60), (xmin - 5, 60), (0, ymax + 3), (0, -10), (1e9, 1e9)]:
            assert atlas.region_at(view, x, y) is None
        assert atlas.region_at(view, float("nan"), 50.0) is None
    assert atlas.region_at("anterior", 0.0, 60.0) is None  # between the thighs
    xs = np.array([100.0, -100.0, np.nan, np.inf])
    assert (atlas.classify("posterior", xs, np.array([50.0, 50.0, 50.0, 50.0])) == -1).all()


def test_a_tap_names_the_muscle_under_it(atlas):
    vmo = atlas.region("anterior", "vmo", "right")
    p = vmo.polygon.representative_point()
    assert atlas.region_at("anterior", p.x, p.y) == vmo
    gmed = atlas.region("posterior", "gluteus_medius", "left")
    p = gmed.polygon.representative_point()
    assert atlas.region_at("posterior", p.x, p.y).muscle == "gluteus_medius"
    # A deep muscle under a superficial one: the layer decides.
    gmin = atlas.region("posterior", "gluteus_minimus", "left", "deep").polygon
    p = shapely.intersection(gmin, gmed.polygon).representative_point()
    assert atlas.region_at("posterior", p.x, p.y).muscle == "gluteus_medius"
    assert atlas.region_at("posterior", p.x, p.y, layer="deep").muscle == "gluteus_minimus"
    with pytest.raises(ValueError, match="unknown view"):
        atlas.region_at("dorsal", 0, 0)


def _reference(atlas, view, xs, ys, layer=None):
    """Plain per-polygon Shapely classification with the documented tie rule."""
    out = np.full(len(xs), -1)
    for lay in ("deep", "superficial") if layer is None else (layer,):
        for r in reversed(atlas.regions_in(view, lay)):
            out[shapely.intersects_xy(r.polygon, xs, ys)] = r.index
    return out


def _edge_points(atlas, view):
    pts = np.vstack([shapely.get_coordinates(r.polygon) for r in atlas.regions_in(view)])
    mid = (pts[:-1] + pts[1:]) / 2
    eps = np.array([0.0, 1e-13, -1e-13, 1e-9, -1e-6, 1e-3])
    near = np.vstack([pts + e for e in eps] + [mid + np.array([e, -e]) for e in eps])
    return near[:, 0].copy(), near[:, 1].copy()


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("layer", [None, *LAYERS])
def test_vectorised_classification_agrees_with_single_taps(atlas, view, layer):
    rng = np.random.default_rng(42)
    xmin, ymin, xmax, ymax = atlas.bounds(view)
    xs = np.concatenate([rng.uniform(xmin - 2, xmax + 2, 20_000), _edge_points(atlas, view)[0]])
    ys = np.concatenate([rng.uniform(ymin - 2, ymax + 2, 20_000), _edge_points(atlas, view)[1]])
    bulk = atlas.classify(view, xs, ys, layer=layer)
    assert (bulk == _reference(atlas, view, xs, ys, layer)).all()
    sample = rng.choice(len(xs), 3000, replace=False)
    one = [atlas.region_at(view, xs[i], ys[i], layer=layer) for i in sample]
    assert [r.index if r else -1 for r in one] == bulk[sample].tolist()


@settings(max_examples=300, deadline=None)
@given(
    view=st.sampled_from(VIEWS),
    layer=st.sampled_from([None, *LAYERS]),
    x=st.floats(-30, 30, allow_nan=False),
    y=st.floats(0, 125, allow_nan=False),
)
def test_property_single_tap_matches_bulk_and_shapely(view, layer, x, y):
    atlas = load_atlas()
    r = atlas.region_at(view, x, y, layer=layer)
    bulk = atlas.classify(view, [x], [y], layer=layer)[0]
    assert (r.index if r else -1) == bulk == _reference(atlas, view, [x], [y], layer)[0]


def test_mirror_moves_a_position_to_the_other_side(atlas):
    p = atlas.region("anterior", "vmo", "left").polygon.representative_point()
    view, x, y = atlas.mirror("anterior", p.x, p.y)
    assert atlas.region_at(view, x, y).side == "right"
    p = atlas.region("lateral_left", "iliotibial_band", "left").polygon.representative_point()
    view, x, y = atlas.mirror("lateral_left", p.x, p.y)
    assert view == "lateral_right"
    assert atlas.region_at(view, x, y).muscle == "iliotibial_band"


def test_warm_builds_every_index_and_changes_no_answer():
    from tpmap.atlas import Atlas

    fresh = Atlas(json.loads((assets_dir() / "atlas.json").read_text()))
    fresh.warm()
    assert {v for v, _ in fresh._indexes} == set(VIEWS)
    p = fresh.region("anterior", "vmo", "left").polygon.representative_point()
    assert fresh.region_at("anterior", p.x, p.y).muscle == "vmo"


@pytest.mark.parametrize("layer", ["superficial", "structures"])
def test_cells_crossed_by_two_edges_are_decided_exactly(atlas, layer):
    """Cells holding a polygon corner (two edges) are settled by two side-of-line tests."""
    from tpmap.atlas import _PAIR

    index = atlas._index("anterior", layer)
    cells = np.flatnonzero(index.labels == _PAIR)
    assert len(cells) > 500  # corners are common: the fast path must carry them
    rng = np.random.default_rng(11)
    pick = np.repeat(cells, 8)
    xs = index.x0 + (pick % index.nx + rng.uniform(0, 1, len(pick))) * index.cell
    ys = index.y0 + (pick // index.nx + rng.uniform(0, 1, len(pick))) * index.cell
    # And points within rounding distance of the cells' own edges and corners.
    segs = index.pair_table[index.cell_seg[cells]]
    t = rng.uniform(0, 1, len(cells))[:, None]
    on_edge = segs[:, :2] + t * (segs[:, 2:4] - segs[:, :2])
    xs = np.concatenate([xs, on_edge[:, 0], segs[:, 2] + 1e-13, segs[:, 0]])
    ys = np.concatenate([ys, on_edge[:, 1], segs[:, 3] - 1e-13, segs[:, 1]])
    bulk = atlas.classify("anterior", xs, ys, layer=layer)
    assert (bulk == _reference(atlas, "anterior", xs, ys, layer)).all()
    sample = rng.choice(len(xs), 2000, replace=False)
    one = [atlas.region_at("anterior", xs[i], ys[i], layer=layer) for i in sample]
    assert [r.index if r else -1 for r in one] == bulk[sample].tolist()
