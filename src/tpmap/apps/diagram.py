"""The diagram page (``/atlas``): switch views, hover to name a muscle, tap to identify it."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.events import DoubleTap, Tap
from bokeh.layouts import column, row
from bokeh.models.widgets import Div, RadioButtonGroup

from tpmap.atlas import Atlas, load_atlas
from tpmap.plotting import VIEW_TITLES, atlas_figure

__all__ = ["make_document"]


def make_document(doc: Document, *, atlas: Atlas | None = None, **_: object) -> None:
    """Build the diagram page into ``doc``."""
    atlas = atlas or load_atlas()
    views = list(atlas.views)
    figures = {v: atlas_figure(atlas, v, height=680) for v in views}
    status = Div(
        text="Tap a muscle to identify it.",
        name="status",
        styles={"font-size": "16px", "min-height": "24px"},
    )
    switch = RadioButtonGroup(labels=[VIEW_TITLES[v] for v in views], active=0, name="views")
    layer = RadioButtonGroup(labels=["Superficial", "Deep"], active=0, name="layer")

    def show(view_index: int) -> None:
        for i, v in enumerate(views):
            figures[v].visible = i == view_index

    def on_tap(view: str, event: Tap) -> None:
        if event.x is None or event.y is None:
            return  # a tap always has its position; Bokeh's event type allows none
        lay = "deep" if layer.active == 1 else "superficial"
        region = atlas.region_at(view, event.x, event.y, layer=lay)
        if region is None:
            status.text = "Not on a muscle."
        else:
            status.text = (
                f"<b>{region.label}</b> &middot; {region.layer} &middot; {VIEW_TITLES[view]}"
            )

    def on_layer(_attr: str, _old: int, new: int) -> None:
        for fig in figures.values():
            for r in fig.renderers:
                if r.name in ("muscles-superficial", "muscles-deep"):
                    r.visible = r.name == ("muscles-deep" if new == 1 else "muscles-superficial")

    for v, fig in figures.items():
        fig.on_event(Tap, lambda e, v=v: on_tap(v, e))
        fig.on_event(DoubleTap, lambda e, v=v: on_tap(v, e))
    switch.on_change("active", lambda _a, _o, new: show(new))
    layer.on_change("active", on_layer)
    show(0)
    doc.title = "tpmap: body diagram"
    doc.add_root(
        column(
            row(switch, layer),
            status,
            row(*figures.values()),
            name="diagram-page",
            sizing_mode="stretch_width",
        )
    )
