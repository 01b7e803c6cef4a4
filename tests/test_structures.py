"""The structures layer: needled ligaments, tendons and periosteal sites (ANATOMY.md 1c).

Their anatomy (where each lies relative to the knee joint line, the patella and each other),
their geometry (no overlap, exact mirrors), their ids and kinds, hit testing on their layer,
and how the diagram draws them.
"""

from __future__ import annotations

import re
import tomllib

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import affinity
from shapely.ops import nearest_points

from tpmap import load_atlas
from tpmap._atlas_build import source_path
from tpmap.atlas import LAYERS, MUSCLE_LAYERS, VIEWS
from tpmap.model import KIND_LABELS, KINDS, LAYER_LABELS, Kind, Layer
from tpmap.plotting import LAYER_RENDERERS, atlas_figure, atlas_overview, show_layer

STRUCTURES = "structures"
# Every structure of ANATOMY.md 1c with its kind, and the views it must be drawn on.
KIND_OF = {
    "mpfl": "ligament",
    "mcl": "ligament",
    "lcl": "ligament",
    "quadriceps_tendon": "tendon",
    "patellar_tendon": "tendon",
    "pes_anserinus": "tendon",
    "medial_joint_line": "periosteum",
    "lateral_joint_line": "periosteum",
    "medial_epicondyle": "periosteum",
    "lateral_epicondyle": "periosteum",
    "adductor_tubercle": "periosteum",
    "patellar_borders": "periosteum",
    "tibial_tuberosity": "periosteum",
    "fibular_head": "periosteum",
    "greater_trochanter": "periosteum",
}
LATERAL = {
    "lcl",
    "lateral_epicondyle",
    "lateral_joint_line",
    "fibular_head",
    "patellar_borders",
    "quadriceps_tendon",
    "patellar_tendon",
    "tibial_tuberosity",
    "greater_trochanter",
}
DRAWN_ON = {
    "anterior": set(KIND_OF) - {"lcl", "fibular_head"},
    "posterior": {"fibular_head", "greater_trochanter"},
    "lateral_right": LATERAL,
    "lateral_left": LATERAL,
}
# shared/ANATOMY.md 1b: knee joint at 0.285 H, hip joint (greater trochanter) at 0.530 H.
HEIGHT_CM = 170.0
KNEE_JOINT_Y = 0.285 * HEIGHT_CM
HIP_JOINT_Y = 0.530 * HEIGHT_CM


@pytest.fixture(scope="module")
def atlas():
    return load_atlas()


def sides_of(view: str) -> tuple[str, ...]:
    return (view.split("_")[1],) if view.startswith("lateral") else ("left", "right")


def poly(atlas, view, rid, side, layer=STRUCTURES):
    return atlas.region(view, rid, side, layer).polygon


def medial_sign(side: str) -> int:
    """+1 if larger x is medial on the anterior view (the patient's left is at +x)."""
    return -1 if side == "left" else 1


def anterior_sign(view: str) -> int:
    """+1 if larger x is anterior on a lateral view (they are mirror images)."""
    return 1 if view == "lateral_right" else -1


def joint_line_y(atlas, view, side) -> float:
    line = atlas.landmark("joint_line", view, side).geometry
    ys = {y for _, y in line.coords}
    assert len(ys) == 1, "the joint line is drawn level"
    return ys.pop()


# ---------------------------------------------------------------- ids, kinds, names


def test_every_structure_is_drawn_on_its_views_and_sides_in_its_own_layer(atlas):
    for view, expected in DRAWN_ON.items():
        for side in sides_of(view):
            drawn = {r.muscle for r in atlas.regions_in(view, STRUCTURES) if r.side == side}
            assert drawn == expected, (view, side, drawn ^ expected)
    assert not set(KIND_OF) & {r.muscle for r in atlas.regions if r.layer in MUSCLE_LAYERS}


def test_every_region_has_a_kind_and_structures_are_not_muscles(atlas):
    for r in atlas.regions:
        assert r.kind in KINDS, r
        if r.layer == STRUCTURES:
            assert r.kind == KIND_OF[r.muscle], r
        else:
            assert r.kind == ("fascia" if r.muscle == "iliotibial_band" else "muscle"), r
    assert atlas.kind("iliotibial_band") == "fascia"
    assert atlas.kind("mpfl") == "ligament" and atlas.kind("vmo") == "muscle"
    assert set(atlas.ids_of_kind("periosteum")) == {
        k for k, v in KIND_OF.items() if v == "periosteum"
    }
    with pytest.raises(ValueError, match="unknown kind"):
        atlas.ids_of_kind("bone")


def test_every_structure_has_a_name_and_a_short_name(atlas):
    assert atlas.muscle_name("mpfl") == "Medial patellofemoral ligament"
    assert atlas.muscle_name("medial_joint_line") == "Medial tibiofemoral joint line"
    for r in atlas.regions_in("anterior", STRUCTURES):
        assert r.name and r.short and r.label == f"{r.name} ({r.side})"
        assert r.name == atlas.muscle_name(r.muscle)


def test_layer_and_kind_vocabularies_are_one(atlas):
    assert LAYERS == ("superficial", "deep", "structures") == tuple(Layer)
    assert Layer.STRUCTURES == "structures"
    assert set(LAYER_LABELS) == set(LAYERS)
    assert LAYER_LABELS["structures"] == "Ligaments, tendons, bone"
    assert set(KIND_LABELS) == set(KINDS) == {k.value for k in Kind}


def test_every_structure_has_an_ontology_id_or_says_why_not(atlas):
    source = tomllib.loads(source_path().read_text())["structures"]
    assert set(source) == set(KIND_OF)
    for rid, meta in source.items():
        has_id = "uberon" in meta or "fma" in meta
        assert has_id != ("no_ontology_id" in meta), f"{rid}: an id or a reason, not both"
        if "uberon" in meta:
            assert re.fullmatch(r"UBERON:\d{7}", meta["uberon"]), rid
        if "fma" in meta:
            assert re.fullmatch(r"FMA:\d+", meta["fma"]), rid
        for r in atlas.regions:
            if r.muscle == rid:
                assert (r.uberon, r.fma) == (meta.get("uberon"), meta.get("fma")), r
    # The ones UBERON names exactly (checked against its musculoskeletal subset).
    assert source["patellar_tendon"]["uberon"] == "UBERON:0003676"
    assert source["medial_epicondyle"]["fma"] == "FMA:32864"
    assert source["pes_anserinus"]["uberon"] == "UBERON:0008977"


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("view", VIEWS)
def test_structures_do_not_overlap_and_are_tappable(atlas, view):
    for side in sides_of(view):
        regions = [r for r in atlas.regions_in(view, STRUCTURES) if r.side == side]
        for r in regions:
            assert r.polygon.geom_type == "Polygon" and r.polygon.is_valid, r
            assert r.polygon.area >= 1.0, r  # at least 1 cm2
        union = shapely.union_all([r.polygon for r in regions])
        assert sum(r.polygon.area for r in regions) - union.area < 1e-3


def test_structures_are_exact_mirrors(atlas):
    for view in ("anterior", "posterior"):
        for r in atlas.regions_in(view, STRUCTURES):
            if r.side == "left":
                twin = poly(atlas, view, r.muscle, "right")
                mirrored = affinity.scale(twin, -1, 1, origin=(0, 0))
                assert shapely.equals_exact(shapely.normalize(mirrored), r.polygon, 1e-9), r
    for r in atlas.regions_in("lateral_left", STRUCTURES):
        twin = poly(atlas, "lateral_right", r.muscle, "right")
        mirrored = affinity.scale(twin, -1, 1, origin=(0, 0))
        assert shapely.equals_exact(shapely.normalize(mirrored), r.polygon, 1e-9), r


# ---------------------------------------------------------------- anatomy


@pytest.mark.parametrize("view", VIEWS)
def test_the_joint_line_is_at_the_reference_knee_joint_height(atlas, view):
    for side in sides_of(view):
        assert abs(joint_line_y(atlas, view, side) - KNEE_JOINT_Y) < 0.5


@pytest.mark.parametrize("side", ["left", "right"])
def test_mpfl_runs_from_the_adductor_tubercle_region_to_the_superomedial_patella(atlas, side):
    medial = medial_sign(side)
    mpfl = poly(atlas, "anterior", "mpfl", side)
    tubercle = poly(atlas, "anterior", "adductor_tubercle", side)
    epicondyle = poly(atlas, "anterior", "medial_epicondyle", side)
    patella = atlas.landmark("patella", "anterior", side).geometry
    centre = patella.centroid
    # Femoral end: the most medial point, between the epicondyle and the adductor tubercle.
    xy = np.asarray(mpfl.exterior.coords)
    fx, fy = xy[np.argmax(medial * xy[:, 0])]
    assert epicondyle.centroid.y < fy < tubercle.centroid.y
    assert mpfl.distance(tubercle) < 0.3 and mpfl.distance(epicondyle) < 0.3
    # Patellar end: on the superomedial quadrant of the patella, at its border.
    _, on_patella = nearest_points(mpfl, patella)
    assert mpfl.distance(patella) < 0.6
    assert (on_patella.x - centre.x) * medial > 0 and on_patella.y > centre.y
    borders = poly(atlas, "anterior", "patellar_borders", side)
    assert shapely.intersection(mpfl.boundary, borders.boundary).length > 0.5
    # Deep to distal VMO: nearly all of it lies under VMO, below VMO's middle.
    vmo = poly(atlas, "anterior", "vmo", side, "superficial")
    assert shapely.intersection(mpfl, vmo).area > 0.8 * mpfl.area
    assert mpfl.centroid.y < vmo.centroid.y
    # It runs across, medial to lateral, rising a little to the patella (not down the leg).
    assert (centre.x - fx) * medial < 0 and on_patella.y > fy


@pytest.mark.parametrize("side", ["left", "right"])
def test_joint_line_sites_lie_on_the_joint_line_either_side_of_the_patellar_tendon(atlas, side):
    medial = medial_sign(side)
    jl = joint_line_y(atlas, "anterior", side)
    tendon = poly(atlas, "anterior", "patellar_tendon", side)
    for rid, direction in (("medial_joint_line", medial), ("lateral_joint_line", -medial)):
        site = poly(atlas, "anterior", rid, side)
        _, ymin, _, ymax = site.bounds
        assert ymin < jl < ymax and abs(site.centroid.y - jl) < 0.3, rid
        assert (site.centroid.x - tendon.centroid.x) * direction > 0, rid
        assert not site.intersects(tendon.buffer(-1e-6)), rid
    mcl = poly(atlas, "anterior", "mcl", side)
    assert (
        mcl.centroid.x - poly(atlas, "anterior", "medial_joint_line", side).centroid.x
    ) * medial > 0
    for view in ("lateral_right", "lateral_left"):
        if view.endswith(side):
            site = poly(atlas, view, "lateral_joint_line", side)
            assert site.bounds[1] < joint_line_y(atlas, view, side) < site.bounds[3]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pes_anserinus_is_distal_and_medial(atlas, side):
    medial = medial_sign(side)
    jl = joint_line_y(atlas, "anterior", side)
    pes = poly(atlas, "anterior", "pes_anserinus", side).centroid
    assert 4.0 <= jl - pes.y <= 5.0, "4-5 cm below the joint line"
    patella = atlas.landmark("patella", "anterior", side).geometry.centroid
    for rid in ("tibial_tuberosity", "patellar_tendon"):
        assert (pes.x - poly(atlas, "anterior", rid, side).centroid.x) * medial > 1.0, rid
    assert (pes.x - patella.x) * medial > 0


@pytest.mark.parametrize("view", ["anterior", "lateral_left", "lateral_right"])
def test_patellar_tendon_runs_from_the_inferior_pole_to_the_tibial_tuberosity(atlas, view):
    for side in sides_of(view):
        tendon = poly(atlas, view, "patellar_tendon", side)
        tuberosity = poly(atlas, view, "tibial_tuberosity", side)
        borders = poly(atlas, view, "patellar_borders", side)
        patella = atlas.landmark("patella", view, side).geometry
        jl = joint_line_y(atlas, view, side)
        # Attached at both ends: it shares an edge with the patella and with the tuberosity.
        assert shapely.intersection(tendon.boundary, borders.boundary).length > 0.5
        assert shapely.intersection(tendon.boundary, tuberosity.boundary).length > 0.5
        top, bottom = tendon.bounds[3], tendon.bounds[1]
        assert abs(top - patella.bounds[1]) < 1.0, "starts at the inferior pole"
        assert top < patella.centroid.y and bottom > tuberosity.bounds[1]
        assert tuberosity.centroid.y < jl - 2.0, "the tuberosity lies below the joint line"
        quad = poly(atlas, view, "quadriceps_tendon", side)
        assert quad.centroid.y > patella.bounds[3]
        assert shapely.intersection(quad.boundary, borders.boundary).length > 0.5


@pytest.mark.parametrize("side", ["left", "right"])
def test_mcl_crosses_the_joint_line_medially_from_the_medial_epicondyle(atlas, side):
    medial = medial_sign(side)
    jl = joint_line_y(atlas, "anterior", side)
    mcl = poly(atlas, "anterior", "mcl", side)
    _, ymin, _, ymax = mcl.bounds
    assert ymax - jl > 2.0 and jl - ymin > 4.0, "about 3 cm above to 6 cm below"
    epicondyle = poly(atlas, "anterior", "medial_epicondyle", side)
    assert shapely.intersection(mcl.boundary, epicondyle.boundary).length > 0.3
    patella = atlas.landmark("patella", "anterior", side).geometry
    assert (mcl.centroid.x - patella.centroid.x) * medial > 3.0
    lateral_epicondyle = poly(atlas, "anterior", "lateral_epicondyle", side)
    assert (lateral_epicondyle.centroid.x - patella.centroid.x) * medial < -3.0
    for rid in ("medial_epicondyle", "lateral_epicondyle", "adductor_tubercle"):
        height = poly(atlas, "anterior", rid, side).centroid.y - jl
        assert 2.0 < height < 6.0, rid
    assert poly(atlas, "anterior", "adductor_tubercle", side).centroid.y > epicondyle.centroid.y


@pytest.mark.parametrize("view", ["lateral_left", "lateral_right"])
def test_lcl_crosses_the_joint_line_from_the_lateral_epicondyle_to_the_fibular_head(atlas, view):
    side = view.split("_")[1]
    front = anterior_sign(view)
    jl = joint_line_y(atlas, view, side)
    lcl = poly(atlas, view, "lcl", side)
    head = poly(atlas, view, "fibular_head", side)
    epicondyle = poly(atlas, view, "lateral_epicondyle", side)
    assert lcl.bounds[1] < jl - 1.0 and lcl.bounds[3] > jl + 1.0
    assert shapely.intersection(lcl.boundary, head.boundary).length > 0.3
    assert shapely.intersection(lcl.boundary, epicondyle.boundary).length > 0.3
    assert head.centroid.y < jl < epicondyle.centroid.y
    # Posterolateral: behind the lateral joint-line site and the patellar tendon.
    for rid in ("lateral_joint_line", "patellar_tendon"):
        assert (poly(atlas, view, rid, side).centroid.x - lcl.centroid.x) * front > 1.0, rid
    # The fibular head is where the landmark of the posterior view puts it: level.
    posterior_head = atlas.landmark("fibular_head", "posterior", side).geometry.centroid
    assert abs(head.centroid.y - posterior_head.y) < 0.5


@pytest.mark.parametrize("view", VIEWS)
def test_greater_trochanter_is_at_hip_joint_level_on_the_side_of_the_hip(atlas, view):
    for side in sides_of(view):
        gt = poly(atlas, view, "greater_trochanter", side)
        assert abs(gt.centroid.y - HIP_JOINT_Y) < 1.5
        landmark = atlas.landmark("greater_trochanter", view, side).geometry
        assert gt.contains(landmark.centroid)
        if not view.startswith("lateral"):
            # The most lateral bone of the hip: at the edge of the silhouette.
            assert gt.distance(atlas.outline(view).exterior) < 0.3


def test_no_landmark_shows_through_the_structure_drawn_on_it(atlas):
    # The MPFL was a landmark line over VMO; it is a region now, drawn once.
    assert "mpfl" not in {lm.id for lm in atlas.landmarks}
    assert "Medial patellofemoral ligament" not in {lm.name for lm in atlas.landmarks}
    # Bony landmarks that became periosteal sites lie wholly under their structure, so with
    # the structures shown the bone is not drawn a second time beside it.
    covering = {"patella": "patellar_borders", "fibular_head": "fibular_head"}
    covering["greater_trochanter"] = "greater_trochanter"
    checked = 0
    for lm in atlas.landmarks:
        rid = covering.get(lm.id)
        if rid is None or lm.geometry.geom_type != "Polygon":
            continue
        site = atlas.region(lm.view, rid, lm.side, STRUCTURES).polygon
        # (A landmark may bulge past the skin line, as the patella does side-on.)
        bone = shapely.intersection(lm.geometry, atlas.outline(lm.view))
        assert site.buffer(1e-3).covers(bone), (lm.id, lm.view, lm.side)
        checked += 1
    assert checked == 2 + 2 + 4 + 2 + 2 + 2  # patella, trochanters, fibular heads


# ---------------------------------------------------------------- hit testing


def _inside(polygon, n, rng):
    """``n`` random points strictly inside ``polygon``."""
    xmin, ymin, xmax, ymax = polygon.bounds
    out = []
    while len(out) < n:
        xs = rng.uniform(xmin, xmax, 4 * n)
        ys = rng.uniform(ymin, ymax, 4 * n)
        keep = shapely.contains_xy(polygon.buffer(-1e-6), xs, ys)
        out.extend(zip(xs[keep], ys[keep], strict=True))
    return np.array(out[:n])


@pytest.mark.parametrize("view", VIEWS)
def test_a_tap_inside_each_structure_names_it(atlas, view):
    rng = np.random.default_rng(7)
    for r in atlas.regions_in(view, STRUCTURES):
        p = r.polygon.representative_point()
        assert atlas.region_at(view, p.x, p.y, layer=STRUCTURES) == r
        pts = _inside(r.polygon, 200, rng)
        taps = {atlas.region_at(view, x, y, layer=STRUCTURES) for x, y in pts}
        assert taps == {r}
        assert (atlas.classify(view, pts[:, 0], pts[:, 1], layer=STRUCTURES) == r.index).all()


def test_a_tap_on_the_mpfl_names_the_ligament_on_its_layer_and_vmo_on_the_muscles(atlas):
    mpfl = atlas.region("anterior", "mpfl", "right", STRUCTURES)
    p = mpfl.polygon.intersection(poly(atlas, "anterior", "vmo", "right", "superficial"))
    p = p.representative_point()
    assert atlas.region_at("anterior", p.x, p.y, layer=STRUCTURES) == mpfl
    assert atlas.region_at("anterior", p.x, p.y).muscle == "vmo"  # the muscle layers first
    # The joint line and the patella were "not on a muscle"; they are structures now.
    jl = joint_line_y(atlas, "anterior", "left")
    site = poly(atlas, "anterior", "medial_joint_line", "left").centroid
    assert atlas.region_at("anterior", site.x, jl) is None
    assert atlas.region_at("anterior", site.x, jl, layer=STRUCTURES).muscle == "medial_joint_line"
    patella = atlas.landmark("patella", "anterior", "left").geometry.centroid
    assert atlas.region_at("anterior", patella.x, patella.y) is None
    assert (
        atlas.region_at("anterior", patella.x, patella.y, STRUCTURES).muscle == "patellar_borders"
    )


def _shapely_reference(atlas, view, xs, ys, layer):
    out = np.full(len(xs), -1)
    for r in reversed(atlas.regions_in(view, layer)):
        out[shapely.intersects_xy(r.polygon, xs, ys)] = r.index
    return out


@pytest.mark.parametrize("view", VIEWS)
def test_bulk_classification_of_the_structures_agrees_with_shapely(atlas, view):
    rng = np.random.default_rng(3)
    xmin, _, xmax, _ = atlas.bounds(view)
    # Most points around the knee and the hip, where the structures are; some anywhere.
    xs = rng.uniform(xmin, xmax, 70_000)
    ys = np.concatenate(
        [rng.uniform(40, 63, 30_000), rng.uniform(86, 94, 30_000), rng.uniform(0, 120, 10_000)]
    )
    # Points on and next to every structure's boundary too: the exact fallbacks.
    edge = np.vstack(
        [shapely.get_coordinates(r.polygon) for r in atlas.regions_in(view, STRUCTURES)]
    )
    for eps in (0.0, 1e-12, -1e-9, 1e-4):
        xs = np.append(xs, edge[:, 0] + eps)
        ys = np.append(ys, edge[:, 1] - eps)
    got = atlas.classify(view, xs, ys, layer=STRUCTURES)
    assert (got == _shapely_reference(atlas, view, xs, ys, STRUCTURES)).all()
    assert (got >= 0).sum() > 1000  # the test does hit structures


@settings(max_examples=300, deadline=None)
@given(
    view=st.sampled_from(VIEWS),
    x=st.floats(-20, 20, allow_nan=False),
    y=st.floats(38, 95, allow_nan=False),
)
def test_property_a_tap_on_the_structures_layer_never_returns_a_muscle(view, x, y):
    atlas = load_atlas()
    r = atlas.region_at(view, x, y, layer=STRUCTURES)
    assert r is None or (r.layer == STRUCTURES and r.kind not in ("muscle", "fascia"))
    m = atlas.region_at(view, x, y)
    assert m is None or m.layer in MUSCLE_LAYERS


def test_no_point_of_a_view_classifies_across_layers(atlas):
    for view in VIEWS:
        xmin, ymin, xmax, ymax = atlas.bounds(view)
        gx, gy = np.meshgrid(np.arange(xmin, xmax, 0.05), np.arange(ymin, ymax, 0.05))
        xs, ys = gx.ravel(), gy.ravel()
        layers = np.array([r.layer for r in atlas.regions])
        on_structures = atlas.classify(view, xs, ys, layer=STRUCTURES)
        assert set(layers[on_structures[on_structures >= 0]]) == {STRUCTURES}
        default = atlas.classify(view, xs, ys)
        assert STRUCTURES not in set(layers[default[default >= 0]])


def test_an_unknown_layer_is_refused_with_the_layers_named(atlas):
    with pytest.raises(ValueError, match="superficial, deep, structures"):
        atlas.region_at("anterior", 5.0, 50.0, layer="bone")


# ---------------------------------------------------------------- drawing


def _renderer(fig, name):
    return next(r for r in fig.renderers if r.name == name)


def test_the_structures_layer_is_drawn_hidden_until_shown_and_named_on_hover(atlas):
    fig = atlas_figure(atlas, "anterior")
    structures = _renderer(fig, "structures")
    assert not structures.visible and not _renderer(fig, "muscles-context").visible
    assert _renderer(fig, "muscles-superficial").visible
    data = structures.data_source.data
    assert set(data["muscle"]) == DRAWN_ON["anterior"]
    assert data["region"] == [r.index for r in atlas.regions_in("anterior", STRUCTURES)]
    assert set(data["kind"]) == {"Ligament", "Tendon", "Periosteum (bone)"}
    # Drawn unlike any muscle: hatched in a bone and ligament palette.
    assert structures.glyph.hatch_pattern == "hatch"  # a column of the source
    assert set(data["hatch"]) == {"/", "|", "."}
    muscle_colours = set(_renderer(fig, "muscles-superficial").data_source.data["colour"])
    assert not set(data["colour"]) & muscle_colours
    tips = [t.tooltips for t in fig.tools if getattr(t, "renderers", None) == [structures]]
    assert tips == [[("Structure", "@name"), ("Kind", "@kind")]]

    show_layer(fig, "structures")
    visible = {r.name for r in fig.renderers if r.visible and r.name in _all_layer_renderers()}
    assert visible == {"structures", "muscles-context"}
    show_layer(fig, "deep")
    visible = {r.name for r in fig.renderers if r.visible and r.name in _all_layer_renderers()}
    assert visible == set()  # the anterior view has no deep muscle
    show_layer(fig, "superficial")
    visible = {r.name for r in fig.renderers if r.visible and r.name in _all_layer_renderers()}
    assert visible == {"muscles-superficial"}


def _all_layer_renderers():
    return {n for names in LAYER_RENDERERS.values() for n in names}


def test_a_figure_of_the_structures_layer_shows_them_over_faded_muscles(atlas):
    fig = atlas_figure(atlas, "lateral_right", layer="structures", labels=True)
    assert _renderer(fig, "structures").visible
    assert _renderer(fig, "muscles-context").visible
    assert not _renderer(fig, "muscles-superficial").visible
    labels = _renderer(fig, "labels").data_source.data["text"]
    assert set(labels) == {r.short for r in atlas.regions_in("lateral_right", STRUCTURES)}
    # No landmark drawn under the name of a region: nothing is drawn twice.
    landmark_names = set()
    for r in fig.renderers:
        if (r.name or "").startswith("landmark") and "name" in r.data_source.data:
            landmark_names |= set(r.data_source.data["name"])
    assert not landmark_names & {atlas.muscle_name(k) for k in ("mpfl",)}


def test_the_chart_draws_the_structures_and_names_them_on_knee_close_ups(atlas):
    chart = atlas_overview(atlas, height=400)
    figs = [m for m in chart.references() if m.__class__.__name__ == "figure"]
    assert len(figs) == len(atlas.views) + 2
    close_ups = [f for f in figs if f.title.text.startswith("Right knee")]
    texts = set()
    for f in close_ups:
        texts |= set(_renderer(f, "labels").data_source.data["text"])
    shorts = {r.short for r in atlas.regions if r.layer == STRUCTURES and r.side == "right"}
    assert shorts - {"Gr. troch."} <= texts  # every knee structure is named
    for f in figs:
        if f not in close_ups:
            assert _renderer(f, "structures").visible


def test_a_figure_can_leave_the_structures_out(atlas):
    fig = atlas_figure(atlas, "anterior", structures=False)
    names = {r.name for r in fig.renderers}
    assert "structures" not in names and "muscles-context" not in names
    assert "muscles-superficial" in names
    with pytest.raises(ValueError, match="contradicts"):
        atlas_figure(atlas, "anterior", layer="structures", structures=False)
