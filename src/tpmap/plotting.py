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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.layouts import row
from bokeh.models import ColumnDataSource, HoverTool, LayoutDOM
from bokeh.plotting import figure
from shapely.ops import polylabel

from tpmap.atlas import Atlas, Region

__all__ = [
    "MUSCLE_COLOURS",
    "VIEW_TITLES",
    "atlas_figure",
    "atlas_overview",
    "export",
    "region_source_data",
]

VIEW_TITLES = {
    "anterior": "Anterior",
    "posterior": "Posterior",
    "lateral_left": "Lateral (left)",
    "lateral_right": "Lateral (right)",
}

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


def _rings(geom) -> tuple[list[list[float]], list[list[float]]]:
    parts = getattr(geom, "geoms", [geom])
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


def atlas_figure(
    atlas: Atlas,
    view: str,
    *,
    layer: str | None = "superficial",
    labels: bool = False,
    height: int = 720,
    hover: bool = True,
    toolbar: bool = True,
    title: str | None = None,
    muscle_alpha: float = 0.9,
) -> figure:
    """Draw one view of the body diagram.

    Parameters
    ----------
    atlas : Atlas
        From :func:`tpmap.load_atlas`.
    view : str
        ``anterior``, ``posterior``, ``lateral_left`` or ``lateral_right``.
    layer : {"superficial", "deep", None}
        Which muscles to draw; ``None`` draws deep muscles under the superficial ones.
    labels : bool
        Write each muscle's short name on it (for printed charts).
    height : int
        Height in screen pixels; the width follows from the body's proportions.
    hover : bool
        Name the muscle under the pointer.
    toolbar : bool
        Show Bokeh's toolbar (off for exported figures).
    title : str, optional
        Defaults to the view's name.
    muscle_alpha : float
        Opacity of the muscles (lower it to show heatmaps or marks on top).

    Returns
    -------
    bokeh.plotting.figure
        One patches renderer per layer, named ``"muscles-superficial"`` and
        ``"muscles-deep"`` (hidden unless asked for); their sources have one row per region
        with columns ``region`` (index into ``atlas.regions``), ``muscle``, ``name``, ``side``.
    """
    xmin, ymin, xmax, ymax = atlas.bounds(view)
    pad = 1.5
    aspect = (xmax - xmin + 2 * pad) / (ymax - ymin + 2 * pad)
    fig = figure(
        title=title if title is not None else VIEW_TITLES[view],
        x_range=(xmin - pad, xmax + pad),
        y_range=(ymin - pad, ymax + pad),
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
    fig.title.text_font_size = "14px"

    xs, ys = _rings(atlas.outline(view))
    fig.patches(xs, ys, fill_color=SKIN, line_color="#8a6f5a", line_width=1.2)

    # Both layers are drawn; the one not asked for is hidden, so a page can switch layers
    # by toggling visibility instead of rebuilding the figure.
    renderers = []
    for lay in ("deep", "superficial"):
        regions_l = atlas.regions_in(view, lay)
        if not regions_l:
            continue
        source = ColumnDataSource(region_source_data(regions_l), name=f"muscle-source-{lay}")
        renderers.append(
            fig.patches(
                "xs",
                "ys",
                source=source,
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
    shown = ("deep", "superficial") if layer is None else (layer,)
    regions = [r for lay in shown for r in atlas.regions_in(view, lay)]
    _draw_landmarks(fig, atlas, view)
    if labels:
        # The pole of inaccessibility sits deepest inside the shape: labels stay on it.
        pts = [polylabel(r.polygon, tolerance=0.05) for r in regions]
        fig.text(
            [p.x for p in pts],
            [p.y for p in pts],
            [r.short for r in regions],
            text_font_size="7pt",
            text_align="center",
            text_baseline="middle",
            text_color="#1d1d1d",
            angle=np.pi / 2 if view.startswith("lateral") else 0,
        )
    if hover:
        fig.add_tools(
            HoverTool(
                renderers=renderers,
                tooltips=[("Muscle", "@name"), ("Layer", "@layer")],
                point_policy="follow_mouse",
            )
        )
    return fig


def _draw_landmarks(fig: figure, atlas: Atlas, view: str) -> None:
    lms = [lm for lm in atlas.landmarks if lm.view == view]
    shapes = [lm for lm in lms if lm.geometry.geom_type == "Polygon"]
    if shapes:
        xs = [list(lm.geometry.exterior.xy[0]) for lm in shapes]
        ys = [list(lm.geometry.exterior.xy[1]) for lm in shapes]
        names = [lm.name for lm in shapes]
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
    points = [lm for lm in lms if lm.geometry.geom_type == "Point"]
    if points:
        fig.scatter(
            [lm.geometry.x for lm in points],
            [lm.geometry.y for lm in points],
            marker="triangle",
            size=8,
            fill_color="#4d4436",
            line_color="white",
            name="landmark-points",
        )


def atlas_overview(atlas: Atlas, *, height: int = 640, labels: bool = True) -> LayoutDOM:
    """All four views side by side, with muscle names: the chart of ``tpmap atlas``."""
    figs = [
        atlas_figure(atlas, v, labels=labels, height=height, toolbar=False) for v in atlas.views
    ]
    return row(*figs, name="atlas-overview")


def _webdriver(scale: float = 1.0):
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


def _figures(obj: LayoutDOM):
    from bokeh.plotting import figure as Figure

    return [m for m in obj.references() if isinstance(m, Figure)]


def _hide_toolbars(obj: LayoutDOM) -> None:
    for fig in _figures(obj):
        fig.toolbar_location = None


def _svg_backend(obj: LayoutDOM) -> None:
    for fig in _figures(obj):
        fig.output_backend = "svg"
