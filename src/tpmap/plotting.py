"""Bokeh figures of the body diagram, shared by the web pages, the CLI and notebooks.

Examples
--------
>>> from tpmap import load_atlas
>>> from tpmap.plotting import atlas_figure
>>> fig = atlas_figure(load_atlas(), "posterior")
>>> fig.title.text
'Posterior'
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTicker,
    ColumnDataSource,
    HoverTool,
    LayoutDOM,
    LinearColorMapper,
    Range1d,
)
from bokeh.models.annotations import ColorBar, Title
from bokeh.models.renderers import DataRenderer
from bokeh.palettes import RdBu11, interp_palette
from bokeh.plotting import figure
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import polylabel

from tpmap.atlas import Atlas, Region
from tpmap.model import KIND_LABELS, VIEW_LABELS

if TYPE_CHECKING:
    from bokeh.models.sources import DataDict
    from selenium.webdriver import Chrome

__all__ = [
    "KNEE_CLOSE_UPS",
    "LAYER_RENDERERS",
    "MUSCLE_COLOURS",
    "STRUCTURE_STYLES",
    "VIEW_TITLES",
    "atlas_figure",
    "atlas_overview",
    "column_data",
    "density_map",
    "difference_map",
    "export",
    "figure_title",
    "image_map",
    "muscle_map",
    "region_source_data",
    "show_layer",
    "structure_source_data",
    "update_density_map",
    "update_difference_map",
    "update_muscle_map",
]

#: The views' titles (the vocabulary's own labels).
VIEW_TITLES: dict[str, str] = VIEW_LABELS

SKIN = "#f4e4d4"
BONE = "#efe9dc"
# Muscle tones of an anatomy chart: neighbours differ in lightness so edges read clearly;
# fascia (the ITB) is drawn silver-white as in an atlas.
MUSCLE_COLOURS = {
    "vmo": "#a8322d",
    "vastus_medialis": "#cf6b5e",
    "vastus_lateralis": "#c4554c",
    "rectus_femoris": "#e08a78",
    "sartorius": "#b9473f",
    "adductors": "#d9796b",
    "tensor_fasciae_latae": "#b04a45",
    "iliotibial_band": "#ddd8cc",
    "gluteus_maximus": "#c65d52",
    "gluteus_medius": "#a93f3a",
    "gluteus_minimus": "#8f3531",
    "piriformis": "#b8504a",
    "quadratus_lumborum": "#a23a36",
    "erector_spinae": "#d27a6a",
    "biceps_femoris": "#c2584f",
    "semitendinosus_semimembranosus": "#dc8473",
    "gastrocnemius_medial": "#c8635a",
    "gastrocnemius_lateral": "#b24b44",
    "soleus": "#dd8c7c",
    "popliteus": "#a63c37",
    "tibialis_anterior": "#c0564d",
    "fibularis_longus": "#d6806f",
}
_DEFAULT_MUSCLE = "#c8625a"


def column_data(data: dict[str, list[Any]]) -> DataDict:
    """``data``, a dict of list columns, as the type Bokeh declares a source's data.

    It already is one: Bokeh types the dict's values as a union of column kinds, and a dict is
    invariant in its values, so a checker would not take a dict of lists for it. No copy.
    """
    return cast("DataDict", data)


def figure_title(fig: figure) -> Title:
    """The title model of a figure made by ``figure()`` (which always makes one; Bokeh's
    type for ``Plot.title`` also allows the text or None it is given as)."""
    return cast(Title, fig.title)


def _rings(geom: BaseGeometry) -> tuple[list[list[float]], list[list[float]]]:
    # A Polygon or a MultiPolygon's parts.
    parts: Sequence[Polygon] = getattr(geom, "geoms", [geom])
    xs = [list(p.exterior.xy[0]) for p in parts]
    ys = [list(p.exterior.xy[1]) for p in parts]
    return xs, ys


def region_source_data(regions: Sequence[Region]) -> dict[str, list[Any]]:
    """Column data for drawing ``regions`` as Bokeh patches (one patch per region)."""
    data: dict[str, list[Any]] = {
        k: [] for k in ("xs", "ys", "region", "muscle", "name", "side", "layer", "colour")
    }
    for r in regions:
        x, y = r.polygon.exterior.xy
        data["xs"].append(np.asarray(x).tolist())
        data["ys"].append(np.asarray(y).tolist())
        data["region"].append(r.index)
        data["muscle"].append(r.muscle)
        data["name"].append(r.label)
        data["side"].append(r.side)
        data["layer"].append(r.layer)
        data["colour"].append(MUSCLE_COLOURS.get(r.muscle, _DEFAULT_MUSCLE))
    return data


#: How each kind of needled structure is drawn, unlike any muscle: a pale fill with a hatch
#: of its tissue (ligament fibres oblique, tendon fibres lengthwise, bone stippled) and a
#: dark outline in the same hue.
STRUCTURE_STYLES: dict[str, dict[str, str]] = {
    "ligament": {"fill": "#dce6f0", "hatch": "/", "line": "#2f4f75"},
    "tendon": {"fill": "#f1f1ec", "hatch": "|", "line": "#5d6b78"},
    "periosteum": {"fill": "#efe3c4", "hatch": ".", "line": "#7a5c25"},
    "fascia": {"fill": "#ece9e0", "hatch": "-", "line": "#6d6a60"},
}
#: The renderers of :func:`atlas_figure` that show each layer: a page switches layers with
#: :func:`show_layer`, by visibility, without rebuilding the figure.
LAYER_RENDERERS: dict[str, tuple[str, ...]] = {
    "superficial": ("muscles-superficial",),
    "deep": ("muscles-deep",),
    "structures": ("muscles-context", "structures"),
}


def structure_source_data(regions: Sequence[Region]) -> dict[str, list[Any]]:
    """Column data for drawing structures: :func:`region_source_data` plus their styles."""
    data = region_source_data(regions)
    styles = [STRUCTURE_STYLES[r.kind] for r in regions]
    data["kind"] = [KIND_LABELS[r.kind] for r in regions]
    data["colour"] = [s["fill"] for s in styles]
    data["hatch"] = [s["hatch"] for s in styles]
    data["line"] = [s["line"] for s in styles]
    return data


def show_layer(fig: figure, layer: str) -> None:
    """Show one layer of a figure made by :func:`atlas_figure` and hide the others.

    Parameters
    ----------
    fig : bokeh.plotting.figure
    layer : {"superficial", "deep", "structures"}
        ``structures`` shows the ligaments, tendons and periosteal sites over faded
        superficial muscles (for orientation; the muscles then answer no hover).
    """
    shown = LAYER_RENDERERS[layer]
    names = {n for group in LAYER_RENDERERS.values() for n in group}
    for r in fig.renderers:
        if r.name in names:
            r.visible = r.name in shown


def atlas_figure(
    atlas: Atlas,
    view: str,
    *,
    layer: str | None = "superficial",
    structures: bool | None = None,
    labels: bool = False,
    height: int = 720,
    hover: bool = True,
    toolbar: bool = True,
    title: str | None = None,
    muscle_alpha: float = 0.9,
    extent: tuple[float, float, float, float] | None = None,
) -> figure:
    """Draw one view of the body diagram.

    Parameters
    ----------
    atlas : Atlas
        From :func:`tpmap.load_atlas`.
    view : str
        ``anterior``, ``posterior``, ``lateral_left`` or ``lateral_right``.
    layer : {"superficial", "deep", "structures", None}
        Which layer to show; ``None`` draws deep muscles under the superficial ones.
        ``structures`` shows the ligaments, tendons and periosteal sites over faded muscles.
    structures : bool, optional
        ``True`` shows the structures over the muscles of a muscle layer too (a chart);
        ``False`` leaves them out (a figure that never shows them: less to send); by
        default they are drawn, hidden unless ``layer="structures"``.
    labels : bool
        Write each region's short name on it (for printed charts): the muscles, or the
        structures when ``layer="structures"``.
    height : int
        Height in screen pixels; the width follows from the body's proportions.
    hover : bool
        Name the muscle or structure under the pointer.
    toolbar : bool
        Show Bokeh's toolbar (off for exported figures).
    title : str, optional
        Defaults to the view's name.
    muscle_alpha : float
        Opacity of the muscles (lower it to show heatmaps or marks on top).
    extent : (xmin, ymin, xmax, ymax), optional
        Show only this part of the view, in centimetres (e.g. a close-up of the knee).

    Returns
    -------
    bokeh.plotting.figure
        Patches renderers named ``"muscles-superficial"``, ``"muscles-deep"`` and
        ``"structures"``, plus ``"muscles-context"`` (the superficial muscles faded, under
        the structures): those of the layers not shown are hidden, and :func:`show_layer`
        switches between them (:data:`LAYER_RENDERERS`). Their sources have one row per
        region with columns ``region`` (index into ``atlas.regions``), ``muscle`` (the region
        id), ``name``, ``side``, ``layer``; the structures' also ``kind``.
    """
    if layer == "structures" and structures is False:
        raise ValueError("layer='structures' shows the structures: structures=False contradicts it")
    xmin, ymin, xmax, ymax = extent if extent is not None else atlas.bounds(view)
    pad = 1.5 if extent is None else 0.0
    aspect = (xmax - xmin + 2 * pad) / (ymax - ymin + 2 * pad)
    fig = figure(
        title=title if title is not None else VIEW_TITLES[view],
        x_range=Range1d(start=xmin - pad, end=xmax + pad),
        y_range=Range1d(start=ymin - pad, end=ymax + pad),
        height=height,
        width=max(int(height * aspect) + 20, 160),
        match_aspect=True,
        tools="pan,wheel_zoom,reset,save" if toolbar else "",
        toolbar_location="above" if toolbar else None,
        background_fill_color="white",
        border_fill_color="white",
        outline_line_color=None,
        name=f"atlas-{view}",
    )
    fig.axis.visible = False
    fig.grid.visible = False
    figure_title(fig).text_font_size = "14px"

    xs, ys = _rings(atlas.outline(view))
    fig.patches(xs, ys, fill_color=SKIN, line_color="#8a6f5a", line_width=1.2)

    # Every layer is drawn; those not asked for are hidden, so a page can switch layers
    # by toggling visibility instead of rebuilding the figure.
    muscle_renderers: list[DataRenderer] = []
    sources: dict[str, ColumnDataSource] = {}
    for lay in ("deep", "superficial"):
        regions_l = atlas.regions_in(view, lay)
        if not regions_l:
            continue
        sources[lay] = ColumnDataSource(
            column_data(region_source_data(regions_l)), name=f"muscle-source-{lay}"
        )
        muscle_renderers.append(
            fig.patches(  # type: ignore[call-arg]  # Bokeh's stubs lack hover_line_width
                "xs",
                "ys",
                source=sources[lay],
                fill_color="colour",
                fill_alpha=muscle_alpha,
                line_color="#5b2420",
                line_width=0.8,
                line_alpha=0.8,
                hover_fill_alpha=min(1.0, muscle_alpha + 0.1),
                hover_line_width=2.0,
                hover_line_color="#1d1d1d",
                name=f"muscles-{lay}",
                visible=layer is None or layer == lay,
            )
        )
    on_structures = layer == "structures"
    if "superficial" in sources and structures is not False:
        # Orientation under the structures: the same source, faded, answering no hover.
        fig.patches(
            "xs",
            "ys",
            source=sources["superficial"],
            fill_color="colour",
            fill_alpha=0.28,
            line_color="#5b2420",
            line_alpha=0.35,
            line_width=0.6,
            name="muscles-context",
            visible=on_structures,
        )
    _draw_landmarks(fig, atlas, view)
    structure_regions = atlas.regions_in(view, "structures") if structures is not False else []
    structure_renderer = None
    if structure_regions:
        structure_renderer = fig.patches(  # type: ignore[call-arg]  # see muscles' patches
            "xs",
            "ys",
            source=ColumnDataSource(
                column_data(structure_source_data(structure_regions)), name="structure-source"
            ),
            fill_color="colour",
            fill_alpha=0.95,
            hatch_pattern="hatch",
            hatch_color="line",
            hatch_alpha=0.7,
            hatch_scale=5.0,
            hatch_weight=0.8,
            line_color="line",
            line_width=1.3,
            hover_fill_color="#fff7d6",
            hover_line_width=2.4,
            hover_line_color="#1d1d1d",
            name="structures",
            visible=on_structures or bool(structures),
        )
    if labels:
        if on_structures:
            regions = structure_regions
        else:
            shown = ("deep", "superficial") if layer is None else (layer,)
            regions = [r for lay in shown for r in atlas.regions_in(view, lay)]
        if extent is not None:
            regions = [r for r in regions if r.polygon.intersects(box(*extent))]
        # The pole of inaccessibility sits deepest inside the shape: labels stay on it.
        pts = [polylabel(r.polygon, tolerance=0.05) for r in regions]
        fig.text(  # type: ignore[call-arg]  # Bokeh's stubs lack the text's background_fill_*
            [p.x for p in pts],
            [p.y for p in pts],
            [r.short for r in regions],
            text_font_size="8pt" if on_structures else "7pt",
            text_align="center",
            text_baseline="middle",
            text_color="#1d1d1d",
            background_fill_color="white" if on_structures else None,
            background_fill_alpha=0.75,
            angle=np.pi / 2 if view.startswith("lateral") and not on_structures else 0,
            name="labels",
        )
    if hover:
        fig.add_tools(
            HoverTool(
                renderers=muscle_renderers,
                tooltips=[("Muscle", "@name"), ("Layer", "@layer")],
                point_policy="follow_mouse",
            )
        )
        if structure_renderer is not None:
            fig.add_tools(
                HoverTool(
                    renderers=[structure_renderer],
                    tooltips=[("Structure", "@name"), ("Kind", "@kind")],
                    point_policy="follow_mouse",
                )
            )
    return fig


# A sequential palette from near-white to deep red (colour-blind safe, prints in grey), and a
# diverging blue-white-red one for group differences (blue: more in B, red: more in A).
SEQUENTIAL = interp_palette(("#fff5eb", "#fdae6b", "#e6550d", "#7f2704"), 256)
DIVERGING = interp_palette(RdBu11, 255)  # low (B larger) blue, high (A larger) red
NOT_SHOWN = "#d9d9d9"


def _colour_bar(mapper: LinearColorMapper, title: str) -> ColorBar:
    return ColorBar(
        color_mapper=mapper,
        ticker=BasicTicker(desired_num_ticks=6),
        title=title,
        title_text_font_size="11px",
        title_text_font_style="normal",
        major_label_text_font_size="11px",
        location=(0, 0),
        width=12,
        padding=6,
        name="colour-bar",
    )


def _blank_figure(atlas: Atlas, view: str, *, height: int, title: str, toolbar: bool) -> figure:
    """The outline only (no muscles), sized like :func:`atlas_figure`."""
    fig = atlas_figure(atlas, view, height=height, toolbar=toolbar, hover=False, title=title)
    fig.renderers = [r for r in fig.renderers if not (r.name or "").startswith("muscles-")]
    return fig


_MAP_COLUMNS = (
    "n_patients",
    "n_cohort",
    "pct",
    "ci_low",
    "ci_high",
    "a",
    "n_a",
    "b",
    "n_b",
    "pct_a",
    "pct_b",
    "diff",
    "diff_low",
    "diff_high",
    "q",
    "n_marks",
)
_SEQ_TIPS = [
    ("Muscle", "@name"),
    ("Patients", "@n_patients of @n_cohort"),
    ("Share", "@pct{0.0} % (95 % CI @ci_low{0.0} to @ci_high{0.0})"),
    ("Marks", "@n_marks"),
]
_DIV_TIPS = [
    ("Muscle", "@name"),
    ("A", "@a of @n_a (@pct_a{0.0} %)"),
    ("B", "@b of @n_b (@pct_b{0.0} %)"),
    ("A - B", "@diff{+0.0} points (95 % CI @diff_low{+0.0} to @diff_high{+0.0})"),
    ("q (BH)", "@q{0.000}"),
]


# Named parts of each map figure, found once: select_one walks every model of the figure
# (about 35 ms for a map), which a page redrawing on the server's event loop cannot afford.
_PARTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _named(fig: figure, name: str) -> Any:
    parts = _PARTS.setdefault(fig, {})
    model = parts.get(name)
    if model is None:
        model = parts[name] = fig.select_one({"name": name})
    return model


def _set_mapper(mapper: LinearColorMapper, values: np.ndarray, diverging: bool) -> None:
    finite = values[np.isfinite(values)]
    if diverging:
        top = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        mapper.update(palette=DIVERGING, low=-top, high=top)
    else:
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        mapper.update(palette=SEQUENTIAL, low=0, high=top)


def muscle_map(
    atlas: Atlas,
    view: str,
    table: Any,
    *,
    layer: str = "superficial",
    value: str = "pct",
    diverging: bool = False,
    title: str | None = None,
    colour_title: str | None = None,
    height: int = 640,
    toolbar: bool = True,
) -> figure:
    """Colour each muscle by a per-muscle statistic (e.g. the percentage of patients).

    Parameters
    ----------
    atlas : Atlas
    view : str
    table : pandas.DataFrame or None
        One row per ``muscle`` and ``side`` (as from :func:`tpmap.research.muscle_table` or
        :func:`tpmap.research.compare_groups`); ``value`` names the column to colour by.
        Muscles missing from the table (suppressed or never marked) are drawn grey.
    layer : {"superficial", "deep", "structures"}
    diverging : bool
        Use a blue-white-red scale centred on zero (for group differences).
    colour_title : str, optional
        Title of the colour bar; say what the colour means and how many patients it covers.

    See Also
    --------
    update_muscle_map : change the numbers of an existing map (a page redraws this way).
    """
    fig = _blank_figure(
        atlas, view, height=height, title=title or VIEW_TITLES[view], toolbar=toolbar
    )
    regions = atlas.regions_in(view, layer)
    data = region_source_data(regions)
    data["value"] = [np.nan] * len(regions)
    data.update({c: [np.nan] * len(regions) for c in _MAP_COLUMNS})
    mapper = LinearColorMapper(
        palette=SEQUENTIAL, low=0, high=1, nan_color=NOT_SHOWN, name="map-mapper"
    )
    source = ColumnDataSource(column_data(data), name="map-source")
    patches = fig.patches(  # type: ignore[call-arg]  # Bokeh's stubs lack hover_line_width
        "xs",
        "ys",
        source=source,
        fill_color={"field": "value", "transform": mapper},
        line_color="#4d4d4d",
        line_width=0.7,
        hover_line_width=2.2,
        hover_line_color="#000000",
        name="muscle-map",
    )
    # Landmarks back on top of the coloured muscles.
    fig.renderers = [r for r in fig.renderers if r is not patches] + [patches]
    _draw_landmarks(fig, atlas, view)
    fig.add_tools(
        HoverTool(
            renderers=[patches], tooltips=_SEQ_TIPS, point_policy="follow_mouse", name="map-hover"
        )
    )
    fig.add_layout(_colour_bar(mapper, ""), "right")
    assert fig.width is not None  # atlas_figure gave it one
    fig.width += 110
    update_muscle_map(fig, table, value=value, diverging=diverging, colour_title=colour_title)
    return fig


def update_muscle_map(
    fig: figure,
    table: Any,
    *,
    value: str = "pct",
    diverging: bool = False,
    title: str | None = None,
    colour_title: str | None = None,
) -> None:
    """Put new numbers on a figure made by :func:`muscle_map`, without rebuilding it.

    Only the numbers, the colour scale and the titles change, so a page sends a few
    kilobytes to the browser instead of a new figure.
    """
    source = _named(fig, "map-source")
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}
    if table is not None and len(table):
        has_side = "side" in table.columns
        for rec in table.to_dict("records"):
            rows[(rec["muscle"], rec["side"] if has_side else None)] = rec
    keys = list(zip(source.data["muscle"], source.data["side"], strict=True))
    found = [rows.get(k) or rows.get((k[0], None)) for k in keys]
    update: dict[str, list[Any]] = {
        "value": [np.nan if rec is None else float(rec[value]) for rec in found]
    }
    for c in _MAP_COLUMNS:
        update[c] = [np.nan if rec is None or c not in rec else rec[c] for rec in found]
    source.data.update(update)
    _set_mapper(_named(fig, "map-mapper"), np.asarray(update["value"]), diverging)
    _named(fig, "map-hover").tooltips = _DIV_TIPS if diverging else _SEQ_TIPS
    _named(fig, "colour-bar").title = colour_title or value
    if title is not None:
        figure_title(fig).text = title


def image_map(
    atlas: Atlas,
    view: str,
    spec: Any,
    *,
    title: str | None = None,
    height: int = 640,
    toolbar: bool = True,
    layer: str = "superficial",
) -> figure:
    """An empty heatmap figure for grids of ``spec`` (a :class:`tpmap.research.GridSpec`).

    Fill it with :func:`update_density_map` or :func:`update_difference_map`.
    """
    fig = _blank_figure(
        atlas, view, height=height, title=title or VIEW_TITLES[view], toolbar=toolbar
    )
    mapper = LinearColorMapper(
        palette=SEQUENTIAL, low=0, high=1, nan_color=(0, 0, 0, 0), name="map-mapper"
    )
    x0, y0, x1, y1 = spec.extent
    source = ColumnDataSource(
        {
            "image": [np.full(spec.shape, np.nan)],
            "x": [x0],
            "y": [y0],
            "dw": [x1 - x0],
            "dh": [y1 - y0],
        },
        name="image-source",
    )
    img = fig.image(  # type: ignore[call-arg]  # Bokeh's stubs lack image's color_mapper
        image="image",
        x="x",
        y="y",
        dw="dw",
        dh="dh",
        source=source,
        color_mapper=mapper,
        name="density-image",
    )
    # Muscle outlines on top, unfilled, so the reader can tell where the heat lies.
    outline_source = ColumnDataSource(
        column_data(region_source_data(atlas.regions_in(view, layer)))
    )
    outlines = fig.patches(  # type: ignore[call-arg]  # Bokeh's stubs lack hover_line_width
        "xs",
        "ys",
        source=outline_source,
        fill_alpha=0.0,
        line_color="#5a5a5a",
        line_width=0.6,
        line_alpha=0.7,
        hover_line_width=2,
        hover_line_color="black",
        name="muscle-outlines",
    )
    _draw_landmarks(fig, atlas, view)
    fig.add_tools(
        HoverTool(renderers=[img], tooltips=[("Value", "@image{0.0}")], name="image-hover"),
        HoverTool(renderers=[outlines], tooltips=[("Muscle", "@name")]),
    )
    fig.add_layout(_colour_bar(mapper, ""), "right")
    assert fig.width is not None  # atlas_figure gave it one
    fig.width += 110
    return fig


def _set_image(
    fig: figure, values: np.ndarray, *, diverging: bool, colour_title: str, title: str | None
) -> None:
    _named(fig, "image-source").data["image"] = [values]
    _set_mapper(_named(fig, "map-mapper"), values, diverging)
    _named(fig, "colour-bar").title = colour_title
    if title is not None:
        figure_title(fig).text = title


def _density_values(grid: Any, n_cohort: int | None) -> tuple[np.ndarray, str]:
    # The research side knows what each weighting means; the label is its words.
    return grid.display(n_cohort)


def density_map(
    atlas: Atlas,
    view: str,
    grid: Any,
    *,
    n_cohort: int | None = None,
    layer: str = "superficial",
    title: str | None = None,
    height: int = 640,
    toolbar: bool = True,
) -> figure:
    """A heatmap of a :class:`tpmap.research.DensityGrid` over the body outline.

    The colour bar says what the values are, truthfully for each weighting
    (:meth:`tpmap.research.DensityGrid.display`): with the cohort's size, the default map
    reads "% of N patients with a mark within 1.5 cm"; smoothed mark maps read "marks per
    cm²". Hidden spots (small-cell suppression, dominance) are transparent.
    """
    fig = image_map(
        atlas, view, grid.spec, title=title, height=height, toolbar=toolbar, layer=layer
    )
    update_density_map(fig, grid, n_cohort=n_cohort)
    return fig


def update_density_map(
    fig: figure, grid: Any, *, n_cohort: int | None = None, title: str | None = None
) -> None:
    """Put a new density grid (same view and grid) on a figure made by :func:`density_map`."""
    values, label = _density_values(grid, n_cohort)
    _set_image(fig, values, diverging=False, colour_title=label, title=title)


def difference_map(
    atlas: Atlas,
    view: str,
    diff: Any,
    *,
    labels: tuple[str, str] = ("A", "B"),
    layer: str = "superficial",
    title: str | None = None,
    height: int = 640,
    toolbar: bool = True,
) -> figure:
    """A diverging map of a :class:`tpmap.research.DifferenceGrid` (A minus B).

    Red: a larger share of group A's patients was needled there; blue: of group B's.
    """
    fig = image_map(
        atlas, view, diff.spec, title=title, height=height, toolbar=toolbar, layer=layer
    )
    update_difference_map(fig, diff, labels=labels)
    return fig


def update_difference_map(
    fig: figure, diff: Any, *, labels: tuple[str, str] = ("A", "B"), title: str | None = None
) -> None:
    """Put a new difference grid on a figure made by :func:`difference_map`."""
    label = f"{labels[0]} (n={diff.n_cohort_a}) minus {labels[1]} (n={diff.n_cohort_b}), "
    label += diff.label
    values = diff.values if diff.a.weighting == "patients" else diff.values / diff.spec.cell**2
    _set_image(fig, values, diverging=True, colour_title=label, title=title)


def _draw_landmarks(fig: figure, atlas: Atlas, view: str) -> None:
    lms = [lm for lm in atlas.landmarks if lm.view == view]
    shapes = [(lm, lm.geometry) for lm in lms if isinstance(lm.geometry, Polygon)]
    if shapes:
        xs = [list(shape.exterior.xy[0]) for _, shape in shapes]
        ys = [list(shape.exterior.xy[1]) for _, shape in shapes]
        names = [lm.name for lm, _ in shapes]
        fig.patches(
            "xs",
            "ys",
            source=ColumnDataSource({"xs": xs, "ys": ys, "name": names}),
            fill_color=BONE,
            line_color="#7b6f5c",
            line_width=1,
            name="landmarks",
        )
    lines = [lm for lm in lms if lm.geometry.geom_type == "LineString"]
    if lines:
        fig.multi_line(
            [list(lm.geometry.xy[0]) for lm in lines],
            [list(lm.geometry.xy[1]) for lm in lines],
            line_color="#4d4436",
            line_dash="dashed",
            line_width=1.4,
            name="landmark-lines",
        )
    points = [lm.geometry for lm in lms if isinstance(lm.geometry, Point)]
    if points:
        fig.scatter(
            [point.x for point in points],
            [point.y for point in points],
            marker="triangle",
            size=8,
            fill_color="#4d4436",
            line_color="white",
            name="landmark-points",
        )


#: Close-ups of the patient's right knee for the chart, ``(view, title, extent, (left,
#: right))``, the last naming the directions at the figure's sides: the structures are too
#: small to name on the whole body.
KNEE_CLOSE_UPS: tuple[tuple[str, str, tuple[float, float, float, float], tuple[str, str]], ...] = (
    ("anterior", "Right knee, front", (-15.0, 40.5, -1.5, 63.0), ("lateral", "medial")),
    ("lateral_right", "Right knee, lateral", (-8.5, 40.5, 9.0, 63.0), ("posterior", "anterior")),
)


def atlas_overview(
    atlas: Atlas, *, height: int = 640, labels: bool = True, structures: bool = True
) -> LayoutDOM:
    """All four views side by side, with muscle names: the chart of ``tpmap atlas``.

    With ``structures`` the ligaments, tendons and periosteal sites are drawn over the
    muscles, and two close-ups of the right knee name them.
    """
    figs = [
        atlas_figure(atlas, v, labels=labels, height=height, toolbar=False, structures=structures)
        for v in atlas.views
    ]
    if not structures:
        return row(*figs, name="atlas-overview")
    close_ups = []
    for view, title, extent, (left, right) in KNEE_CLOSE_UPS:
        fig = atlas_figure(
            atlas,
            view,
            layer="structures",
            labels=labels,
            height=height // 2,
            toolbar=False,
            title=title,
            extent=extent,
        )
        # Which way is medial (or anterior): a close-up has no body around it to tell.
        xmin, ymin, xmax, _ = extent
        fig.text(
            [xmin + 0.3, xmax - 0.3],
            [ymin + 0.4] * 2,
            [f"\u2190 {left}", f"{right} \u2192"],
            text_align=["left", "right"],
            text_baseline="bottom",
            text_font_size="8pt",
            text_font_style="italic",
            text_color="#3d3d3d",
            name="directions",
        )
        close_ups.append(fig)
    return row(*figs, column(*close_ups), name="atlas-overview")


def _webdriver(scale: float = 1.0) -> Chrome:
    """A headless Chromium WebDriver on Debian's chromium and chromedriver (no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise RuntimeError(
            "PNG and SVG export needs Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver); HTML export works without them"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    opts.add_argument(f"--force-device-scale-factor={scale}")
    return webdriver.Chrome(service=Service(driver), options=opts)


def export(
    obj: LayoutDOM, path: str | os.PathLike[str], *, title: str = "tpmap", scale: float = 2.0
) -> Path:
    """Write a figure or layout to HTML, PNG or SVG, chosen by the file's suffix.

    HTML embeds BokehJS so the file opens offline. PNG and SVG go through Bokeh's export
    with Debian's Chromium; PNGs are rendered at ``scale`` times screen resolution.
    """
    from bokeh.embed import file_html
    from bokeh.io import export_png, export_svg
    from bokeh.resources import INLINE

    out = Path(path)
    suffix = out.suffix.lower()
    if suffix in (".html", ".htm"):
        out.write_text(file_html(obj, INLINE, title))
        return out
    if suffix not in (".png", ".svg"):
        raise ValueError(f"cannot export to {out.name}: use .html, .png or .svg")
    _hide_toolbars(obj)
    driver = _webdriver(scale)
    try:
        if suffix == ".png":
            export_png(obj, filename=str(out), webdriver=driver, scale_factor=scale)
        else:
            _svg_backend(obj)
            export_svg(obj, filename=str(out), webdriver=driver)
    finally:
        driver.quit()
    return out


def _figures(obj: LayoutDOM) -> list[figure]:
    from bokeh.plotting import figure as Figure

    return [m for m in obj.references() if isinstance(m, Figure)]


def _hide_toolbars(obj: LayoutDOM) -> None:
    for fig in _figures(obj):
        fig.toolbar_location = None


def _svg_backend(obj: LayoutDOM) -> None:
    for fig in _figures(obj):
        fig.output_backend = "svg"
